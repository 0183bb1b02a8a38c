"""MoCo's InfoNCE of queries against their own key and a queue of past keys."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def moco_loss(queries: Tensor, keys: Tensor, queue: Tensor, temperature: float = 0.2) -> Tensor:
    """MoCo's InfoNCE (He et al. 2020, arXiv:1911.05722, Algorithm 1; MoCo v2's ``T = 0.2``).

    Each query's positive is its own key; its negatives are the queued keys of earlier
    batches (not the other keys of the batch)::

        l_pos = q . k+        l_neg = q . queue^T        loss = CE([l_pos, l_neg] / T, 0)

    with ``q``, ``k`` and the queue L2-normalised.

    Args:
        queries: ``(N, D)`` query encoder outputs.
        keys: ``(N, D)`` their keys from the momentum encoder, detached by the caller.
        queue: ``(K, D)`` negative keys; ``K = 0`` leaves only the positive (loss 0).
        temperature: ``T > 0``.

    Returns:
        The mean over queries: a scalar tensor, float32 whatever the autocast dtype.
    """
    if queries.shape != keys.shape or queries.ndim != 2 or queue.shape[1:] != queries.shape[1:]:
        raise ValueError(
            f"expected queries and keys (N, D) and a queue (K, D), got {tuple(queries.shape)}, "
            f"{tuple(keys.shape)} and {tuple(queue.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    # float32 whatever the autocast dtype: exp(s / T) with T ~ 0.2 loses too much in bf16.
    with torch.autocast(queries.device.type, enabled=False):
        dtype = torch.promote_types(queries.dtype, torch.float32)
        q = F.normalize(queries.to(dtype), dim=1)
        k = F.normalize(keys.to(dtype), dim=1)
        negatives = F.normalize(queue.to(dtype), dim=1)
        positive = (q * k).sum(dim=1, keepdim=True)  # (N, 1)
        logits = torch.cat([positive, q @ negatives.T], dim=1) / temperature  # (N, 1 + K)
        target = torch.zeros(len(q), dtype=torch.long, device=q.device)  # the key is column 0
        return F.cross_entropy(logits, target)
