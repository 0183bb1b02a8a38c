"""Contrastive losses as pure functions of tensors.

A loss never reads distributed state or the Trainer: the method gathers embeddings from every
rank (``distributed.gather_with_grad``) and passes them in, with the positions of its own
anchors among the gathered candidates. That makes every loss testable on one process.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def info_nce(
    anchors: Tensor,
    candidates: Tensor,
    anchor_labels: Tensor,
    candidate_labels: Tensor,
    temperature: float | Tensor = 0.1,
    anchor_positions: Tensor | None = None,
) -> Tensor:
    """InfoNCE with any number of positives per anchor (NT-Xent, SupCon "out" form).

    For anchor ``i`` with positives ``P(i)`` (candidates with the same label, itself excluded)
    and the candidate set ``A(i)`` (every candidate but itself)::

        loss_i = -1/|P(i)| * sum_{p in P(i)} log( exp(s_ip / T) / sum_{a in A(i)} exp(s_ia / T) )

    with ``s`` the cosine similarity. With one positive per anchor (labels = instance ids) this is
    SimCLR's NT-Xent (Chen et al. 2020); with class labels it is SupCon's L_out (Khosla et al.
    2020, eq. 2), the mean over positives taken outside the log. Anchors without a positive are
    left out of the mean; if no anchor has one, the loss is 0 (with a gradient path).

    Args:
        anchors: ``(N, D)`` embeddings whose loss is taken (this rank's rows).
        candidates: ``(M, D)`` embeddings compared against (usually gathered from all ranks).
        anchor_labels: ``(N,)`` integer labels; same label = positive pair.
        candidate_labels: ``(M,)`` integer labels.
        temperature: ``T > 0``, a float or a scalar tensor (learnable temperatures work).
        anchor_positions: ``(N,)`` index of each anchor among the candidates, so that an anchor is
            neither its own positive nor its own negative. ``None`` when anchors are not among
            the candidates.

    Returns:
        The mean loss over anchors that have at least one positive: a scalar tensor, float32
        (float64 for float64 inputs).
    """
    if anchors.ndim != 2 or candidates.ndim != 2 or anchors.shape[1] != candidates.shape[1]:
        raise ValueError(
            f"expected anchors (N, D) and candidates (M, D), got {tuple(anchors.shape)} "
            f"and {tuple(candidates.shape)}"
        )
    if anchor_labels.shape != anchors.shape[:1] or candidate_labels.shape != candidates.shape[:1]:
        raise ValueError(
            f"expected labels ({anchors.shape[0]},) and ({candidates.shape[0]},), got "
            f"{tuple(anchor_labels.shape)} and {tuple(candidate_labels.shape)}"
        )
    if not torch.is_tensor(temperature) and temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    # float32 whatever the autocast dtype: exp(s / T) with T ~ 0.1 loses too much in bf16.
    with torch.autocast(anchors.device.type, enabled=False):
        dtype = torch.promote_types(anchors.dtype, torch.float32)  # float64 stays float64
        a = F.normalize(anchors.to(dtype), dim=1)
        c = F.normalize(candidates.to(dtype), dim=1)
        logits = a @ c.T / temperature  # (N, M)
        positive = anchor_labels[:, None] == candidate_labels[None, :]  # (N, M)
        if anchor_positions is not None:
            is_self = torch.zeros_like(positive)
            is_self[torch.arange(len(a), device=a.device), anchor_positions] = True
            logits = logits.masked_fill(is_self, float("-inf"))
            positive = positive & ~is_self
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)  # (N, M)
        num_positives = positive.sum(dim=1)  # (N,)
        has_positive = num_positives > 0
        # where() rather than multiply: log_prob is -inf on the masked self entry.
        positive_log_prob = torch.where(positive, log_prob, torch.zeros_like(log_prob)).sum(1)
        per_anchor = -positive_log_prob[has_positive] / num_positives[has_positive]
        if per_anchor.numel() == 0:
            return a.sum() * 0.0  # keeps the graph connected for DDP's reducer
        return per_anchor.mean()


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
