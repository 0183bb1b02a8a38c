"""Image-text evaluation: zero-shot classification and cross-modal retrieval.

In the torchmetrics shape, like :mod:`contrastive.metrics`: functional forms
(:func:`zero_shot_weights`, :func:`retrieval_ranks`, :func:`retrieval_metrics`) and a
``torchmetrics.Metric`` (:class:`CrossModalRetrieval`) whose ``compute`` runs the same code in
memory bounded by ``chunk_size x N`` (the ``N x N`` similarity matrix is never held).

Zero-shot accuracy itself is torchmetrics' ``MulticlassAccuracy`` over the logits of
:func:`zero_shot_logits`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from contrastive import distributed

__all__ = [
    "CrossModalRetrieval",
    "retrieval_metrics",
    "retrieval_ranks",
    "text_ids",
    "zero_shot_logits",
    "zero_shot_weights",
]


def zero_shot_weights(
    encode_text: Callable[[list[str]], Tensor],
    class_names: Sequence[str],
    templates: Sequence[str],
) -> Tensor:
    """A zero-shot classifier from class names and prompt templates (Radford et al. 2021, 3.1.4).

    Each class's prompts (``template.format(name)``) are embedded, normalised, averaged over the
    templates and normalised again.

    Args:
        encode_text: ``list[str] -> (len, D)`` text embeddings.
        class_names: the ``C`` class names, in label order.
        templates: prompts with one ``{}`` for the class name, e.g. ``"a photo of a {}."``.

    Returns:
        ``(C, D)`` unit-norm class embeddings, float32.
    """
    if not class_names or not templates:
        raise ValueError(
            f"expected class names and templates, got {len(class_names)} and {len(templates)}"
        )
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise ValueError(f"prompt templates need a '{{}}' for the class name, got {bad}")
    prompts = [template.format(name) for name in class_names for template in templates]
    emb = F.normalize(encode_text(prompts).float(), dim=1)  # (C * T, D)
    emb = emb.view(len(class_names), len(templates), -1).mean(dim=1)  # (C, D)
    return F.normalize(emb, dim=1)


def zero_shot_logits(images: Tensor, weights: Tensor) -> Tensor:
    """Cosine similarity of ``(N, D)`` images to ``(C, D)`` class embeddings: ``(N, C)``."""
    return F.normalize(images.float(), dim=1) @ weights.float().T


def text_ids(texts: Sequence[str]) -> Tensor:
    """``(N,)`` int64 ids equal exactly for equal strings, the same on every process and run.

    (Python's ``hash`` is salted per process, so ranks would disagree.)
    """
    digests = [hashlib.blake2b(t.encode(), digest_size=8).digest() for t in texts]
    return torch.tensor([int.from_bytes(d, "little", signed=True) for d in digests])


def retrieval_ranks(
    queries: Tensor,
    candidates: Tensor,
    query_groups: Tensor | None = None,
    candidate_groups: Tensor | None = None,
    chunk_size: int = 1024,
) -> Tensor:
    """0-based rank of the best relevant candidate of each query, by cosine similarity.

    Candidate ``j`` is relevant to query ``i`` when their groups are equal (by default the
    group is the row index: query ``i`` is paired with candidate ``i``). The rank counts the
    irrelevant candidates scoring at least as high as the best relevant one, so ties count
    against the model and a collapsed embedding scores at the bottom, not the top.

    Args:
        queries: ``(N, D)`` embeddings (e.g. images).
        candidates: ``(M, D)`` embeddings (e.g. texts).
        query_groups: ``(N,)`` int ids; ``arange(N)`` by default (then ``M == N``).
        candidate_groups: ``(M,)`` int ids; ``arange(M)`` by default.
        chunk_size: queries per chunk: memory is ``chunk_size x M``.

    Returns:
        ``(N,)`` int64 ranks; ``M`` for a query with no relevant candidate.
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
    ranks = []
    for start in range(0, len(q), chunk_size):
        sim = q[start : start + chunk_size] @ c.T  # (n, M)
        relevant = query_groups[start : start + chunk_size, None] == candidate_groups[None, :]
        best = sim.masked_fill(~relevant, float("-inf")).max(dim=1).values  # (n,)
        above = (sim >= best[:, None]) & ~relevant  # (n, M)
        ranks.append(torch.where(relevant.any(dim=1), above.sum(dim=1), len(c)))
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long, device=device)


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
        ranks = retrieval_ranks(queries, candidates, groups, groups, chunk_size)
        for k in ks:
            results[f"{name}/R@{k}"] = (ranks < k).float().mean()
        results[f"{name}/median_rank"] = torch.quantile(ranks.float(), 0.5) + 1
    return results


class CrossModalRetrieval(Metric):
    """:func:`retrieval_metrics` over an evaluation set, accumulated batch by batch.

    Keeps the ``(N, D)`` embeddings (gathered across ranks with ``cat``); ``compute`` ranks in
    chunks, so the ``N x N`` similarities are never held.

    Args:
        ks: the k of recall@k.
        chunk_size: queries per chunk in ``compute``.
    """

    full_state_update = False

    def __init__(self, ks: Sequence[int] = (1, 5, 10), chunk_size: int = 1024, **kwargs) -> None:
        super().__init__(**kwargs)
        self.ks = tuple(ks)
        self.chunk_size = chunk_size
        self.add_state("images", [], dist_reduce_fx="cat")
        self.add_state("texts", [], dist_reduce_fx="cat")
        self.add_state("groups", [], dist_reduce_fx="cat")

    def update(self, images: Tensor, texts: Tensor, groups: Tensor | None = None) -> None:
        """Add ``(B, D)`` paired embeddings and, optionally, ``(B,)`` caption ids."""
        if images.shape != texts.shape or images.ndim != 2:
            raise ValueError(
                f"expected paired (B, D) images and texts, got {tuple(images.shape)} and "
                f"{tuple(texts.shape)}"
            )
        if groups is None:  # ids unique across ranks: -1 - (rank + world * row seen here)
            rows = sum(len(x) for x in self.images) + torch.arange(len(images))
            groups = -1 - (distributed.rank() + distributed.world_size() * rows)
        self.images.append(F.normalize(images.detach().float(), dim=1))
        self.texts.append(F.normalize(texts.detach().float(), dim=1))
        self.groups.append(groups.to(self.device, torch.long))

    def compute(self) -> dict[str, Tensor]:
        images, texts = dim_zero_cat(self.images), dim_zero_cat(self.texts)
        groups = dim_zero_cat(self.groups)
        return retrieval_metrics(images, texts, groups, self.ks, self.chunk_size)
