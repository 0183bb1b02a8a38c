"""The kNN gap to raw pixels on Fashion-MNIST, with the same preprocessing on both sides.

The comparison table's raw-pixel row is standardised per pixel with the bank's statistics
(``fashion_mnist_pixels.py``: without it, cosine kNN reads 0.846 instead of 0.862), while a
method's features go to the kNN as they are. This reads both ways for both: the pixels and each
checkpoint's ``embed`` features, raw and standardised per feature with the bank's mean and std
(as the linear probe does), through the same weighted kNN (k=20, T=0.07, cosine), the 60,000
training images as the bank and the 10,000 test images as queries.

    python benchmarks/fashion_knn_parity.py \\
        benchmarks/results/methods/fashion_mnist/runs/simclr/version_0/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse

import torch
from torch import Tensor

from contrastive.api import load
from contrastive.datamodules import VisionSetDataModule
from contrastive.evaluation.knn import knn_accuracy
from contrastive.evaluation.linear_probe import standardisation


def features(embed, loader) -> tuple[Tensor, Tensor]:
    """``(N, D)`` features of every image of ``loader`` and their ``(N,)`` class labels."""
    xs, ys = [], []
    for batch in loader:
        xs.append(embed(batch["image"]))
        ys.append(batch["labels"]["class"])
    return torch.cat(xs), torch.cat(ys)


def knn_both_ways(bank: Tensor, bank_y: Tensor, query: Tensor, query_y: Tensor) -> tuple:
    """kNN top-1 on the features as they are and standardised with the bank's statistics."""
    mean, std = standardisation(bank)  # the linear probe's
    raw = knn_accuracy(query, query_y, bank, bank_y, 10)
    standardised = knn_accuracy((query - mean) / std, query_y, (bank - mean) / std, bank_y, 10)
    return float(raw), float(standardised)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", nargs="*", help="method checkpoints (fit's last.ckpt)")
    parser.add_argument("--root", default=None, help="the IDX files' folder (Debian's default)")
    parser.add_argument("--num-bank", type=int, default=60000, help="the first training images")
    args = parser.parse_args(argv)
    # The test loaders only: no training batch is drawn, so any batch size fits the data.
    data = VisionSetDataModule(
        name="fashion_mnist", root=args.root, num_bank=args.num_bank, batch_size=1, num_workers=0
    )
    data.setup("test")
    bank_loader, query_loader = data.test_dataloader()
    encoders = {"raw pixels": lambda images: images.flatten(1).float()}
    encoders |= {path: load(path).embed for path in args.checkpoints}
    print("| encoder | kNN, as they are | kNN, standardised per feature |")
    print("| --- | --- | --- |")
    with torch.no_grad():
        for name, embed in encoders.items():
            bank = features(embed, bank_loader)
            raw, standardised = knn_both_ways(*bank, *features(embed, query_loader))
            print(f"| {name} | {raw:.3f} | {standardised:.3f} |", flush=True)


if __name__ == "__main__":
    main()
