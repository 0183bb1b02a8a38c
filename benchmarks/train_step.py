"""Training-step throughput of SimCLR on the shapes configs' model, by precision and layout.

A full step (views made on the device, forward, backward, AdamW) on uint8 batches held in
memory, alternating the variants round by round; prints medians and the ratio to fp32.

    python benchmarks/train_step.py --widths 16 32 --batch 128 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from contrastive.augment import SimCLRAugment
from contrastive.methods import SimCLR

VARIANTS = {  # name: (channels_last, bf16 autocast)
    "fp32": (False, False),
    "fp32 channels-last": (True, False),
    "bf16 autocast": (False, True),
    "bf16 channels-last": (True, True),
}


def step_fn(width: int, channels_last: bool, bf16: bool, backbone: str):
    torch.manual_seed(0)
    kwargs = {"width": width} if backbone == "small_cnn" else {"small_stem": True}
    model = SimCLR(
        backbone=backbone,
        backbone_kwargs=kwargs,
        projector_hidden_dim=512,
        channels_last=channels_last,
        augment=SimCLRAugment(crop_scale=(0.8, 1.0), color_jitter=0.0, grayscale=0.0),
    )
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return full_step(model, bf16)


def full_step(model: SimCLR, bf16: bool):
    """One training step of ``model`` on a batch: views, forward (bf16 autocast or not),
    backward and an AdamW update."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(batch: dict) -> None:
        batch = dict(batch, views=model.make_views(batch))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model.training_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="small_cnn")
    parser.add_argument("--widths", type=int, nargs="+", default=[16])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()

    shape = (args.batch, 3, args.size, args.size)
    batch = {
        "image": torch.randint(0, 256, shape, dtype=torch.uint8),
        "view": torch.randint(0, 256, shape, dtype=torch.uint8),
    }
    steps = {
        (w, v): step_fn(w, *VARIANTS[v], args.backbone) for w in args.widths for v in args.variants
    }
    times: dict[tuple, list[float]] = {key: [] for key in steps}
    for step in steps.values():  # warm-up
        step(batch)
    for _ in range(args.rounds):
        for key, step in steps.items():
            start = time.perf_counter()
            step(batch)
            times[key].append(time.perf_counter() - start)

    threads = torch.get_num_threads()
    setting = f"{args.backbone}, batch {args.batch} x 2 views, {args.size} px"
    print(f"SimCLR step, {setting}, {threads} threads")
    print(f"{'width':>6}  {'variant':<20}{'median s':>9}{'images/s':>10}{'vs fp32':>9}")
    for (width, variant), ts in times.items():
        median = statistics.median(ts)
        base = statistics.median(times[(width, "fp32")]) if (width, "fp32") in times else median
        rate = args.batch / median
        print(f"{width:>6}  {variant:<20}{median:>9.2f}{rate:>10.0f}{base / median:>8.2f}x")


if __name__ == "__main__":
    main()
