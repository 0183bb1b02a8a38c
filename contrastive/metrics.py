"""Representation-quality metrics: alignment, uniformity, effective rank and weighted kNN.

Each metric comes twice, in the torchmetrics shape:

* a functional form, a pure function of tensors (``alignment``, ``uniformity``,
  ``effective_rank``, ``knn_predict`` / ``knn_accuracy``), differentiable where that makes sense;
* a ``torchmetrics.Metric`` class (``Alignment``, ``Uniformity``, ``EffectiveRank``,
  ``KNNAccuracy``) whose states are declared with their DDP reduction and whose ``compute`` runs
  the same code as the functional form, with bounded memory.

Every input is cast to float32 (float64 where a decomposition needs it) before any arithmetic,
so the result does not depend on the Trainer's precision. ``Alignment`` and ``EffectiveRank``
keep float64 states, so they cannot live on an MPS device (which has no float64).

In DDP every rank should call ``update`` at least once before ``compute`` (Lightning's
``DistributedSampler`` guarantees it); a rank that saw no data cannot join the state sync.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

__all__ = [
    "Alignment",
    "EffectiveRank",
    "KNNAccuracy",
    "Uniformity",
    "alignment",
    "effective_rank",
    "knn_accuracy",
    "knn_predict",
    "uniformity",
]

# Added to each normalised singular value before the entropy, as in RankMe (Garrido et al. 2023).
_RANKME_EPS = 1e-7


def _check_matrix(name: str, x: Tensor, min_rows: int = 0) -> None:
    if not isinstance(x, Tensor) or x.ndim != 2:
        got = f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"Expected `{name}` to be a 2-D tensor of shape (N, D), got {got}.")
    if not x.is_floating_point():
        raise ValueError(f"Expected `{name}` to be a floating-point tensor, got dtype {x.dtype}.")
    if x.shape[0] < min_rows:
        raise ValueError(
            f"Expected `{name}` to have at least {min_rows} rows, got shape {tuple(x.shape)}."
        )


def _num_rows(state: list[Tensor] | Tensor) -> int:
    """Rows held by a "cat" state, which is a list before sync and a tensor after it."""
    if isinstance(state, Tensor):
        return state.shape[0]
    return sum(x.shape[0] for x in state)


def _feature_dim(state: list[Tensor] | Tensor) -> int | None:
    """Feature dimension of a 2-D "cat" state, or None when it holds no rows."""
    if isinstance(state, Tensor):
        return state.shape[1] if state.numel() else None
    return state[0].shape[1] if state else None


def _cat_or_none(state: list[Tensor] | Tensor) -> Tensor | None:
    """Concatenate a "cat" state, or return None when it holds no rows."""
    if isinstance(state, list) and len(state) == 0:
        return None
    cat = dim_zero_cat(state)
    return None if cat.numel() == 0 else cat


# ---------------------------------------------------------------------------------------------
# Alignment
# ---------------------------------------------------------------------------------------------


def _alignment_update(z1: Tensor, z2: Tensor, alpha: float) -> tuple[Tensor, int]:
    _check_matrix("z1", z1)
    _check_matrix("z2", z2)
    if z1.shape != z2.shape:
        raise ValueError(
            f"Expected `z1` and `z2` to have the same shape (N, D), got {tuple(z1.shape)} and "
            f"{tuple(z2.shape)}."
        )
    z1 = F.normalize(z1.float(), dim=1)  # (N, D)
    z2 = F.normalize(z2.float(), dim=1)  # (N, D)
    dist = (z1 - z2).norm(p=2, dim=1).pow(alpha)  # (N,)
    return dist.sum(), z1.shape[0]


def _alignment_compute(total: Tensor, count: Tensor | int) -> Tensor:
    if int(count) == 0:
        raise ValueError("Alignment needs at least one positive pair, got 0.")
    return (total / count).float()


def alignment(z1: Tensor, z2: Tensor, alpha: float = 2.0) -> Tensor:
    """Alignment of positive pairs (Wang & Isola, 2020): ``mean_i ||z1_i - z2_i||_2^alpha``.

    Both inputs are L2-normalised along the feature axis here, as the paper defines the metric
    on the unit hypersphere. Lower is better; the value lies in ``[0, 2^alpha]``.

    Args:
        z1: Embeddings of the first views, shape (N, D).
        z2: Embeddings of the second views, shape (N, D); row ``i`` is the positive of ``z1[i]``.
        alpha: Exponent applied to each pair's Euclidean distance; must be positive.

    Returns:
        Scalar float32 tensor, differentiable with respect to ``z1`` and ``z2``.

    Raises:
        ValueError: If the shapes differ, are not 2-D, N is 0, or ``alpha <= 0``.
    """
    if alpha <= 0:
        raise ValueError(f"Expected `alpha` > 0, got {alpha}.")
    return _alignment_compute(*_alignment_update(z1, z2, alpha))


class Alignment(Metric):
    """Alignment of positive pairs (Wang & Isola, 2020), accumulated over batches.

    "Understanding Contrastive Representation Learning through Alignment and Uniformity on the
    Hypersphere", ICML 2020. Keeps a float64 running sum of ``||z1_i - z2_i||^alpha`` and a pair
    count (both "sum" reductions), so the result is exact over any number of batches and
    processes, in constant memory. See :func:`alignment`.

    Args:
        alpha: Exponent applied to each pair's Euclidean distance; must be positive.
        **kwargs: Passed to ``torchmetrics.Metric``.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    total: Tensor
    count: Tensor

    def __init__(self, alpha: float = 2.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if alpha <= 0:
            raise ValueError(f"Expected `alpha` > 0, got {alpha}.")
        self.alpha = alpha
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, z1: Tensor, z2: Tensor) -> None:
        """Add a batch of positive pairs.

        Args:
            z1: Embeddings of the first views, shape (B, D).
            z2: Embeddings of the second views, shape (B, D).
        """
        total, count = _alignment_update(z1.detach(), z2.detach(), self.alpha)
        self.total += total.double()
        self.count += count

    def compute(self) -> Tensor:
        """Return the mean alignment over every pair seen (scalar float32)."""
        return _alignment_compute(self.total, self.count)


# ---------------------------------------------------------------------------------------------
# Uniformity
# ---------------------------------------------------------------------------------------------


def uniformity(z: Tensor, t: float = 2.0) -> Tensor:
    """Uniformity on the hypersphere (Wang & Isola, 2020).

    ``log( mean_{i<j} exp(-t ||z_i - z_j||_2^2) )`` over the ``N(N-1)/2`` distinct pairs, with
    ``z`` L2-normalised along the feature axis here. Computed as a ``logsumexp`` of the
    ``torch.pdist`` distances, which stays finite for any ``t``. Lower (more negative) is better;
    the minimum over unit vectors is bounded below by ``-4t``.

    Args:
        z: Embeddings, shape (N, D) with N >= 2.
        t: Temperature of the Gaussian potential; must be positive.

    Returns:
        Scalar float32 tensor, differentiable with respect to ``z``.

    Raises:
        ValueError: If ``z`` is not 2-D, has fewer than 2 rows, or ``t <= 0``.
    """
    if t <= 0:
        raise ValueError(f"Expected `t` > 0, got {t}.")
    _check_matrix("z", z, min_rows=2)
    z = F.normalize(z.float(), dim=1)  # (N, D)
    sq_dist = torch.pdist(z, p=2).pow(2)  # (N(N-1)/2,)
    return torch.logsumexp(-t * sq_dist, dim=0) - math.log(sq_dist.numel())


class Uniformity(Metric):
    """Uniformity on the hypersphere (Wang & Isola, 2020) over a bounded sample of embeddings.

    "Understanding Contrastive Representation Learning through Alignment and Uniformity on the
    Hypersphere", ICML 2020. Uniformity is a mean over all pairs, so it cannot be accumulated
    exactly in constant memory. This metric keeps the L2-normalised float32 embeddings in a
    "cat" state, but only the **first** ``max_samples`` rows seen by each process since the last
    ``reset``; later rows are ignored (shuffle the evaluation data if its order is not random).
    After DDP sync, ``compute`` therefore sees up to ``world_size * max_samples`` rows, and costs
    ``O(rows^2)`` time and memory for the pairwise distances. See :func:`uniformity`.

    Args:
        t: Temperature of the Gaussian potential; must be positive.
        max_samples: Embeddings kept per process (memory ``max_samples * D * 4`` bytes).
        **kwargs: Passed to ``torchmetrics.Metric``.
    """

    is_differentiable = False
    higher_is_better = False
    # Updating the global state directly in `forward` keeps `max_samples` enforced; the
    # default merge would append the batch after the cap was checked.
    full_state_update = True

    embeddings: list[Tensor] | Tensor

    def __init__(self, t: float = 2.0, max_samples: int = 4096, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if t <= 0:
            raise ValueError(f"Expected `t` > 0, got {t}.")
        if max_samples < 2:
            raise ValueError(
                f"Expected `max_samples` >= 2 (uniformity needs pairs), got {max_samples}."
            )
        self.t = t
        self.max_samples = max_samples
        self.add_state("embeddings", [], dist_reduce_fx="cat")

    def update(self, z: Tensor) -> None:
        """Keep the batch's normalised embeddings, up to ``max_samples`` in total.

        Args:
            z: Embeddings, shape (B, D).
        """
        _check_matrix("z", z)
        room = self.max_samples - _num_rows(self.embeddings)
        if room <= 0:
            return
        z = F.normalize(z[:room].detach().float(), dim=1)  # (min(B, room), D)
        if isinstance(self.embeddings, Tensor):  # a state restored already concatenated
            self.embeddings = [self.embeddings]
        self.embeddings.append(z)

    def compute(self) -> Tensor:
        """Return the uniformity of the kept embeddings (scalar float32)."""
        z = _cat_or_none(self.embeddings)
        if z is None or z.shape[0] < 2:
            got = 0 if z is None else z.shape[0]
            raise ValueError(f"Uniformity needs at least 2 embeddings, got {got}; call update(z).")
        return uniformity(z, self.t)


# ---------------------------------------------------------------------------------------------
# Effective rank
# ---------------------------------------------------------------------------------------------


def _effective_rank_from_singular_values(s: Tensor) -> Tensor:
    s = s.double()  # (K,)
    # Clamping the denominator keeps an all-zero input finite (it gives ~1) instead of NaN.
    p = s / s.sum().clamp_min(torch.finfo(torch.float64).tiny) + _RANKME_EPS  # (K,)
    entropy = -(p * p.log()).sum()
    return entropy.exp().float()


def effective_rank(z: Tensor, center: bool = False) -> Tensor:
    """Effective rank of an embedding matrix (Roy & Vetterli, 2007; RankMe, Garrido et al., 2023).

    ``exp(-sum_k p_k log p_k)`` with ``p_k = s_k / sum(s) + 1e-7`` for the singular values
    ``s`` of the (N, D) matrix, computed in float64. It is ``~D`` for isotropic data with
    ``N >> D`` and ``~1`` for rank-1 (collapsed) data.

    Args:
        z: Embeddings, shape (N, D).
        center: subtract the mean embedding first, i.e. the rank of the covariance spectrum
            (dimensional collapse, Jing et al. 2022). Without it (RankMe) a large common mean,
            as post-ReLU features have, dominates the spectrum and the rank reads ~1.

    Returns:
        Scalar float32 tensor in ``[1, min(N, D)]`` (up to the epsilon), differentiable.

    Raises:
        ValueError: If ``z`` is not 2-D or has no rows.
    """
    _check_matrix("z", z, min_rows=1)
    z = z.double()
    if center:
        z = z - z.mean(dim=0, keepdim=True)  # (N, D)
    return _effective_rank_from_singular_values(torch.linalg.svdvals(z))  # (min(N, D),)


class EffectiveRank(Metric):
    """Effective rank (RankMe, Garrido et al., 2023) accumulated in constant memory.

    "RankMe: Assessing the downstream performance of pretrained self-supervised representations
    by their rank", ICML 2023; the effective rank is from Roy & Vetterli, EUSIPCO 2007. The metric
    accumulates the float64 Gram matrix ``Z^T Z`` (D, D) with a "sum" reduction; its eigenvalues
    are the squared singular values of the concatenated ``Z``, so ``compute`` equals
    :func:`effective_rank` on all the data seen (up to rounding), in ``O(D^2)`` memory.

    The Gram state starts as a scalar zero and takes shape (D, D) at the first ``update``.

    Args:
        center: the rank of the centred embeddings (see :func:`effective_rank`); the metric then
            also sums the embeddings and counts them, and centres the Gram matrix at the end.
        **kwargs: Passed to ``torchmetrics.Metric``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    gram: Tensor
    total: Tensor
    count: Tensor

    def __init__(self, center: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.center = center
        self.add_state("gram", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, z: Tensor) -> None:
        """Add a batch of embeddings.

        Args:
            z: Embeddings, shape (B, D); D must be the same for every batch.
        """
        _check_matrix("z", z)
        if self.gram.ndim == 2 and self.gram.shape[0] != z.shape[1]:
            raise ValueError(
                f"Expected embeddings of dimension {self.gram.shape[0]} as in earlier batches, "
                f"got shape {tuple(z.shape)}."
            )
        z = z.detach().double()  # (B, D); float64 keeps the small eigenvalues meaningful
        self.gram = self.gram + z.T @ z  # (D, D)
        self.total = self.total + z.sum(dim=0)  # (D,)
        self.count = self.count + len(z)

    def compute(self) -> Tensor:
        """Return the effective rank of all embeddings seen (scalar float32)."""
        if self.gram.ndim != 2:
            raise ValueError("EffectiveRank.compute() needs at least one update(z), got none.")
        gram = self.gram
        if self.center:  # sum (z - m)(z - m)^T = Z^T Z - n m m^T with m = total / n
            gram = gram - torch.outer(self.total, self.total) / self.count.clamp_min(1)
        eigenvalues = torch.linalg.eigvalsh(gram)  # (D,)
        singular_values = eigenvalues.clamp_min(0).sqrt()  # (D,)
        return _effective_rank_from_singular_values(singular_values)


def embedding_std(z: Tensor) -> Tensor:
    """Mean per-dimension standard deviation of the L2-normalised embeddings.

    The collapse indicator of SimSiam (Chen & He 2021, sec. 4.1): ``~1/sqrt(D)`` for embeddings
    spread over the sphere, ``0`` when every input maps to the same point.

    Args:
        z: Embeddings, shape (N, D).

    Returns:
        Scalar float32 tensor.
    """
    _check_matrix("z", z, min_rows=1)
    return F.normalize(z.double(), dim=1).std(dim=0, correction=0).mean().float()


class EmbeddingStd(Metric):
    """:func:`embedding_std` accumulated in constant memory (sums of z and z^2, and a count).

    Args:
        **kwargs: Passed to ``torchmetrics.Metric``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    total: Tensor
    total_sq: Tensor
    count: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in ("total", "total_sq"):
            self.add_state(name, torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, z: Tensor) -> None:
        """Add a batch of embeddings, shape (B, D)."""
        _check_matrix("z", z)
        z = F.normalize(z.detach().double(), dim=1)  # (B, D)
        self.total = self.total + z.sum(dim=0)  # (D,)
        self.total_sq = self.total_sq + z.square().sum(dim=0)  # (D,)
        self.count = self.count + len(z)

    def compute(self) -> Tensor:
        """Return the mean per-dimension standard deviation (scalar float32)."""
        if self.count == 0:
            raise ValueError("EmbeddingStd.compute() needs at least one update(z), got none.")
        mean = self.total / self.count  # (D,)
        variance = (self.total_sq / self.count - mean.square()).clamp_min(0)  # (D,)
        return variance.sqrt().mean().float()


# ---------------------------------------------------------------------------------------------
# Weighted kNN
# ---------------------------------------------------------------------------------------------


def _normalise_num_classes(num_classes: int | Sequence[int]) -> int | tuple[int, ...]:
    if isinstance(num_classes, int):
        values: tuple[int, ...] = (num_classes,)
        out: int | tuple[int, ...] = num_classes
    else:
        values = out = tuple(num_classes)
        if len(values) == 0:
            raise ValueError("Expected `num_classes` to be an int or a non-empty sequence of ints.")
    for c in values:
        if not isinstance(c, int) or isinstance(c, bool) or c < 1:
            raise ValueError(f"Expected every entry of `num_classes` to be an int >= 1, got {c!r}.")
    return out


def _check_labels(name: str, labels: Tensor, num_classes: int | Sequence[int], rows: int) -> None:
    """Check a label tensor's shape against ``num_classes``: (N,) for an int, (N, A) for A ints."""
    if isinstance(num_classes, int):
        expected = f"({rows},) because `num_classes` is an int"
        ok = labels.ndim == 1 and labels.shape[0] == rows
    else:
        expected = (
            f"({rows}, {len(num_classes)}) because `num_classes` has {len(num_classes)} entries"
        )
        ok = labels.ndim == 2 and labels.shape == (rows, len(num_classes))
    if not ok:
        raise ValueError(f"Expected `{name}` of shape {expected}, got {tuple(labels.shape)}.")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"Expected `{name}` to have an integer dtype, got {labels.dtype}.")


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

    Raises:
        ValueError: On inconsistent shapes, an empty bank, labels out of range or bad settings.
    """
    _check_matrix("query", query)
    _check_matrix("bank", bank, min_rows=1)
    if query.shape[1] != bank.shape[1]:
        raise ValueError(
            f"Expected `query` and `bank` to share the feature dimension, got {tuple(query.shape)} "
            f"and {tuple(bank.shape)}."
        )
    num_classes = _normalise_num_classes(num_classes)
    _check_labels("bank_labels", bank_labels, num_classes, bank.shape[0])
    if k < 1:
        raise ValueError(f"Expected `k` >= 1, got {k}.")
    if temperature <= 0:
        raise ValueError(f"Expected `temperature` > 0, got {temperature}.")
    if chunk_size < 1:
        raise ValueError(f"Expected `chunk_size` >= 1, got {chunk_size}.")

    per_attribute = (num_classes,) if isinstance(num_classes, int) else num_classes
    labels = bank_labels.long().reshape(bank.shape[0], len(per_attribute))  # (M, A)
    low, high = labels.min(dim=0).values.tolist(), labels.max(dim=0).values.tolist()
    for a, c in enumerate(per_attribute):
        if low[a] < 0 or high[a] >= c:
            raise ValueError(
                f"Expected labels of attribute {a} in [0, {c}), "
                f"got values in [{low[a]}, {high[a]}]."
            )
    labels = labels.to(query.device)
    k = min(k, bank.shape[0])
    num_queries = query.shape[0]

    # Matmul under autocast would run in bf16/fp16, too coarse to rank near neighbours.
    with torch.autocast(device_type=query.device.type, enabled=False):
        bank = F.normalize(bank.to(query.device, torch.float32), dim=1)  # (M, D)
        chunks = []
        for start in range(0, num_queries, chunk_size):
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

    Raises:
        ValueError: On inconsistent shapes, no queries, or an invalid bank (see ``knn_predict``).
    """
    _check_matrix("query", query, min_rows=1)
    num_classes = _normalise_num_classes(num_classes)
    _check_labels("query_labels", query_labels, num_classes, query.shape[0])
    preds = knn_predict(query, bank, bank_labels, num_classes, k, temperature, chunk_size)
    return (preds == query_labels.to(preds.device)).float().mean(dim=0)  # () or (A,)


class KNNAccuracy(Metric):
    """Weighted kNN top-1 accuracy (Wu et al., 2018, InstDisc), as used to evaluate DINO.

    "Unsupervised Feature Learning via Non-Parametric Instance Discrimination", CVPR 2018.
    Fill the bank (typically training-set features) with ``update_bank`` and the queries
    (validation features) with ``update``, then ``compute``; the order of the calls does not
    matter. All four states are "cat" states: features are kept as float32 as given (they are
    normalised in ``compute``), labels as int64. After DDP sync every rank classifies all queries
    against the bank of all ranks.

    Memory is bounded per process: at most ``max_bank_size`` bank rows and ``max_query_size``
    query rows (each ``rows * D * 4`` bytes, e.g. 512 MiB for 65536 x 2048); exceeding either
    raises ``ValueError``. After sync a rank holds up to ``world_size`` times that, and
    ``compute`` needs a further ``chunk_size * world_size * max_bank_size * 4`` bytes.

    ``forward`` is not supported (a batch alone has no bank): call ``update`` and ``compute``.

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

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    bank_features: list[Tensor] | Tensor
    bank_labels: list[Tensor] | Tensor
    query_features: list[Tensor] | Tensor
    query_labels: list[Tensor] | Tensor

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
        super().__init__(**kwargs)
        self.num_classes = _normalise_num_classes(num_classes)
        for name, value in [
            ("k", k),
            ("max_bank_size", max_bank_size),
            ("max_query_size", max_query_size),
            ("chunk_size", chunk_size),
        ]:
            if value < 1:
                raise ValueError(f"Expected `{name}` >= 1, got {value}.")
        if temperature <= 0:
            raise ValueError(f"Expected `temperature` > 0, got {temperature}.")
        self.k = k
        self.temperature = temperature
        self.max_bank_size = max_bank_size
        self.max_query_size = max_query_size
        self.chunk_size = chunk_size
        self.add_state("bank_features", [], dist_reduce_fx="cat")
        self.add_state("bank_labels", [], dist_reduce_fx="cat")
        self.add_state("query_features", [], dist_reduce_fx="cat")
        self.add_state("query_labels", [], dist_reduce_fx="cat")

    def _append(self, kind: str, features: Tensor, labels: Tensor, limit: int) -> None:
        _check_matrix("features", features)
        _check_labels("labels", labels, self.num_classes, features.shape[0])
        feature_state, label_state = f"{kind}_features", f"{kind}_labels"
        stored = getattr(self, feature_state)
        total = _num_rows(stored) + features.shape[0]
        if total > limit:
            raise ValueError(
                f"KNNAccuracy {kind} would hold {total} rows on this process, more than "
                f"max_{kind}_size={limit}; raise `max_{kind}_size` (memory: rows x D x 4 bytes) "
                f"or subsample the {kind}."
            )
        for other in ("bank_features", "query_features"):
            dim = _feature_dim(getattr(self, other))
            if dim is not None and dim != features.shape[1]:
                raise ValueError(
                    f"Expected features of dimension {dim} as already stored, got shape "
                    f"{tuple(features.shape)}."
                )
        features, labels = features.detach().float(), labels.detach().long()
        if self.compute_on_cpu:
            features, labels = features.cpu(), labels.cpu()
        for name, value in ((feature_state, features), (label_state, labels)):
            state = getattr(self, name)
            if isinstance(state, Tensor):  # a state restored already concatenated
                setattr(self, name, [state])
            getattr(self, name).append(value)

    def update_bank(self, features: Tensor, labels: Tensor) -> None:
        """Append reference samples to the bank.

        Args:
            features: Bank embeddings, shape (B, D).
            labels: Their labels, shape (B,) or (B, A) following ``num_classes``.

        Raises:
            ValueError: If the bank would exceed ``max_bank_size`` rows on this process.
        """
        # Not wrapped by torchmetrics like `update`, so drop a cached result by hand.
        self._computed = None
        self._append("bank", features, labels, self.max_bank_size)

    def update(self, features: Tensor, labels: Tensor) -> None:
        """Append queries to classify at ``compute``.

        Args:
            features: Query embeddings, shape (B, D).
            labels: Their true labels, shape (B,) or (B, A) following ``num_classes``.

        Raises:
            ValueError: If the queries would exceed ``max_query_size`` rows on this process.
        """
        self._append("query", features, labels, self.max_query_size)

    def compute(self) -> Tensor:
        """Return the kNN accuracy of all queries: a scalar, or shape (A,) for A attributes."""
        bank = _cat_or_none(self.bank_features)
        if bank is None:
            raise ValueError(
                "KNNAccuracy has an empty bank; "
                "call update_bank(features, labels) before compute()."
            )
        query = _cat_or_none(self.query_features)
        if query is None:
            raise ValueError(
                "KNNAccuracy has no queries; call update(features, labels) before compute()."
            )
        return knn_accuracy(
            query,
            dim_zero_cat(self.query_labels),
            bank,
            dim_zero_cat(self.bank_labels),
            self.num_classes,
            k=self.k,
            temperature=self.temperature,
            chunk_size=self.chunk_size,
        )

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Not supported: a single batch has no bank to vote with."""
        raise NotImplementedError(
            "KNNAccuracy has no per-batch value; call update_bank(...), update(...) and compute()."
        )
