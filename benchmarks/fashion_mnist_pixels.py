"""The evaluation protocol checked on a real benchmark: Fashion-MNIST read from raw pixels.

The "encoder" is the image itself (its values, standardised per pixel with the bank's
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
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from torch import Tensor

from contrastive.datamodules import VisionSetDataModule
from contrastive.evaluation import EmbeddingReport
from contrastive.evaluation.linear_probe import standardisation


class Pixels(LightningModule):
    """The raw-pixel "encoder": each image's values standardised per pixel and channel,
    flattened. For Fashion-MNIST's grey images, given as 3 equal channels, the cosine is that of
    one channel; the 2-pixel black border the data module adds to reach 32 px is constant, so
    standardised it is 0 and changes no cosine. (Without the standardisation, cosine kNN on the
    raw values reads 0.846: every image shares the large positive mean, which the cosine then
    weighs.)

    Args:
        mean: ``(C * H * W,)`` the bank images' mean value per pixel and channel, in [0, 1].
        std: ``(C * H * W,)`` their standard deviation (1 where constant).
    """

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def embed(self, images: Tensor) -> Tensor:
        return (images.float().flatten(1) / 255 - self.mean) / self.std  # (B, C * H * W)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        return {"embedding": self.embed(batch["image"])}


def raw_pixel_results(data: LightningDataModule) -> dict[str, float]:
    """The evaluation layer's test figures (kNN and linear probe per label field) of the raw
    pixels of ``data``'s bank and queries, standardised with the bank's statistics."""
    data.setup("test")
    bank = data.test_dataloader()[0]
    pixels = torch.cat([b["image"].flatten(1).float() / 255 for b in bank])  # (N, C*H*W)
    model = Pixels(*standardisation(pixels))  # the linear probe's, as StandardScaler's
    trainer = Trainer(
        accelerator="cpu",
        logger=False,
        callbacks=[EmbeddingReport(random_init=False)],  # nothing is trained: no baseline
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        default_root_dir="runs/raw_pixels",
    )
    return trainer.test(model, data, verbose=False)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="the IDX files' folder (Debian's default)")
    parser.add_argument("--bank", type=int, default=60_000, help="training images in the bank")
    parser.add_argument("--out", default=None, help="write the figures to this JSON file")
    args = parser.parse_args()
    data = VisionSetDataModule(
        "fashion_mnist", args.root, num_bank=args.bank, eval_batch_size=2048, num_workers=0
    )
    start = time.perf_counter()
    results = raw_pixel_results(data)
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
