"""SwAV: codes from the Sinkhorn-Knopp algorithm, predicted from another view."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from contrastive.losses.barlow_twins import AllReduce
from contrastive.losses.pairs import cross_view_pairs


@torch.no_grad()
def sinkhorn_knopp(
    scores: Tensor, epsilon: float = 0.05, iterations: int = 3, all_reduce: AllReduce = None
) -> Tensor:
    """SwAV's codes (Caron et al. 2020, arXiv:2006.09882, eq. 3 and its ``distributed_sinkhorn``).

    The soft assignment ``Q`` of ``B`` samples to ``K`` prototypes that maximises
    ``Tr(Q^T C^T Z) + epsilon H(Q)`` with equal mass on every prototype: ``exp(scores /
    epsilon)`` with its rows and columns normalised in turn, ``iterations`` times.

    Under DDP each rank passes its own rows and ``all_reduce`` (the sum over ranks): the
    prototype sums and the total are summed over ranks, so the codes are those of the global
    batch (samples only need their own column sum, which stays local).

    Args:
        scores: ``(N, K)`` similarities of this rank's samples to the prototypes.
        epsilon: the entropy weight (0.05).
        iterations: normalisation rounds (3).
        all_reduce: the sum of a tensor over ranks; ``None`` on one process.

    Returns:
        ``(N, K)`` codes, each row summing to 1, float32 (float64 for float64 scores).
    """
    reduce = all_reduce or (lambda t: t)
    dtype = torch.promote_types(scores.dtype, torch.float32)  # exp(1 / 0.05) needs float32
    q = torch.exp(scores.to(dtype) / epsilon).T  # (K, N)
    k = q.shape[0]
    b = reduce(torch.tensor(float(q.shape[1]), dtype=dtype, device=q.device))  # global batch
    q /= reduce(q.sum())
    for _ in range(iterations):
        q /= reduce(q.sum(dim=1, keepdim=True))  # every prototype gets mass 1 / K
        q /= k
        q /= q.sum(dim=0, keepdim=True)  # every sample gets mass 1 / B
        q /= b
    return (q * b).T  # (N, K), rows sum to 1


def swav_loss(scores: Tensor, codes: Tensor, temperature: float = 0.1) -> Tensor:
    """SwAV's swapped prediction (eq. 1-2): every view predicts each global view's codes but
    its own, ``-sum_k q_k log softmax(scores / T)_k``, mean over rows and view pairs.

    Args:
        scores: ``(N, V, K)`` prototype scores of all ``V`` views (global views first).
        codes: ``(N, G, K)`` Sinkhorn codes of the ``G`` global views (no gradient).
        temperature: ``T`` (0.1).

    Returns:
        A scalar tensor, float32 whatever the autocast dtype.
    """
    if scores.ndim != 3 or codes.shape[::2] != scores.shape[::2]:
        raise ValueError(
            f"expected scores (N, V, K) and codes (N, G, K), got {tuple(scores.shape)} and "
            f"{tuple(codes.shape)}"
        )
    with torch.autocast(scores.device.type, enabled=False):
        dtype = torch.promote_types(scores.dtype, torch.float32)
        log_probs = F.log_softmax(scores.to(dtype) / temperature, dim=-1)  # (N, V, K)
        pairs = cross_view_pairs(scores.shape[1], num_global=codes.shape[1])
        terms = [-(codes[:, g].to(dtype) * log_probs[:, v]).sum(dim=-1).mean() for v, g in pairs]
        return torch.stack(terms).mean()
