"""The conditional-similarity benchmark: does an embedding know *in what respect* images match?

For a query image and a condition ("same color", "both are red"), rank a gallery; the relevant
images share the attribute the condition names. Four scorers rank the same gallery:

- ``conditioned``: the conditioned embeddings of query and gallery, both under the query's text;
- ``image``: the unconditioned image embedding (what a plain embedding knows);
- ``text``: the text alone against the gallery's image embeddings (the condition's words);
- ``image+text``: the sum of the unit query image and text embeddings (the composed-retrieval
  baseline).

Each reports hit rate at 1 and 5 (``R@k``: a relevant image among the top ``k``) and mean average
precision, and the triplet accuracy: for each query a relevant and an irrelevant gallery image
are drawn (seeded), and the positive must score higher.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

SCORERS = ("conditioned", "image", "text", "image+text")


def distinct_texts(texts: Sequence[str]) -> tuple[list[str], Tensor]:
    """The distinct texts in order of first appearance, and each text's ``(N,)`` row among them."""
    rows: dict[str, int] = {}
    index = [rows.setdefault(t, len(rows)) for t in texts]
    return list(rows), torch.tensor(index)


def ranked_retrieval(
    scores: Tensor, relevant: Tensor, ks: Sequence[int] = (1, 5)
) -> dict[str, Tensor]:
    """Per-query retrieval metrics of a score matrix.

    Ties are broken against the model: among equal scores, irrelevant items rank first.

    Args:
        scores: ``(Q, G)`` higher is more similar; ``-inf`` marks an excluded item (the query
            itself), which must not be relevant.
        relevant: ``(Q, G)`` bool.
        ks: cut-offs of the hit rate.

    Returns:
        ``{"R@k": (Q,) 0/1 for each k, "AP": (Q,) average precision}``; queries without a
        relevant item get ``AP = 0`` and no hit.
    """
    if scores.shape != relevant.shape or scores.ndim != 2:
        raise ValueError(
            f"scores and relevant must be (Q, G) alike, got {tuple(scores.shape)} and "
            f"{tuple(relevant.shape)}"
        )
    relevant = relevant.bool()
    # Sort by score, descending, then relevant last among ties: key = (score, not relevant).
    order = torch.argsort(relevant.float(), dim=1, stable=True)  # irrelevant first
    order = order.gather(
        1, torch.argsort(scores.gather(1, order), dim=1, descending=True, stable=True)
    )
    hits = relevant.gather(1, order).float()  # (Q, G) in rank order
    cum = hits.cumsum(1)
    ranks = torch.arange(1, hits.shape[1] + 1, device=hits.device)
    total = hits.sum(1)
    out = {f"R@{k}": (cum[:, min(k, hits.shape[1]) - 1] > 0).float() for k in ks}
    out["AP"] = (hits * cum / ranks).sum(1) / total.clamp(min=1)
    return out


class ConditionSpec(NamedTuple):
    """One row group of the benchmark: an attribute phrased one way.

    Attributes:
        name: the attribute (``"color"``), also its label column's name.
        phrasing: ``"seen"`` (phrasings used in training) or ``"held-out"``.
        templates: phrasings, ``{value}`` standing for the query's class name; query ``q`` of
            the benchmark gets ``templates[q % len(templates)]``.
        class_names: the attribute's class names, by label.
    """

    name: str
    phrasing: str
    templates: tuple[str, ...]
    class_names: tuple[str, ...]

    def texts(self, labels: Tensor) -> list[str]:
        """The condition text of each query, from its ``(Q,)`` labels of this attribute."""
        return [
            self.templates[i % len(self.templates)].format(value=self.class_names[y])
            for i, y in enumerate(labels.tolist())
        ]


class ConditionalModel(NamedTuple):
    """What the benchmark needs from a model.

    Attributes:
        condition: ``(inputs (B, ...), text (B, E)) -> (B, D)`` row by row.
        condition_gallery: ``(inputs (M, ...), text (1, E)) -> (M, D)``: the gallery under one
            text.
        embed_text: ``list[str] -> (k, E)`` text embeddings, in the image embedding's space.
    """

    condition: Callable[[Tensor, Tensor], Tensor]
    condition_gallery: Callable[[Tensor, Tensor], Tensor]
    embed_text: Callable[[list[str]], Tensor]


def _triplets(
    relevant: Tensor, candidate: Tensor, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """A random relevant and a random irrelevant candidate for each query.

    Args:
        relevant: ``(Q, G)`` bool.
        candidate: ``(Q, G)`` bool, what may be drawn at all (not the query itself).

    Returns:
        ``(Q,)`` positive and negative indices, and ``(Q,)`` whether the query has both.
    """
    noise = torch.rand(relevant.shape, generator=generator).to(relevant.device)
    positive, negative = relevant & candidate, ~relevant & candidate
    pos = torch.where(positive, noise, -1.0).argmax(1)
    neg = torch.where(negative, noise, -1.0).argmax(1)
    return pos, neg, positive.any(1) & negative.any(1)


def conditional_benchmark(
    model: ConditionalModel,
    inputs: Tensor,
    embeddings: Tensor,
    labels: dict[str, Tensor],
    specs: Sequence[ConditionSpec],
    num_queries: int = 512,
    seed: int = 0,
) -> dict[tuple[str, str, str], dict[str, float]]:
    """Run the benchmark on one labelled split, each image a query against all the others.

    Args:
        model: the conditioned model's functions.
        inputs: ``(G, ...)`` what ``model.condition`` takes for each gallery image (tower
            features, or images for token conditioning).
        embeddings: ``(G, E)`` the unconditioned image embeddings.
        labels: ``{attribute: (G,) class}`` for every spec's attribute.
        specs: the conditions and their phrasings.
        num_queries: the first ``num_queries`` images are the queries.
        seed: the triplets' draw.

    Returns:
        ``{(condition, phrasing, scorer): {"R@1", "R@5", "mAP", "triplet"}}``.
    """
    gallery = len(embeddings)
    queries = torch.arange(min(num_queries, gallery), device=embeddings.device)
    image = F.normalize(embeddings.float(), dim=-1)  # (G, E)
    self_mask = F.one_hot(queries, gallery).bool()  # (Q, G)
    generator = torch.Generator().manual_seed(seed)
    results = {}
    for spec in specs:
        y = labels[spec.name]
        relevant = (y[queries, None] == y[None]) & ~self_mask  # (Q, G)
        pos, neg, has_both = _triplets(relevant, ~self_mask, generator)
        texts = spec.texts(y[queries])
        unique, which = distinct_texts(texts)  # U texts, (Q,) each query's
        text = F.normalize(model.embed_text(unique).float(), dim=-1)  # (U, E)
        which = which.to(image.device)
        scores = {
            "conditioned": _conditioned_scores(model, inputs, queries, text, which),
            "image": image[queries] @ image.T,
            "text": text[which] @ image.T,
            "image+text": F.normalize(image[queries] + text[which], dim=-1) @ image.T,
        }
        for scorer, s in scores.items():
            s = s.masked_fill(self_mask, float("-inf"))
            metrics = ranked_retrieval(s, relevant)
            rows = torch.arange(len(queries), device=s.device)
            correct = (s[rows, pos] > s[rows, neg])[has_both].float()
            results[(spec.name, spec.phrasing, scorer)] = {
                "R@1": metrics["R@1"].mean().item(),
                "R@5": metrics["R@5"].mean().item(),
                "mAP": metrics["AP"].mean().item(),
                "triplet": correct.mean().item() if len(correct) else float("nan"),
            }
    return results


def _conditioned_scores(
    model: ConditionalModel, inputs: Tensor, queries: Tensor, text: Tensor, which: Tensor
) -> Tensor:
    """``(Q, G)`` cosine of each query and every gallery image, both under the query's text."""
    scores = torch.empty(len(queries), len(inputs), device=text.device)
    for u in range(len(text)):
        rows = (which == u).nonzero().squeeze(1)  # queries with text u
        if len(rows) == 0:
            continue
        t = text[u : u + 1]
        gallery = F.normalize(model.condition_gallery(inputs, t).float(), dim=-1)  # (G, D)
        q = model.condition(inputs[queries[rows]], t.expand(len(rows), -1))
        scores[rows] = F.normalize(q.float(), dim=-1) @ gallery.T
    return scores


def mean_over_conditions(
    results: dict[tuple[str, str, str], dict[str, float]],
) -> dict[str, dict[str, float]]:
    """``{scorer: each metric's mean over the (condition, phrasing) rows that have it}``."""
    means: dict[str, dict[str, float]] = {}
    for scorer in SCORERS:
        rows = [m for (_, _, s), m in results.items() if s == scorer]
        keys = dict.fromkeys(k for r in rows for k in r)
        if rows:
            means[scorer] = {
                k: sum(r[k] for r in rows if k in r) / sum(k in r for r in rows) for k in keys
            }
    return means


def conditional_report(
    results: dict[tuple[str, str, str], dict[str, float]], gallery: int, queries: int
) -> str:
    """The benchmark as one table: a block of scorers per condition and phrasing, then means.

    Metrics a row lacks (retrieval, for triplets read from a manifest) print as ``-``.
    """
    title = "Conditional retrieval (gallery {}, {} queries) and triplet accuracy"
    lines = [
        title.format(gallery, queries) if gallery else "Conditional triplet accuracy",
        f"{'condition':<12}{'phrasing':<10}{'scorer':<13}{'R@1':>7}{'R@5':>7}{'mAP':>7}"
        f"{'triplet':>9}{'mAP gain':>10}",
    ]
    groups = list(dict.fromkeys((c, p) for c, p, _ in results))
    blocks = [
        ((c, p), {s: results[(c, p, s)] for s in SCORERS if (c, p, s) in results})
        for c, p in groups
    ]
    blocks.append((("mean", ""), mean_over_conditions(results)))
    nan = float("nan")
    for (condition, phrasing), by_scorer in blocks:
        base = by_scorer.get("image", {}).get("mAP", nan)
        for i, (scorer, m) in enumerate(by_scorer.items()):
            head = f"{condition:<12}{phrasing:<10}" if i == 0 else " " * 22
            cells = [_cell(m.get(k, nan), w) for k, w in (("R@1", 7), ("R@5", 7), ("mAP", 7))]
            gain = m.get("mAP", nan) - base
            lines.append(
                f"{head}{scorer:<13}{''.join(cells)}{_cell(m.get('triplet', nan), 9)}"
                f"{_cell(gain, 10, signed=True)}"
            )
    return "\n".join(lines)


def _cell(value: float, width: int, signed: bool = False) -> str:
    if math.isnan(value):
        return f"{'-':>{width}}"
    return f"{value:>+{width}.3f}" if signed else f"{value:>{width}.3f}"


__all__ = [
    "SCORERS",
    "ConditionSpec",
    "ConditionalModel",
    "conditional_benchmark",
    "conditional_report",
    "distinct_texts",
    "mean_over_conditions",
    "ranked_retrieval",
]
