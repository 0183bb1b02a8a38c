"""What an unset ``--trainer.precision`` picks, against full training steps in each precision.

For each model: :func:`contrastive.precision.choose_precision` with an empty cache (its choice,
its timings and how long choosing took), then full SimCLR training steps (views made on the
device, forward, backward, AdamW; channels-last, as the configs) in float32 and in bf16
autocast, alternating round by round; medians and the ratio.

    python benchmarks/precision_choice.py --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
from train_step import full_step

from contrastive.augment import SimCLRAugment
from contrastive.methods import SimCLR
from contrastive.precision import BF16, FLOAT32, choose_precision, device_name

# name: (backbone, backbone_kwargs, image side, batch): the shapes configs' small CNN, and a
# ResNet-18 at ImageNet's 224 px with a batch a 2-core CPU steps through in about a second.
MODELS = {
    "small_cnn (width 16), 32 px": ("small_cnn", {"width": 16}, 32, 128),
    "resnet18, 224 px": ("resnet18", {}, 224, 16),
}


def method(backbone: str, kwargs: dict, size: int) -> SimCLR:
    torch.manual_seed(0)
    augment = SimCLRAugment(size=size, crop_scale=(0.8, 1.0), color_jitter=0.0, grayscale=0.0)
    model = SimCLR(backbone=backbone, backbone_kwargs=kwargs, channels_last=True, augment=augment)
    return model.to(memory_format=torch.channels_last)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds of full steps")
    args = parser.parse_args()
    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp()  # an empty cache: the choice is timed
    device = torch.device("cpu")
    print(f"{device_name(device)}; load average {os.getloadavg()[0]:.1f} at the start")
    for name, (backbone, kwargs, size, batch_size) in MODELS.items():
        model = method(backbone, kwargs, size)
        start = time.perf_counter()
        choice = choose_precision(model, device, size, batch_size)
        took = time.perf_counter() - start
        print(f"\n{name}: chooses {choice.precision} in {took:.1f} s ({choice.source}; best "
              + ", ".join(f"{p} {1000 * s:.1f} ms" for p, s in choice.seconds.items())
              + " per backbone step)")  # fmt: skip
        shape = (batch_size, 3, size, size)
        batch = {"image": torch.randint(0, 256, shape, dtype=torch.uint8)}
        batch["view"] = torch.randint(0, 256, shape, dtype=torch.uint8)
        steps = {p: full_step(method(backbone, kwargs, size), p == BF16) for p in (FLOAT32, BF16)}
        times: dict[str, list[float]] = {p: [] for p in steps}
        for step in steps.values():  # warm-up
            step(batch)
        for _ in range(args.rounds):
            for p, step in steps.items():
                start = time.perf_counter()
                step(batch)
                times[p].append(time.perf_counter() - start)
        base = statistics.median(times[FLOAT32])
        print(f"  full SimCLR step, batch {batch_size} x 2 views:")
        for p, ts in times.items():
            median = statistics.median(ts)
            rate = 2 * batch_size / median
            print(f"  {p:<11} median {median:6.3f} s  {rate:6.0f} images/s  {base / median:5.2f}x")
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
