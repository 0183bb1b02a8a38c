"""Decode throughput: the image folder loader against torchvision's ImageFolder with PIL.

Writes a folder of JPEGs (sides drawn from 256 to 1024 px, photo-like content, quality 90),
then reads it to ``size x size`` uint8 batches both ways with the same DataLoader settings:

- ours: ``ImageFolderDataModule``'s dataset (``torchvision.io.decode_jpeg``, crop, then an
  antialiased uint8 resize, in the workers);
- torchvision: ``datasets.ImageFolder`` with ``Resize(size)``, ``CenterCrop(size)`` and
  ``PILToTensor()`` (uint8 out too; ``ToTensor``'s float conversion would only slow it down).

Full passes alternate between the two, after one warm-up pass each (which also fills the page
cache); prints medians and the ratio.

    python benchmarks/decode.py --images 400 --size 224 --workers 1 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from contrastive.datamodules import ImageFolderDataModule
from contrastive.datamodules.common import Collate, default_num_workers


def photo_like(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """``(H, W, 3)`` uint8: smooth colour fields, a few hard-edged blobs and sensor noise.

    Compresses like a photograph (about 1-2 bits per pixel at quality 90), unlike pure noise
    (far larger files) or flat colour (far smaller).
    """
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.zeros((height, width, 3), np.float32)
    for c in range(3):
        fx, fy, phase = rng.uniform(1, 6, 2).tolist() + [rng.uniform(0, 6.3)]
        image[..., c] = 128 + 90 * np.sin(x / width * fx * 3.1 + phase) * np.cos(y / height * fy)
    for _ in range(6):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        radius = rng.uniform(0.05, 0.3) * min(height, width)
        inside = (y - cy) ** 2 + (x - cx) ** 2 < radius**2
        image[inside] = rng.uniform(0, 255, 3)
    image += rng.normal(0, 6, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_jpegs(
    folder: Path, count: int, seed: int = 0, sides: tuple[int, int] = (256, 1024)
) -> int:
    """``count`` JPEGs in 10 class folders, each side drawn from ``sides`` (inclusive);
    returns their total size in bytes."""
    rng = np.random.default_rng(seed)
    total = 0
    for i in range(count):
        height, width = rng.integers(sides[0], sides[1] + 1, 2).tolist()
        path = folder / f"class_{i % 10}" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo_like(rng, height, width)).save(path, quality=90)
        total += path.stat().st_size
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=default_num_workers())
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        total = write_jpegs(root, args.images)
        print(
            f"wrote {args.images} JPEGs, 256-1024 px a side, {total / 2**20:.0f} MiB, "
            f"in {time.perf_counter() - start:.0f} s"
        )
        data = ImageFolderDataModule(
            root, val_fraction=0.0, image_size=args.size, batch_size=args.batch, num_workers=0
        )
        data.setup("fit")
        ours = data._datasets["train"]
        pil = transforms.Compose(
            [
                transforms.Resize(args.size),
                transforms.CenterCrop(args.size),
                transforms.PILToTensor(),
            ]
        )
        theirs = datasets.ImageFolder(str(root), transform=pil)
        assert len(ours) == len(theirs) == args.images

        common = dict(
            batch_size=args.batch,
            num_workers=args.workers,
            persistent_workers=args.workers > 0,
        )
        loaders = {
            "contrastive ImageFolderDataModule": DataLoader(ours, collate_fn=Collate(), **common),
            "torchvision ImageFolder + PIL": DataLoader(theirs, **common),
        }

        def one_pass(loader: DataLoader) -> float:
            start = time.perf_counter()
            seen = 0
            for batch in loader:
                images = batch["image"] if isinstance(batch, dict) else batch[0]
                assert images.dtype == torch.uint8 and images.shape[1:] == (3, args.size, args.size)
                seen += len(images)
            assert seen == args.images, seen
            return time.perf_counter() - start

        for loader in loaders.values():  # warm-up: workers, page cache
            one_pass(loader)
        times: dict[str, list[float]] = {name: [] for name in loaders}
        for _ in range(args.rounds):
            for name, loader in loaders.items():
                times[name].append(one_pass(loader))

    print(
        f"{args.images} JPEGs -> {args.size} px uint8, batch {args.batch}, "
        f"{args.workers} workers, {args.rounds} alternating passes"
    )
    print(f"{'loader':<36}{'median s':>10}{'images/s':>10}")
    rates = {}
    for name, ts in times.items():
        median = statistics.median(ts)
        rates[name] = args.images / median
        print(f"{name:<36}{median:>10.2f}{rates[name]:>10.0f}")
    first, second = rates.values()
    print(f"ratio (ours / torchvision): {first / second:.2f}x")


if __name__ == "__main__":
    main()
