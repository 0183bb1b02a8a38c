"""One font query's nearest test glyphs, unconditioned and under each condition, as one picture.

Reads a text-conditioned checkpoint of the fonts (``configs/fonts_conditional.yaml``) as data,
rebuilds its fonts data module from the checkpoint's own data settings, embeds the test split's
glyphs, and draws a row per embedding: the query first, then its ``k`` nearest other glyphs,
each captioned with its letter and typeface.

    python benchmarks/fonts_neighbours.py \\
        --ckpt runs/fonts_conditional/version_0/checkpoints/last.ckpt \\
        --out docs/fonts_conditional.png --query 5
"""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path

import matplotlib
import torch
import torch.nn.functional as F

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from contrastive.checkpoints import load_method, read_checkpoint  # noqa: E402
from contrastive.datamodules.fonts import FontsDataModule  # noqa: E402


@torch.no_grad()
def neighbours(model, images: torch.Tensor, texts: list[str], query: int, k: int) -> dict:
    """``{row: (k,) indices}``: the query's nearest other images by the unconditioned
    embedding (``"unconditioned"``) and by the conditioned one under each text."""
    rows = {"unconditioned": F.normalize(model.encode_image(images).float(), dim=-1)}
    inputs = model.condition_inputs(images)
    for text in texts:
        t = model.encode_text([text]).expand(len(images), -1)
        rows[text] = model.condition_from(inputs, t).float()  # (N, D), unit
    out = {}
    for name, z in rows.items():
        scores = z @ z[query]  # (N,)
        scores[query] = float("-inf")
        out[name] = scores.topk(k).indices
    return out


def draw(images: torch.Tensor, names: list[str], query: int, found: dict, out: Path) -> None:
    """A row per entry of ``found``: the query, then its neighbours, captioned."""
    k = len(next(iter(found.values())))
    fig, axes = plt.subplots(len(found), k + 1, figsize=(1.3 * (k + 1), 1.6 * len(found)))
    for r, (row, indices) in enumerate(found.items()):
        for c, index in enumerate([query, *indices.tolist()]):
            ax = axes[r, c]
            ax.imshow(images[index].permute(1, 2, 0).numpy())
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(names[index], fontsize=6)
            if c == 0:
                ax.set_ylabel(f"query\n{row!r}" if row != "unconditioned" else row, fontsize=7)
    fig.suptitle("nearest test glyphs of one query, unconditioned and under each condition")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=150)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", required=True, help="a fonts Conditional checkpoint")
    parser.add_argument("--out", type=Path, default=Path("docs/fonts_conditional.png"))
    parser.add_argument("--query", type=int, default=0, help="index in the test split")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--texts", nargs="+", default=["same letter", "same typeface"])
    args = parser.parse_args(argv)
    model, _ = load_method(args.ckpt)
    settings = read_checkpoint(args.ckpt).get("datamodule_hyper_parameters") or {}
    known = inspect.signature(FontsDataModule).parameters
    data = FontsDataModule(**{k: v for k, v in settings.items() if k in known})
    data.setup("test")
    dataset = data.test_dataloader()[1].dataset
    items = [dataset[i] for i in range(len(dataset))]
    images = torch.stack([item["image"] for item in items])  # (N, 3, S, S) uint8
    family, letter = data.class_names["family"], data.class_names["letter"]
    names = [f"{letter[i['labels']['letter']]} {family[i['labels']['family']]}" for i in items]
    found = neighbours(model, images, args.texts, args.query, args.k)
    draw(images, names, args.query, found, args.out)
    print(f"query {args.query} ({names[args.query]}): {args.out}")


if __name__ == "__main__":
    main()
