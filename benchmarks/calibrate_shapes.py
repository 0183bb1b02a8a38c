"""Calibrate the built-in shapes data: is each attribute hard at random init, and solvable?

For the same architecture as the shipped configs, prints per attribute:
  - kNN top-1 and the linear probe of the random-init encoder (the floor the report compares
    against), with the evaluation layer's own functions (contrastive.evaluation);
  - test accuracy of the encoder trained with labels (supervised, cross-entropy), showing the
    attribute is learnable from these pixels: the ceiling; and what the evaluation layer reads
    from that encoder's features, kNN and the linear probe (bank: 4096 train images).

    python benchmarks/calibrate_shapes.py --attributes shape --epochs 6
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from contrastive.augment import Augment
from contrastive.backbones import create_backbone
from contrastive.datamodules.shape_render import ATTRIBUTES
from contrastive.datamodules.shapes import ShapesDataset
from contrastive.evaluation.knn import knn_accuracy
from contrastive.evaluation.linear_probe import linear_probe_accuracy


def load(split: str, n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    data = ShapesDataset(n, size, seed=0, split=split)
    items = [data[i] for i in range(n)]
    images = torch.stack([item["image"] for item in items])  # (N, 3, H, W) uint8
    labels = torch.tensor([[item["labels"][a] for a in ATTRIBUTES] for item in items])  # (N, A)
    return images, labels


@torch.no_grad()
def features(encoder: nn.Module, images: torch.Tensor, normalize) -> torch.Tensor:
    encoder.eval()
    return torch.cat([encoder(normalize(chunk)) for chunk in images.split(512)])


def read(encoder: nn.Module, bank, test, num_classes: list[int], normalize) -> list[tuple]:
    """kNN and linear-probe accuracy of every attribute from ``encoder``'s features."""
    bank_x, test_x = features(encoder, bank[0], normalize), features(encoder, test[0], normalize)
    knn = knn_accuracy(test_x, test[1], bank_x, bank[1], num_classes)
    linear = linear_probe_accuracy(test_x, test[1], bank_x, bank[1], num_classes)
    return list(zip(knn.tolist(), linear.tolist(), strict=True))


def supervised(attribute: int, num_classes: int, train, test, args, normalize):
    torch.manual_seed(0)
    encoder = create_backbone(args.backbone, width=args.width)
    model = nn.Sequential(encoder, nn.Linear(encoder.num_features, num_classes))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = args.epochs * (len(train[0]) // args.batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-3, total_steps=steps)
    for _ in range(args.epochs):
        model.train()
        order = torch.randperm(len(train[0]))
        for start in range(0, len(order) - args.batch + 1, args.batch):
            idx = order[start : start + args.batch]
            loss = F.cross_entropy(model(normalize(train[0][idx])), train[1][idx, attribute])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(normalize(chunk)) for chunk in test[0].split(512)])
    return (logits.argmax(1) == test[1][:, attribute]).float().mean().item(), encoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="small_cnn")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--num-train", type=int, default=8192)
    parser.add_argument("--num-test", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--attributes", nargs="*", default=["shape"], help="trained supervised")
    args = parser.parse_args()

    normalize = Augment().normalize
    train = load("train", args.num_train, args.size)
    test = load("test", args.num_test, args.size)
    bank = train[0][:4096], train[1][:4096]
    torch.manual_seed(0)
    random_init = create_backbone(args.backbone, width=args.width)
    num_classes = [int(train[1][:, i].max()) + 1 for i in range(len(ATTRIBUTES))]
    floor = read(random_init, bank, test, num_classes, normalize)
    print(f"{args.backbone} (width {args.width}), {args.size} px, {args.num_train} train images")
    print(
        f"{'attribute':<12}{'classes':>8}{'chance':>8}{'random kNN':>12}{'random linear':>15}"
        f"{'supervised':>12}{'its kNN':>9}{'its linear':>12}{'s':>6}"
    )
    for i, name in enumerate(ATTRIBUTES):
        ceiling = ""
        if name in args.attributes:
            start = time.perf_counter()
            accuracy, encoder = supervised(i, num_classes[i], train, test, args, normalize)
            knn, linear = read(encoder, bank, test, num_classes, normalize)[i]
            seconds = time.perf_counter() - start
            ceiling = f"{accuracy:>12.3f}{knn:>9.3f}{linear:>12.3f}{seconds:>6.0f}"
        row = f"{name:<12}{num_classes[i]:>8}{1 / num_classes[i]:>8.3f}"
        print(f"{row}{floor[i][0]:>12.3f}{floor[i][1]:>15.3f}{ceiling}")


if __name__ == "__main__":
    main()
