"""InfoNCE with any number of positives per anchor: NT-Xent (SimCLR) and SupCon's L_out."""

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
    negatives: Tensor | None = None,
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
        negatives: ``(K, D)`` extra candidates that are never positives (a queue of past
            embeddings); they join every anchor's ``A(i)``. ``None`` for none.

    Returns:
        The mean loss over anchors that have at least one positive: a scalar tensor, float32
        (float64 for float64 inputs).
    """
    _check_info_nce_inputs(
        anchors, candidates, anchor_labels, candidate_labels, temperature, negatives
    )
    # float32 whatever the autocast dtype: exp(s / T) with T ~ 0.1 loses too much in bf16.
    with torch.autocast(anchors.device.type, enabled=False):
        dtype = torch.promote_types(anchors.dtype, torch.float32)  # float64 stays float64
        a = F.normalize(anchors.to(dtype), dim=1)
        c = F.normalize(candidates.to(dtype), dim=1)
        c, candidate_labels = _append_negatives(c, candidate_labels, anchor_labels, negatives)
        logits = a @ c.T / temperature  # (N, M + K)
        positive = anchor_labels[:, None] == candidate_labels[None, :]  # (N, M + K)
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


def _check_info_nce_inputs(
    anchors: Tensor,
    candidates: Tensor,
    anchor_labels: Tensor,
    candidate_labels: Tensor,
    temperature: float | Tensor,
    negatives: Tensor | None = None,
) -> None:
    """The shape and temperature checks shared by :func:`info_nce` and :func:`info_nce_tiled`."""
    if negatives is not None and (negatives.ndim != 2 or negatives.shape[1] != anchors.shape[-1]):
        raise ValueError(
            f"expected negatives (K, {anchors.shape[-1]}), got {tuple(negatives.shape)}"
        )
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


def _append_negatives(
    c: Tensor, candidate_labels: Tensor, anchor_labels: Tensor, negatives: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Normalised candidates ``(M, D)`` with the negatives appended, normalised: ``(M + K, D)``,
    and ``(M + K,)`` labels where the negatives carry a label that no anchor has."""
    if negatives is None:
        return c, candidate_labels
    never = anchor_labels.min() - 1 if len(anchor_labels) else candidate_labels.new_zeros(())
    labels = never.to(candidate_labels.dtype).expand(len(negatives))  # (K,) never positive
    n = F.normalize(negatives.to(c.dtype), dim=1)  # (K, D)
    return torch.cat([c, n]), torch.cat([candidate_labels, labels])
