"""SimSiam's negative cosine similarity."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def negative_cosine(predictions: Tensor, targets: Tensor) -> Tensor:
    """SimSiam's ``D(p, z) = -cos(p, z)`` (Chen and He 2021, arXiv:2011.10566, eq. 1), mean
    over rows. Symmetrise as the paper: ``D(p1, stopgrad(z2)) / 2 + D(p2, stopgrad(z1)) / 2``.

    Args:
        predictions: ``(N, D)`` predictor outputs ``p``.
        targets: ``(N, D)`` projections ``z`` of the other view, detached by the caller.

    Returns:
        A scalar tensor in [-1, 1], float32 whatever the autocast dtype.
    """
    if predictions.shape != targets.shape or predictions.ndim != 2:
        raise ValueError(
            f"expected predictions and targets of one (N, D) shape, got "
            f"{tuple(predictions.shape)} and {tuple(targets.shape)}"
        )
    with torch.autocast(predictions.device.type, enabled=False):
        dtype = torch.promote_types(predictions.dtype, torch.float32)
        return -F.cosine_similarity(predictions.to(dtype), targets.to(dtype), dim=1).mean()
