"""Which images of a collection are alike: exact pair search and the labelled grid.

:func:`top_pairs` finds the most similar pairs of a whole collection exactly, in chunks (memory
``O(chunk_size x N)``, never ``N x N``); :func:`top_pairs_faiss` the same through faiss's exact
index; :func:`nearest` the neighbours of one query; :func:`draw_grid` draws pairs as a PNG.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps
from torch import Tensor


def top_pairs(z: Tensor, k: int, chunk_size: int = 4096) -> tuple[Tensor, Tensor, Tensor]:
    """The ``k`` pairs ``i < j`` with the largest dot product ``z[i] . z[j]``, exactly.

    Rows are scored ``chunk_size`` at a time against the rows after them, keeping a running
    top-k, so memory is ``O(chunk_size x N)``. Pass L2-normalised ``z`` for cosine similarity.

    Args:
        z: ``(N, D)`` embeddings.
        k: number of pairs (at most ``N (N - 1) / 2`` are returned).
        chunk_size: rows scored at once.

    Returns:
        ``(scores, i, j)``, each ``(k,)``, best first.
    """
    n = z.shape[0]
    best = torch.empty(0, dtype=z.dtype, device=z.device)
    best_i = torch.empty(0, dtype=torch.long, device=z.device)
    best_j = torch.empty(0, dtype=torch.long, device=z.device)
    for start in range(0, n - 1, chunk_size):
        stop = min(start + chunk_size, n)
        sims = z[start:stop] @ z[start:].T  # (c, N - start): rows against the rows from start
        row = torch.arange(start, stop, device=z.device)[:, None]
        col = torch.arange(start, n, device=z.device)[None, :]
        sims = sims.masked_fill(col <= row, float("-inf"))  # keep i < j only
        m = min(k, sims.numel())
        scores, flat = sims.flatten().topk(m)
        keep = scores > float("-inf")
        scores, flat = scores[keep], flat[keep]
        cand_i = flat // sims.shape[1] + start
        cand_j = flat % sims.shape[1] + start
        merged = torch.cat([best, scores])
        order = merged.topk(min(k, merged.numel())).indices
        best = merged[order]
        best_i = torch.cat([best_i, cand_i])[order]
        best_j = torch.cat([best_j, cand_j])[order]
    return best, best_i, best_j


def top_pairs_faiss(z: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`top_pairs` through faiss (exact inner-product index), for large collections.

    Exact too: a pair among the ``k`` best overall has each member among the other's ``k``
    nearest neighbours, so searching every row's ``k + 1`` neighbours (itself included) and
    keeping the best ``i < j`` pairs finds them. Needs ``pip install faiss-cpu`` (or faiss-gpu).
    """
    import faiss

    x = np.ascontiguousarray(z.detach().float().cpu().numpy())  # (N, D)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    scores, neighbours = index.search(x, min(k + 1, len(x)))  # (N, k + 1) each
    rows = np.repeat(np.arange(len(x)), neighbours.shape[1])
    cols, flat = neighbours.ravel(), scores.ravel()
    keep = (cols > rows) & (cols >= 0)  # each pair once (i < j); -1 marks "no neighbour"
    rows, cols, flat = rows[keep], cols[keep], flat[keep]
    order = np.argsort(-flat, kind="stable")[:k]
    as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a[order]))  # noqa: E731
    return as_tensor(flat), as_tensor(rows).long(), as_tensor(cols).long()


def faiss_available() -> bool:
    """Whether faiss can be imported (it is optional)."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def nearest(z: Tensor, query: Tensor, k: int, exclude: int | None = None) -> tuple[Tensor, Tensor]:
    """The ``k`` rows of ``z`` (``(N, D)``) with the largest dot product with ``query`` (``(D,)``).

    Returns:
        ``(scores, index)``, each ``(k,)``, best first; row ``exclude`` is never returned.
    """
    sims = z @ query  # (N,)
    if exclude is not None:
        sims[exclude] = float("-inf")
    scores, index = sims.topk(min(k, z.shape[0] - (exclude is not None)))
    return scores, index


# ---- drawing ------------------------------------------------------------------------------


def shown(name: str) -> str:
    """An id as printed in a table or a grid: as it is, or as a JSON string when it holds a
    tab, a newline or a leading quote, so that one id stays one cell of one line."""
    if any(c in name for c in "\t\n\r") or name.startswith('"'):
        return json.dumps(name, ensure_ascii=False)
    return name


def shorten(text: str, width: int = 48) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3) :]


def draw_grid(
    rows: list[dict], load, out: Path, thumb: int = 112, text_width: int = 420
) -> Image.Image:
    """One row per pair: two thumbnails, then the similarities and the (shortened) ids.

    Args:
        rows: dicts with ``a``, ``b`` (source indices), ``id_a``, ``id_b`` and ``lines``
            (text lines: similarities first).
        load: ``load(index) -> PIL.Image`` of the source.
        out: where the PNG is written.
    """
    pad = 6
    height = thumb + 2 * pad
    grid = Image.new("RGB", (2 * thumb + 3 * pad + text_width, height * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    for r, row in enumerate(rows):
        y = r * height + pad
        for c, index in enumerate((row["a"], row["b"])):
            try:
                image = ImageOps.fit(load(index), (thumb, thumb), Image.Resampling.BICUBIC)
                grid.paste(image, (pad + c * (thumb + pad), y))
            except Exception:
                draw.rectangle([pad + c * (thumb + pad), y, (c + 1) * (thumb + pad), y + thumb])
        x = 2 * thumb + 3 * pad
        lines = [
            *row["lines"],
            "A: " + shorten(shown(row["id_a"])),
            "B: " + shorten(shown(row["id_b"])),
        ]
        for t, line in enumerate(lines):
            draw.text((x, y + 4 + 16 * t), line, fill="black")
        draw.line([0, (r + 1) * height - 1, grid.width, (r + 1) * height - 1], fill="#cccccc")
    grid.save(out)
    return grid
