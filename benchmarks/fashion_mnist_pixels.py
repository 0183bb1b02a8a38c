"""The evaluation protocol checked on a real benchmark: Fashion-MNIST read from raw pixels.

The "encoder" is the image itself (grey values, standardised per pixel with the training set's
mean and std as scikit-learn's StandardScaler does, flattened; no training), run through the
same evaluation layer every method gets (``EmbeddingReport`` in a Trainer's test stage): the
weighted kNN (k=20, T=0.07, cosine) with the 60,000 training images as the bank, and the linear
probe (multinomial logistic regression by L-BFGS, weight decay chosen on a held-out slice), both
scored on the 10,000 test images. Published raw-pixel figures are about 0.85-0.86 for both (the
dataset's own benchmark table); the raw-pixel row is the floor every trained encoder's
Fashion-MNIST figures are read against.

    apt-get install dataset-fashion-mnist          # the IDX files, into /usr/share/datasets
    python benchmarks/fashion_mnist_pixels.py      # about 2 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor

from contrastive.datamodules import VisionSetDataModule
from contrastive.datamodules.fashion_mnist import read_fashion_mnist
from contrastive.evaluation import EmbeddingReport


class Pixels(LightningModule):
    """The raw-pixel "encoder": each image's grey values standardised per pixel, flattened.

    Fashion-MNIST's images are grey, given as 3 equal channels; the 2-pixel black border the
    data module adds to reach 32 px is constant, so standardised it is 0 and changes no cosine.
    (Without the standardisation, cosine kNN on the raw values reads 0.846: every image shares
    the large positive mean, which the cosine then weighs.)

    Args:
        mean: ``(H * W,)`` the training images' mean grey value per pixel, in [0, 1].
        std: ``(H * W,)`` their standard deviation (1 where constant).
    """

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def embed(self, images: Tensor) -> Tensor:
        pixels = images.float().mean(dim=1).flatten(1) / 255  # (B, 1024) grey in [0, 1]
        return (pixels - self.mean) / self.std

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        return {"embedding": self.embed(batch["image"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="the IDX files' folder (Debian's default)")
    parser.add_argument("--bank", type=int, default=60_000, help="training images in the bank")
    parser.add_argument("--out", default=None, help="write the figures to this JSON file")
    args = parser.parse_args()
    data = VisionSetDataModule(
        "fashion_mnist", args.root, num_bank=args.bank, eval_batch_size=2048, num_workers=0
    )
    images, _ = read_fashion_mnist(data.root, "train")  # (60000, 1, 32, 32) uint8
    train = torch.from_numpy(images).float().flatten(1) / 255  # (60000, 1024)
    std = train.std(dim=0)
    pixels = Pixels(train.mean(dim=0), torch.where(std > 1e-6, std, torch.ones_like(std)))
    report = EmbeddingReport(random_init=False)  # nothing is trained: no baseline to beat
    trainer = Trainer(
        accelerator="cpu",
        logger=False,
        callbacks=[report],
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        default_root_dir="runs/fashion_mnist_pixels",
    )
    start = time.perf_counter()
    results = trainer.test(pixels, data, verbose=False)[0]
    seconds = time.perf_counter() - start
    knn, linear = results["test/knn/class"], results["test/linear/class"]
    print(
        f"raw pixels: kNN {knn:.3f}, linear {linear:.3f} ({seconds:.0f} s, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads)"
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump({**results, "seconds": seconds}, f, indent=1)


if __name__ == "__main__":
    main()
