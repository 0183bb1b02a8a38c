"""BYOL's regression of an online prediction onto a target projection."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def byol_loss(predictions: Tensor, targets: Tensor) -> Tensor:
    """BYOL's regression loss (Grill et al. 2020, eq. 2): ``2 - 2 cos(p, z')``, mean over rows.

    Symmetrise by passing both view orders stacked: ``byol_loss(cat([p1, p2]), cat([z2, z1]))``.

    Args:
        predictions: ``(N, D)`` online predictions ``q(g(f(v)))``.
        targets: ``(N, D)`` target projections ``g'(f'(v'))``, detached by the caller.

    Returns:
        Scalar tensor in [0, 4], float32 whatever the autocast dtype.
    """
    if predictions.shape != targets.shape or predictions.ndim != 2:
        raise ValueError(
            f"expected predictions and targets of one (N, D) shape, got "
            f"{tuple(predictions.shape)} and {tuple(targets.shape)}"
        )
    with torch.autocast(predictions.device.type, enabled=False):
        dtype = torch.promote_types(predictions.dtype, torch.float32)
        cosine = F.cosine_similarity(predictions.to(dtype), targets.to(dtype), dim=1)  # (N,)
        return (2 - 2 * cosine).mean()
