"""A fit's exported encoder against ``contrastive embed`` of the same run's checkpoint.

Every ``fit`` writes its final encoder to ``<run>/encoder``. This writes test images of the
shapes data to PNG files, embeds them with ``contrastive embed --ckpt <run>/checkpoints/last.ckpt``
(the command's own decoding) and with ``contrastive.load_encoder(<run>/encoder).embed`` on the
same pixels, and prints the largest absolute difference of the features (issue #19: under 1e-5).

    python benchmarks/export_check.py runs/simclr/version_0 --out /tmp/export_check
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import contrastive
from contrastive.datamodules.shapes import ShapesDataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a fit's run folder (holds encoder/, checkpoints/)")
    parser.add_argument("--out", type=Path, required=True, help="a folder for the images")
    parser.add_argument("--num_images", type=int, default=64)
    args = parser.parse_args()
    folder = args.out / "images"
    folder.mkdir(parents=True, exist_ok=True)
    data = ShapesDataset(args.num_images, 32, seed=5, split="test")
    images = torch.stack([data[i]["image"] for i in range(len(data))])  # (N, 3, 32, 32) uint8
    for i, image in enumerate(images):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:04d}.png")
    features = args.out / "embed"
    checkpoint = args.run / "checkpoints" / "last.ckpt"
    subprocess.run(
        ["contrastive", "embed", "--ckpt", str(checkpoint), "--images", str(folder),
         "--out", str(features), "--overwrite", "--no_progress"],
        check=True,
    )  # fmt: skip
    ids = [json.loads(line) for line in features.with_name("embed.ids.jsonl").open()]
    from_command = np.load(features)
    order = [int(Path(name).stem) for name in ids]
    encoder = contrastive.load_encoder(args.run / "encoder")
    with torch.no_grad():
        from_export = encoder.embed(images[order]).numpy()
    difference = float(np.abs(from_command - from_export).max())
    print(f"{len(order)} images, {from_export.shape[1]} dims: max abs difference {difference:.2e}")


if __name__ == "__main__":
    main()
