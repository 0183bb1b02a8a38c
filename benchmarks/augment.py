"""Augmentation throughput: our batched kornia pipeline against torchvision v2 per sample.

The same SimCLR view distribution (random resized crop, flip, color jitter, grayscale, blur) on
uint8 batches, alternating the two pipelines round by round; prints medians and the ratio.

    python benchmarks/augment.py --batch 256 --size 32 --rounds 7
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torchvision.transforms import v2

from contrastive.augment import SimCLRAugment


def torchvision_per_sample(size: int) -> v2.Compose:
    return v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
            v2.RandomApply([v2.GaussianBlur(3, sigma=(0.1, 2.0))], p=0.5),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([0.5] * 3, [0.25] * 3),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    images = torch.randint(0, 256, (args.batch, 3, args.size, args.size), dtype=torch.uint8)
    ours = SimCLRAugment(blur=0.5)
    theirs = torchvision_per_sample(args.size)
    pipelines = {
        "contrastive (kornia, batched)": lambda: ours(images),
        "torchvision v2, per sample": lambda: torch.stack([theirs(x) for x in images]),
    }
    times: dict[str, list[float]] = {name: [] for name in pipelines}
    for run in pipelines.values():  # warm-up
        run()
    for _ in range(args.rounds):
        for name, run in pipelines.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)

    threads = torch.get_num_threads()
    print(f"batch {args.batch} x 3 x {args.size} x {args.size} uint8, {threads} threads")
    print(f"{'pipeline':<32}{'median ms':>10}{'images/s':>10}")
    rates = {}
    for name, ts in times.items():
        median = statistics.median(ts)
        rates[name] = args.batch / median
        print(f"{name:<32}{median * 1e3:>10.1f}{rates[name]:>10.0f}")
    first, second = rates.values()
    print(f"ratio (kornia / torchvision): {first / second:.1f}x")


if __name__ == "__main__":
    main()
