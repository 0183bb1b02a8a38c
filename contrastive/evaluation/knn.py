"""Weighted kNN classification of held-out queries against a bank of labelled embeddings.

What is *near* in the embedding: a query takes the labels of its most similar bank images. The
functional forms (:func:`knn_predict`, :func:`knn_accuracy`) and the metric
(:class:`KNNAccuracy`) classify several label fields at once from one neighbour search.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from contrastive.evaluation.common import (
    BankQueryMetric,
    check_label_range,
    check_labels,
    check_matrix,
    check_query_bank,
    normalise_num_classes,
)

__all__ = ["KNNAccuracy", "knn_accuracy", "knn_predict"]


def knn_predict(
    query: Tensor,
    bank: Tensor,
    bank_labels: Tensor,
    num_classes: int | Sequence[int],
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> Tensor:
    """Weighted kNN classification (Wu et al., 2018, InstDisc; as in DINO's evaluation).

    Both ``query`` and ``bank`` are L2-normalised, so similarity is the cosine. Each query takes
    its ``k`` most similar bank rows (``k`` is clamped to the bank size); neighbour ``j`` votes for
    its label with weight ``exp(sim_j / temperature)``; the prediction is the class with the
    largest summed weight (ties go to the smallest class index). The weights are computed as
    ``exp((sim_j - max_sim) / temperature)``, a per-query rescaling that changes no prediction but
    keeps small temperatures from overflowing.

    Queries are processed ``chunk_size`` at a time, so peak memory is ``O(chunk_size * M)``
    besides the inputs. With labels of shape (M, A), the A attributes share the same neighbour
    search and each gets its own vote. Runs in float32 with autocast disabled.

    Args:
        query: Query embeddings, shape (N, D).
        bank: Bank (reference) embeddings, shape (M, D) with M >= 1.
        bank_labels: Bank labels, shape (M,) when ``num_classes`` is an int, or (M, A) when it is
            a sequence of A ints; values in ``[0, num_classes[a])``.
        num_classes: Number of classes, or one number per attribute.
        k: Number of neighbours; must be >= 1.
        temperature: Softness of the vote; must be positive. Small values approach 1-NN.
        chunk_size: Queries per similarity block; must be >= 1.

    Returns:
        Long tensor of predicted classes, shape (N,) or (N, A), on ``query``'s device.
    """
    check_query_bank(query, bank)
    num_classes = normalise_num_classes(num_classes)
    check_labels("bank_labels", bank_labels, num_classes, bank.shape[0])
    if k < 1:
        raise ValueError(f"Expected `k` >= 1, got {k}.")
    if temperature <= 0:
        raise ValueError(f"Expected `temperature` > 0, got {temperature}.")
    if chunk_size < 1:
        raise ValueError(f"Expected `chunk_size` >= 1, got {chunk_size}.")

    per_attribute = (num_classes,) if isinstance(num_classes, int) else num_classes
    labels = check_label_range(bank_labels, num_classes).to(query.device)  # (M, A)
    k = min(k, bank.shape[0])
    # Matmul under autocast would run in bf16/fp16, too coarse to rank near neighbours.
    with torch.autocast(device_type=query.device.type, enabled=False):
        bank = F.normalize(bank.to(query.device, torch.float32), dim=1)  # (M, D)
        chunks = []
        for start in range(0, query.shape[0], chunk_size):
            q = F.normalize(query[start : start + chunk_size].float(), dim=1)  # (C, D)
            sim = q @ bank.T  # (C, M)
            top_sim, top_idx = sim.topk(k, dim=1)  # (C, k), sorted descending
            weights = ((top_sim - top_sim[:, :1]) / temperature).exp()  # (C, k)
            neighbour_labels = labels[top_idx]  # (C, k, A)
            votes = []
            for a, c in enumerate(per_attribute):
                scores = weights.new_zeros(q.shape[0], c)  # (C, c)
                scores.scatter_add_(1, neighbour_labels[..., a], weights)
                votes.append(scores.argmax(dim=1))  # (C,)
            chunks.append(torch.stack(votes, dim=1))  # (C, A)
    preds = (
        torch.cat(chunks)
        if chunks
        else torch.empty(0, len(per_attribute), dtype=torch.long, device=query.device)
    )  # (N, A)
    return preds[:, 0] if isinstance(num_classes, int) else preds


def knn_accuracy(
    query: Tensor,
    query_labels: Tensor,
    bank: Tensor,
    bank_labels: Tensor,
    num_classes: int | Sequence[int],
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> Tensor:
    """Top-1 accuracy of weighted kNN classification; see :func:`knn_predict`.

    Args:
        query: Query embeddings, shape (N, D) with N >= 1.
        query_labels: True labels of the queries, shape (N,) or (N, A), matching ``bank_labels``.
        bank: Bank embeddings, shape (M, D).
        bank_labels: Bank labels, shape (M,) or (M, A).
        num_classes: Number of classes, or one number per attribute.
        k: Number of neighbours.
        temperature: Softness of the vote.
        chunk_size: Queries per similarity block.

    Returns:
        Float32 accuracy in ``[0, 1]``: a scalar for 1-D labels, shape (A,) for 2-D labels.
    """
    check_matrix("query", query, min_rows=1)
    num_classes = normalise_num_classes(num_classes)
    check_labels("query_labels", query_labels, num_classes, query.shape[0])
    preds = knn_predict(query, bank, bank_labels, num_classes, k, temperature, chunk_size)
    return (preds == query_labels.to(preds.device)).float().mean(dim=0)  # () or (A,)


class KNNAccuracy(BankQueryMetric):
    """Weighted kNN top-1 accuracy (Wu et al., "Unsupervised Feature Learning via Non-Parametric
    Instance Discrimination", CVPR 2018), as used to evaluate DINO.

    Fill the bank (typically training-set features) with ``update_bank`` and the queries
    (held-out features) with ``update``, then ``compute``; the order of the calls does not
    matter. After a DDP sync every rank classifies all queries against the bank of all ranks.
    Memory bounds and dataset ids as in :class:`~contrastive.evaluation.common.BankQueryMetric`;
    ``compute`` needs a further ``chunk_size * world_size * max_bank_size * 4`` bytes.

    Args:
        num_classes: Number of classes (labels (B,)), or a sequence of A numbers for A attributes
            classified at once (labels (B, A)).
        k: Number of neighbours; 20 as in InstDisc and DINO.
        temperature: Vote temperature; 0.07 as in InstDisc and DINO.
        max_bank_size: Bank rows kept per process.
        max_query_size: Query rows kept per process.
        chunk_size: Queries per similarity block in ``compute``.
        **kwargs: Passed to ``torchmetrics.Metric``.
    """

    def __init__(
        self,
        num_classes: int | Sequence[int],
        k: int = 20,
        temperature: float = 0.07,
        max_bank_size: int = 65536,
        max_query_size: int = 65536,
        chunk_size: int = 1024,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes, max_bank_size, max_query_size, **kwargs)
        for name, value in (("k", k), ("chunk_size", chunk_size)):
            if value < 1:
                raise ValueError(f"Expected `{name}` >= 1, got {value}.")
        if temperature <= 0:
            raise ValueError(f"Expected `temperature` > 0, got {temperature}.")
        self.k, self.temperature, self.chunk_size = k, temperature, chunk_size

    def compute(self) -> Tensor:
        """The kNN accuracy of all queries: a scalar, or shape (A,) for A attributes."""
        bank, query = self.stored()
        return knn_accuracy(
            query.features,
            query.labels,
            bank.features,
            bank.labels,
            self.num_classes,
            k=self.k,
            temperature=self.temperature,
            chunk_size=self.chunk_size,
        )
