"""Calibrate the built-in shapes data: is each attribute hard at random init, and solvable?

For the same architecture as the shipped configs, prints per attribute:
  - kNN top-1 of the random-init encoder (the floor the report compares against);
  - test accuracy of the encoder trained with labels (supervised, cross-entropy), showing the
    attribute is learnable from these pixels: the ceiling.

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
from contrastive.datamodules.shapes import ATTRIBUTES, ShapesDataset
from contrastive.metrics import knn_accuracy


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


def supervised(attribute: int, num_classes: int, train, test, args, normalize) -> float:
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
    return (logits.argmax(1) == test[1][:, attribute]).float().mean().item()


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
    random_knn = knn_accuracy(
        features(random_init, test[0], normalize),
        test[1],
        features(random_init, bank[0], normalize),
        bank[1],
        num_classes,
    )
    print(f"{args.backbone} (width {args.width}), {args.size} px, {args.num_train} train images")
    header = f"{'attribute':<12}{'classes':>8}{'chance':>8}{'random-init kNN':>17}"
    print(f"{header}{'supervised':>12}{'s':>6}")
    for i, name in enumerate(ATTRIBUTES):
        sup, secs = "", ""
        if name in args.attributes:
            start = time.perf_counter()
            sup = f"{supervised(i, num_classes[i], train, test, args, normalize):.3f}"
            secs = f"{time.perf_counter() - start:.0f}"
        row = f"{name:<12}{num_classes[i]:>8}{1 / num_classes[i]:>8.3f}"
        print(f"{row}{random_knn[i].item():>17.3f}{sup:>12}{secs:>6}")


if __name__ == "__main__":
    main()
