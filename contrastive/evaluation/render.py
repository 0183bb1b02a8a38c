"""Report rendering: the text tables the test stage prints and the PNG charts it saves.

Pure functions of results (no metric, no model): the embedding report (kNN and linear probe per
label field, trained against random init), the image-text table (zero-shot and retrieval), the
conditional benchmark's table, the bar chart of the embedding report and the projector's scatter
plot. Charts are drawn with matplotlib's Agg backend (no display needed) and returned as
``(H, W, 3)`` uint8 arrays; :func:`save_image` writes and logs them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from contrastive.evaluation.conditional_benchmark import ROWS, Results, mean_over_conditions

NAN = float("nan")


class FieldRow(NamedTuple):
    """One label field of the embedding report; ``nan`` where not measured."""

    name: str
    classes: int
    chance: float  # the majority-class rate of the query split
    knn: float
    knn_random: float = NAN
    linear: float = NAN
    linear_random: float = NAN


def _cell(value: float, width: int, signed: bool = False) -> str:
    if math.isnan(value):
        return f"{'-':>{width}}"
    return f"{value:>+{width}.3f}" if signed else f"{value:>{width}.3f}"


def embedding_table(rows: Sequence[FieldRow], k: int, queries: int, bank: int) -> str:
    """The "what does the embedding know" table: per label field, kNN and linear probe, trained
    against random init and the gain, beside the chance (majority-class) rate.

    Columns of a measure that was not run (no random init, no linear probe) are left out.
    """
    has_random = any(not math.isnan(r.knn_random) for r in rows)
    has_linear = any(not math.isnan(r.linear) for r in rows)
    measures = [("kNN", "knn", "knn_random")]
    if has_linear:
        measures.append(("linear", "linear", "linear_random"))
    named = " and ".join([f"kNN top-1 (k={k})"] + (["linear probe"] if has_linear else []))
    head = f"{'attribute':<12}{'classes':>8}{'chance':>8}"
    for label, _, _ in measures:
        head += (
            f"{label + ' random':>14}{label + ' trained':>15}{'gain':>8}"
            if has_random
            else (f"{label:>10}")
        )
    lines = [f"What the embedding knows: {named} per attribute, test split ({queries} "
             f"queries, bank {bank})", head]  # fmt: skip
    for row in rows:
        line = f"{row.name:<12}{row.classes:>8}{row.chance:>8.3f}"
        for _, trained, random in measures:
            value, base = getattr(row, trained), getattr(row, random)
            if has_random:
                line += f"{_cell(base, 14)}{_cell(value, 15)}{_cell(value - base, 8, signed=True)}"
            else:
                line += _cell(value, 10)
        lines.append(line)
    return "\n".join(lines)


def crossmodal_table(
    trained: Mapping[str, float], random: Mapping[str, float], classes: Mapping[str, int]
) -> str:
    """The image-text table, titled by what was measured: zero-shot accuracy per attribute
    (when the data has class names), then retrieval (when it has captions), trained vs random."""
    zero_shot = [a for a in classes if f"zero_shot/{a}" in trained]
    retrieval = any(k.startswith("retrieval/") for k in trained)
    parts = (["zero-shot classification (top-1 from class prompts)"] if zero_shot else []) + (
        ["image-text retrieval"] if retrieval else []
    )
    title = " and ".join(parts) or "nothing measured"
    lines = [
        f"{title[0].upper()}{title[1:]}, test split",
        f"{'metric':<22}{'chance':>8}{'random init':>13}{'trained':>10}{'gain':>10}",
    ]

    def row(name: str, key: str, chance: str) -> None:
        value, base = trained.get(key), random.get(key, NAN)
        if value is not None:
            lines.append(f"{name:<22}{chance:>8}{_cell(base, 13)}{value:>10.3f}"
                         f"{_cell(value - base, 10, signed=True)}")  # fmt: skip

    for attr in zero_shot:
        row(f"zero-shot {attr}", f"zero_shot/{attr}", f"{1 / classes[attr]:.3f}")
    for direction in ("i2t", "t2i"):
        for k in (1, 5, 10):
            row(f"{direction} R@{k}", f"retrieval/{direction}/R@{k}", "")
        row(f"{direction} median rank", f"retrieval/{direction}/median_rank", "")
    return "\n".join(lines)


def conditional_table(results: Results, gallery: int, queries: int) -> str:
    """The conditional benchmark as one table: a block of scorers per condition and phrasing,
    then the means. Metrics a row lacks (retrieval, for triplets read from a manifest) print
    as ``-``."""
    title = "Conditional retrieval (gallery {}, {} queries) and triplet accuracy"
    lines = [
        title.format(gallery, queries) if gallery else "Conditional triplet accuracy",
        f"{'condition':<12}{'phrasing':<10}{'scorer':<16}{'R@1':>7}{'R@5':>7}{'mAP':>7}"
        f"{'triplet':>9}{'mAP gain':>10}",
    ]
    groups = list(dict.fromkeys((c, p) for c, p, _ in results))
    blocks = [
        ((c, p), {s: results[(c, p, s)] for s in ROWS if (c, p, s) in results}) for c, p in groups
    ]
    blocks.append((("mean", ""), mean_over_conditions(results)))
    for (condition, phrasing), by_scorer in blocks:
        base = by_scorer.get("image", {}).get("mAP", NAN)
        for i, (scorer, m) in enumerate(by_scorer.items()):
            head = f"{condition:<12}{phrasing:<10}" if i == 0 else " " * 22
            cells = [_cell(m.get(k, NAN), w) for k, w in (("R@1", 7), ("R@5", 7), ("mAP", 7))]
            gain = m.get("mAP", NAN) - base
            lines.append(
                f"{head}{scorer:<16}{''.join(cells)}{_cell(m.get('triplet', NAN), 9)}"
                f"{_cell(gain, 10, signed=True)}"
            )
    return "\n".join(lines)


def _figure_array(fig) -> np.ndarray:
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()  # (H, W, 3) uint8
    import matplotlib.pyplot as plt

    plt.close(fig)
    return image


def embedding_chart(rows: Sequence[FieldRow], title: str) -> np.ndarray:
    """Grouped bars per label field: kNN and linear probe, random init and trained, with the
    chance rate as a tick; returned as an ``(H, W, 3)`` uint8 image."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    series = [
        ("kNN, random init", "knn_random", "#c6dbef"),
        ("kNN, trained", "knn", "#2171b5"),
        ("linear, random init", "linear_random", "#fdd0a2"),
        ("linear, trained", "linear", "#d94801"),
    ]
    series = [s for s in series if any(not math.isnan(getattr(r, s[1])) for r in rows)]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(rows) + 2), 3.6), dpi=100)
    width = 0.8 / max(1, len(series))
    x = np.arange(len(rows))
    for i, (label, key, colour) in enumerate(series):
        values = [getattr(r, key) for r in rows]
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=label, color=colour)
    ax.scatter(x, [r.chance for r in rows], marker="_", s=600, color="black", label="chance")
    ax.set_xticks(x, [r.name for r in rows])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncols=min(5, len(series) + 1), loc="lower center",
              bbox_to_anchor=(0.5, 1.08))  # fmt: skip
    fig.tight_layout()
    return _figure_array(fig)


def scatter_chart(points: np.ndarray, labels: Mapping[str, np.ndarray], title: str) -> np.ndarray:
    """The projector without TensorBoard: ``(N, 2)`` points (a PCA of the embeddings), one panel
    per label field coloured by its class; an ``(H, W, 3)`` uint8 image."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fields = list(labels) or [""]
    cols = min(4, len(fields))
    rows = math.ceil(len(fields) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), dpi=80, squeeze=False)
    for ax, name in zip(axes.flat, fields, strict=False):
        colour = labels[name] if name else None
        ax.scatter(points[:, 0], points[:, 1], c=colour, s=4, cmap="tab10")
        ax.set_title(name or "embedding", fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
    for ax in list(axes.flat)[len(fields) :]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _figure_array(fig)


def save_image(trainer: Trainer, folder: Path, name: str, image: np.ndarray, tag: str) -> Path:
    """Write ``image`` (``(H, W, 3)`` uint8) as ``folder/name.png`` (``name_1.png``, ... when
    taken: nothing is overwritten) and log it to the TensorBoard logger if there is one."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    path, n = folder / f"{name}.png", 0
    while path.exists():
        n += 1
        path = folder / f"{name}_{n}.png"
    Image.fromarray(image).save(path)
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(tag, image, trainer.global_step, dataformats="HWC")
    return path
