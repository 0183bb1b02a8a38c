"""Ranked retrieval: the one ranking behind image-text retrieval and the conditional benchmark.

:func:`rank_relevant` ranks each query's candidates by score and reports where the first
relevant one lands and the average precision; ties count against the model (among equal scores
the irrelevant candidates rank first), so a collapsed embedding scores at the bottom, not the
top. :func:`ranked_retrieval` runs it on cosine similarities chunk by chunk (memory
``chunk_size x M``); :func:`retrieval_metrics` and :class:`CrossModalRetrieval` give image-to-text
and text-to-image recall@k and median rank; the conditional benchmark
(:mod:`contrastive.evaluation.conditional_benchmark`) ranks its own score matrices with
:func:`rank_relevant`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from contrastive import distributed
from contrastive.evaluation.common import append, cat_or_none, dataset_order, num_rows

__all__ = [
    "CrossModalRetrieval",
    "Ranking",
    "rank_relevant",
    "ranked_retrieval",
    "retrieval_metrics",
    "text_ids",
]


class Ranking(NamedTuple):
    """Per query: ``first``, the 0-based rank of the first relevant candidate (the number of
    candidates, for a query with none), and ``ap``, the average precision (0 with none)."""

    first: Tensor
    ap: Tensor

    def recall_at(self, k: int) -> Tensor:
        """``(Q,)`` 1.0 where a relevant candidate is among the top ``k``."""
        return (self.first < k).float()


def rank_relevant(scores: Tensor, relevant: Tensor) -> Ranking:
    """Rank every query's candidates by score, ties against the model.

    Args:
        scores: ``(Q, G)``, higher is more similar; ``-inf`` marks an excluded candidate (the
            query itself), which must not be relevant.
        relevant: ``(Q, G)`` bool.
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
    first = torch.where(total > 0, hits.argmax(dim=1), hits.shape[1])  # (Q,)
    return Ranking(first, (hits * cum / ranks).sum(1) / total.clamp(min=1))


def ranked_retrieval(
    queries: Tensor,
    candidates: Tensor,
    query_groups: Tensor | None = None,
    candidate_groups: Tensor | None = None,
    chunk_size: int = 1024,
) -> Ranking:
    """:func:`rank_relevant` of cosine similarities, ``chunk_size`` queries at a time.

    Candidate ``j`` is relevant to query ``i`` when their groups are equal (by default the
    group is the row index: query ``i`` is paired with candidate ``i``).

    Args:
        queries: ``(N, D)`` embeddings (e.g. images).
        candidates: ``(M, D)`` embeddings (e.g. texts).
        query_groups: ``(N,)`` int ids; ``arange(N)`` by default.
        candidate_groups: ``(M,)`` int ids; ``arange(M)`` by default.
        chunk_size: queries per chunk: memory ``chunk_size x M``.
    """
    if queries.ndim != 2 or candidates.ndim != 2 or queries.shape[1] != candidates.shape[1]:
        raise ValueError(
            f"expected (N, D) queries and (M, D) candidates, got {tuple(queries.shape)} and "
            f"{tuple(candidates.shape)}"
        )
    device = queries.device
    if query_groups is None:
        query_groups = torch.arange(len(queries), device=device)
    if candidate_groups is None:
        candidate_groups = torch.arange(len(candidates), device=device)
    q = F.normalize(queries.float(), dim=1)
    c = F.normalize(candidates.float(), dim=1)
    parts = []
    for start in range(0, len(q), chunk_size):
        sim = q[start : start + chunk_size] @ c.T  # (n, M)
        relevant = query_groups[start : start + chunk_size, None] == candidate_groups[None, :]
        parts.append(rank_relevant(sim, relevant))
    if not parts:
        empty = torch.zeros(0, device=device)
        return Ranking(empty.long(), empty)
    return Ranking(torch.cat([p.first for p in parts]), torch.cat([p.ap for p in parts]))


def text_ids(texts: Sequence[str]) -> Tensor:
    """``(N,)`` int64 ids equal exactly for equal strings, the same on every process and run.

    (Python's ``hash`` is salted per process, so ranks would disagree.)
    """
    digests = [hashlib.blake2b(t.encode(), digest_size=8).digest() for t in texts]
    return torch.tensor([int.from_bytes(d, "little", signed=True) for d in digests])


def retrieval_metrics(
    images: Tensor,
    texts: Tensor,
    groups: Tensor | None = None,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
) -> dict[str, Tensor]:
    """Image-to-text and text-to-image recall@k and median rank of paired embeddings.

    Args:
        images: ``(N, D)`` image embeddings.
        texts: ``(N, D)`` the embeddings of their captions, row for row.
        groups: ``(N,)`` caption ids (see :func:`text_ids`): rows with equal captions are
            relevant to each other's queries. ``None``: only the paired row is.
        ks: the k of recall@k.
        chunk_size: queries per chunk (memory ``chunk_size x N``).

    Returns:
        ``{"i2t/R@1": ..., "i2t/median_rank": ..., "t2i/R@1": ..., ...}``, floats in tensors;
        recalls in [0, 1], median ranks 1-based (1 is best), as in the retrieval literature.
    """
    if images.shape != texts.shape:
        raise ValueError(
            f"expected paired images and texts of one shape, got {tuple(images.shape)} and "
            f"{tuple(texts.shape)}"
        )
    results = {}
    for name, queries, candidates in (("i2t", images, texts), ("t2i", texts, images)):
        ranking = ranked_retrieval(queries, candidates, groups, groups, chunk_size)
        for k in ks:
            results[f"{name}/R@{k}"] = ranking.recall_at(k).mean()
        results[f"{name}/median_rank"] = torch.quantile(ranking.first.float(), 0.5) + 1
    return results


class CrossModalRetrieval(Metric):
    """:func:`retrieval_metrics` over an evaluation set, accumulated batch by batch.

    Keeps the normalised ``(N, D)`` image and text embeddings ("cat" states, gathered across
    ranks), at most ``max_samples`` pairs per process: later pairs are counted in ``dropped``
    (a "sum" state) and left out, since recall depends on how many candidates there are.
    ``compute`` ranks in chunks, so the ``N x N`` similarities are never held. With dataset ids
    the gathered pairs are put back in dataset order and a ``DistributedSampler``'s padding is
    dropped, so two processes give one process's result.

    Args:
        ks: the k of recall@k.
        chunk_size: queries per chunk in ``compute``.
        max_samples: pairs kept per process.
    """

    full_state_update = False

    def __init__(
        self,
        ks: Sequence[int] = (1, 5, 10),
        chunk_size: int = 1024,
        max_samples: int = 16384,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if max_samples < 1:
            raise ValueError(f"Expected `max_samples` >= 1, got {max_samples}.")
        self.ks, self.chunk_size, self.max_samples = tuple(ks), chunk_size, max_samples
        for name in ("images", "texts", "groups", "ids"):
            self.add_state(name, [], dist_reduce_fx="cat")
        self.add_state("dropped", torch.tensor(0), dist_reduce_fx="sum")

    def update(
        self, images: Tensor, texts: Tensor, groups: Tensor | None = None, ids: Tensor | None = None
    ) -> None:
        """Add ``(B, D)`` paired embeddings, optionally their ``(B,)`` caption ids (equal
        captions match each other) and ``(B,)`` dataset ids."""
        if images.shape != texts.shape or images.ndim != 2:
            raise ValueError(
                f"expected paired (B, D) images and texts, got {tuple(images.shape)} and "
                f"{tuple(texts.shape)}"
            )
        seen = num_rows(self.images)
        room = max(0, self.max_samples - seen)
        self.dropped += len(images) - min(room, len(images))
        if room == 0:
            return
        images, texts = images[:room], texts[:room]
        if groups is None:  # ids unique across ranks: -1 - (rank + world * row seen here)
            rows = seen + torch.arange(len(images))
            groups = -1 - (distributed.rank() + distributed.world_size() * rows)
        append(self, "images", F.normalize(images.detach().float(), dim=1))
        append(self, "texts", F.normalize(texts.detach().float(), dim=1))
        append(self, "groups", groups[:room].to(self.device, torch.long))
        if ids is not None:
            append(self, "ids", ids[:room].to(self.device, torch.long))

    def compute(self) -> dict[str, Tensor]:
        """``retrieval_metrics`` of every pair kept (see the class docstring)."""
        images, texts = dim_zero_cat(self.images), dim_zero_cat(self.texts)
        groups, ids = dim_zero_cat(self.groups), cat_or_none(self.ids)
        if ids is not None:
            keep = dataset_order(ids)
            images, texts, groups = images[keep], texts[keep], groups[keep]
        return retrieval_metrics(images, texts, groups, self.ks, self.chunk_size)
