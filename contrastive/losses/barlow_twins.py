"""Barlow Twins' redundancy reduction over the cross-correlation of two views."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

#: The sum of a tensor over every rank, with its gradient; ``None`` on one process.
AllReduce = Callable[[Tensor], Tensor] | None


def barlow_twins_loss(
    z1: Tensor,
    z2: Tensor,
    lambda_offdiag: float = 5e-3,
    all_reduce: AllReduce = None,
    eps: float = 1e-5,
) -> Tensor:
    """Barlow Twins (Zbontar et al. 2021, arXiv:2103.03230, eq. 1 and Algorithm 1).

    Each view's embeddings are batch-normalised over the global batch (mean and biased
    variance, as ``BatchNorm1d(affine=False)`` in training mode), then::

        C = z1_norm^T z2_norm / N                          (D, D)
        loss = sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2

    Under DDP each rank passes its own rows and ``all_reduce`` (the sum over ranks): the
    batch statistics and ``C`` are then summed over ranks, as the authors' code all-reduces
    ``C`` after a SyncBatchNorm, and every rank gets the loss of the global batch.

    Args:
        z1: ``(N, D)`` projections of the first views (this rank's rows).
        z2: ``(N, D)`` projections of the second views.
        lambda_offdiag: ``lambda``, the weight of the off-diagonal (redundancy) terms.
        all_reduce: the sum of a tensor over ranks, with gradient; ``None`` on one process.
        eps: added to the variance, as BatchNorm's.

    Returns:
        A scalar tensor, float32 whatever the autocast dtype.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(
            f"expected z1, z2 of one (N, D) shape, got {tuple(z1.shape)}, {tuple(z2.shape)}"
        )
    reduce = all_reduce or (lambda t: t)
    # float32 whatever the autocast dtype: C sums N products per entry, squared in the loss.
    with torch.autocast(z1.device.type, enabled=False):
        dtype = torch.promote_types(z1.dtype, torch.float32)
        n = reduce(torch.tensor(float(len(z1)), dtype=dtype, device=z1.device))  # global N
        z1, z2 = (_batch_norm(z.to(dtype), n, reduce, eps) for z in (z1, z2))
        c = reduce(z1.T @ z2) / n  # (D, D)
        on_diagonal = (1 - c.diagonal()).pow(2).sum()
        off_diagonal = c.pow(2).sum() - c.diagonal().pow(2).sum()
        return on_diagonal + lambda_offdiag * off_diagonal


def _batch_norm(
    z: Tensor, n: Tensor, reduce: Callable[[Tensor], Tensor], eps: float
) -> Tensor:  # (N, D) -> (N, D), statistics over the global batch
    mean = reduce(z.sum(dim=0)) / n  # (D,)
    var = reduce((z - mean).pow(2).sum(dim=0)) / n  # (D,) biased, as BatchNorm normalises
    return (z - mean) / torch.sqrt(var + eps)
