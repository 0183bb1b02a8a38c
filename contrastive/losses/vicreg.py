"""VICReg: variance, invariance and covariance terms over the global batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def vicreg_loss(
    z1: Tensor,
    z2: Tensor,
    invariance_weight: float = 25.0,
    variance_weight: float = 25.0,
    covariance_weight: float = 1.0,
    eps: float = 1e-4,
) -> Tensor:
    """VICReg (Bardes et al. 2022, arXiv:2105.04906, eq. 1-6 and Algorithm 1).

    With ``N`` rows of ``D`` features per view::

        s(Z1, Z2) = mean_i ||z1_i - z2_i||^2 / D                         invariance (MSE)
        v(Z) = mean_j relu(1 - sqrt(Var(Z_j) + eps))                      variance hinge
        c(Z) = sum_{i != j} Cov(Z)_ij^2 / D                              covariance
        loss = lambda s + mu (v(Z1) + v(Z2)) / 2 + nu (c(Z1) + c(Z2))

    with the unbiased variance and covariance, as the authors' code. Pass the global batch
    (gathered from every rank with gradient, as the authors' ``FullGatherLayer``).

    Args:
        z1: ``(N, D)`` expander outputs of the first views.
        z2: ``(N, D)`` of the second views.
        invariance_weight: ``lambda`` (25).
        variance_weight: ``mu`` (25).
        covariance_weight: ``nu`` (1).
        eps: added to the variance before the square root.

    Returns:
        A scalar tensor, float32 whatever the autocast dtype.
    """
    if z1.shape != z2.shape or z1.ndim != 2 or len(z1) < 2:
        raise ValueError(
            f"expected z1, z2 of one (N, D) shape with N >= 2, got {tuple(z1.shape)}, "
            f"{tuple(z2.shape)}"
        )
    # float32 whatever the autocast dtype: the covariance sums N products per entry.
    with torch.autocast(z1.device.type, enabled=False):
        dtype = torch.promote_types(z1.dtype, torch.float32)
        z1, z2 = z1.to(dtype), z2.to(dtype)
        invariance = F.mse_loss(z1, z2)
        variance = (_variance_hinge(z1, eps) + _variance_hinge(z2, eps)) / 2
        covariance = _covariance_penalty(z1) + _covariance_penalty(z2)
        return (
            invariance_weight * invariance
            + variance_weight * variance
            + covariance_weight * covariance
        )


def _variance_hinge(z: Tensor, eps: float) -> Tensor:
    std = torch.sqrt(z.var(dim=0) + eps)  # (D,)
    return F.relu(1 - std).mean()


def _covariance_penalty(z: Tensor) -> Tensor:
    n, d = z.shape
    z = z - z.mean(dim=0)
    cov = z.T @ z / (n - 1)  # (D, D)
    return (cov.pow(2).sum() - cov.diagonal().pow(2).sum()) / d
