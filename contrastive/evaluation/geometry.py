"""Embedding geometry: alignment, uniformity, RankMe (as published and centred), embedding std.

Each comes twice, in the torchmetrics shape: a functional form (a pure function of tensors,
differentiable where that makes sense) and a ``torchmetrics.Metric`` whose states are declared
with their DDP reduction and whose ``compute`` runs the same formula in bounded memory.

Every input is cast to float32 (float64 where a decomposition needs it) before any arithmetic,
so the result does not depend on the Trainer's precision. ``Alignment``, ``RankMe`` and
``EmbeddingStd`` keep float64 states, so they cannot live on an MPS device (which has no
float64).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from contrastive.evaluation.common import append, cat_or_none, check_matrix, num_rows

__all__ = [
    "Alignment",
    "CentredRankMe",
    "EmbeddingStd",
    "RankMe",
    "Uniformity",
    "alignment",
    "centred_rankme",
    "embedding_std",
    "rankme",
    "uniformity",
]

# Added to each normalised singular value before the entropy, as in RankMe (Garrido et al. 2023).
_RANKME_EPS = 1e-7


# ---- alignment ---------------------------------------------------------------------------------


def _alignment_update(z1: Tensor, z2: Tensor, alpha: float) -> tuple[Tensor, int]:
    check_matrix("z1", z1)
    check_matrix("z2", z2)
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
    """
    if alpha <= 0:
        raise ValueError(f"Expected `alpha` > 0, got {alpha}.")
    return _alignment_compute(*_alignment_update(z1, z2, alpha))


class Alignment(Metric):
    """Alignment of positive pairs (Wang & Isola, "Understanding Contrastive Representation
    Learning through Alignment and Uniformity on the Hypersphere", ICML 2020), accumulated over
    batches: a float64 running sum and a pair count (both "sum" reductions), exact over any
    number of batches and processes in constant memory. See :func:`alignment`.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, alpha: float = 2.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if alpha <= 0:
            raise ValueError(f"Expected `alpha` > 0, got {alpha}.")
        self.alpha = alpha
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, z1: Tensor, z2: Tensor) -> None:
        """Add a batch of ``(B, D)`` positive pairs."""
        total, count = _alignment_update(z1.detach(), z2.detach(), self.alpha)
        self.total += total.double()
        self.count += count

    def compute(self) -> Tensor:
        """The mean alignment over every pair seen (scalar float32)."""
        return _alignment_compute(self.total, self.count)


# ---- uniformity --------------------------------------------------------------------------------


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
    """
    if t <= 0:
        raise ValueError(f"Expected `t` > 0, got {t}.")
    check_matrix("z", z, min_rows=2)
    z = F.normalize(z.float(), dim=1)  # (N, D)
    sq_dist = torch.pdist(z, p=2).pow(2)  # (N(N-1)/2,)
    return torch.logsumexp(-t * sq_dist, dim=0) - math.log(sq_dist.numel())


class Uniformity(Metric):
    """Uniformity on the hypersphere (Wang & Isola, 2020) over a bounded sample of embeddings.

    Uniformity is a mean over all pairs, so it cannot be accumulated exactly in constant memory:
    the metric keeps the L2-normalised float32 embeddings in a "cat" state, but only the
    **first** ``max_samples`` rows seen by each process since the last ``reset`` (later rows are
    ignored: shuffle the evaluation data if its order is not random). After a DDP sync
    ``compute`` sees up to ``world_size * max_samples`` rows and costs ``O(rows^2)``.

    Args:
        t: Temperature of the Gaussian potential; must be positive.
        max_samples: Embeddings kept per process (memory ``max_samples * D * 4`` bytes).
    """

    is_differentiable = False
    higher_is_better = False
    # Updating the global state directly in `forward` keeps `max_samples` enforced; the
    # default merge would append the batch after the cap was checked.
    full_state_update = True

    def __init__(self, t: float = 2.0, max_samples: int = 4096, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if t <= 0:
            raise ValueError(f"Expected `t` > 0, got {t}.")
        if max_samples < 2:
            raise ValueError(
                f"Expected `max_samples` >= 2 (uniformity needs pairs), got {max_samples}."
            )
        self.t, self.max_samples = t, max_samples
        self.add_state("embeddings", [], dist_reduce_fx="cat")

    def update(self, z: Tensor) -> None:
        """Keep the batch's ``(B, D)`` normalised embeddings, up to ``max_samples`` in total."""
        check_matrix("z", z)
        room = self.max_samples - num_rows(self.embeddings)
        if room > 0:
            append(self, "embeddings", F.normalize(z[:room].detach().float(), dim=1))

    def compute(self) -> Tensor:
        """The uniformity of the kept embeddings (scalar float32)."""
        z = cat_or_none(self.embeddings)
        if z is None or z.shape[0] < 2:
            got = 0 if z is None else z.shape[0]
            raise ValueError(f"Uniformity needs at least 2 embeddings, got {got}; call update(z).")
        return uniformity(z, self.t)


# ---- RankMe ------------------------------------------------------------------------------------


def _rank_from_singular_values(s: Tensor) -> Tensor:
    s = s.double()  # (K,)
    # Clamping the denominator keeps an all-zero input finite (it gives ~1) instead of NaN.
    p = s / s.sum().clamp_min(torch.finfo(torch.float64).tiny) + _RANKME_EPS  # (K,)
    entropy = -(p * p.log()).sum()
    return entropy.exp().float()


def rankme(z: Tensor) -> Tensor:
    """RankMe (Garrido et al. 2023, "RankMe: Assessing the downstream performance of pretrained
    self-supervised representations by their rank", ICML), the effective rank of Roy & Vetterli
    (2007) of the embedding matrix as published: uncentred.

    ``exp(-sum_k p_k log p_k)`` with ``p_k = s_k / sum(s) + 1e-7`` for the ``min(N, D)``
    singular values ``s`` of the ``(N, D)`` matrix, in float64. ``~min(N, D)`` for isotropic
    data, ``~1`` for rank-1 (collapsed) data. A large common mean, as post-ReLU features have,
    dominates the spectrum: :func:`centred_rankme` reads the spread around it.

    Args:
        z: Embeddings, shape (N, D) with N >= 1.

    Returns:
        Scalar float32 tensor in ``[1, min(N, D)]`` (up to the epsilon), differentiable.
    """
    check_matrix("z", z, min_rows=1)
    return _rank_from_singular_values(torch.linalg.svdvals(z.double()))  # (min(N, D),)


def centred_rankme(z: Tensor) -> Tensor:
    """:func:`rankme` of the centred embeddings ``z - mean(z)``: the effective rank of the
    covariance spectrum (dimensional collapse, Jing et al. 2022), blind to a common mean."""
    check_matrix("z", z, min_rows=1)
    z = z.double()
    return _rank_from_singular_values(torch.linalg.svdvals(z - z.mean(dim=0, keepdim=True)))


class RankMe(Metric):
    """:func:`rankme` accumulated in ``O(D^2)`` memory (Garrido et al. 2023).

    Keeps the float64 Gram matrix ``Z^T Z`` (D, D) with a "sum" reduction, plus the sum and count
    of the rows; its eigenvalues are the squared singular values of the concatenated ``Z``, of
    which the largest ``min(N, D)`` are used, so ``compute`` equals the functional form on all
    the data seen (up to rounding), also when there are fewer rows than dimensions.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    center = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # The Gram state is a scalar zero until the first update gives it shape (D, D).
        self.add_state("gram", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, z: Tensor) -> None:
        """Add a batch of ``(B, D)`` embeddings; D must be the same for every batch."""
        check_matrix("z", z)
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
        """The rank of all the embeddings seen (scalar float32)."""
        if self.gram.ndim != 2:
            raise ValueError(f"{type(self).__name__}.compute() needs an update(z), got none.")
        gram = self.gram
        if self.center:  # sum (z - m)(z - m)^T = Z^T Z - n m m^T with m = total / n
            gram = gram - torch.outer(self.total, self.total) / self.count.clamp_min(1)
        eigenvalues = torch.linalg.eigvalsh(gram)  # (D,) ascending
        # Rows beyond the first min(N, D) would be zeros, each given the epsilon: leave them out.
        top = eigenvalues[-min(int(self.count), len(eigenvalues)) :]  # (min(N, D),)
        return _rank_from_singular_values(top.clamp_min(0).sqrt())


class CentredRankMe(RankMe):
    """:func:`centred_rankme` accumulated in ``O(D^2)`` memory: the Gram matrix is centred at
    the end from the running sum (``sum (z - m)(z - m)^T = Z^T Z - n m m^T``)."""

    center = True


# ---- embedding std -----------------------------------------------------------------------------


def embedding_std(z: Tensor) -> Tensor:
    """Mean per-dimension standard deviation of the L2-normalised embeddings.

    The collapse indicator of SimSiam (Chen & He 2021, sec. 4.1): ``~1/sqrt(D)`` for embeddings
    spread over the sphere, ``0`` when every input maps to the same point.

    Args:
        z: Embeddings, shape (N, D).

    Returns:
        Scalar float32 tensor.
    """
    check_matrix("z", z, min_rows=1)
    return F.normalize(z.double(), dim=1).std(dim=0, correction=0).mean().float()


class EmbeddingStd(Metric):
    """:func:`embedding_std` accumulated in constant memory (sums of z and z^2, and a count)."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in ("total", "total_sq"):
            self.add_state(name, torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, z: Tensor) -> None:
        """Add a batch of ``(B, D)`` embeddings."""
        check_matrix("z", z)
        z = F.normalize(z.detach().double(), dim=1)  # (B, D)
        self.total = self.total + z.sum(dim=0)  # (D,)
        self.total_sq = self.total_sq + z.square().sum(dim=0)  # (D,)
        self.count = self.count + len(z)

    def compute(self) -> Tensor:
        """The mean per-dimension standard deviation (scalar float32)."""
        if self.count == 0:
            raise ValueError("EmbeddingStd.compute() needs at least one update(z), got none.")
        mean = self.total / self.count  # (D,)
        variance = (self.total_sq / self.count - mean.square()).clamp_min(0)  # (D,)
        return variance.sqrt().mean().float()
