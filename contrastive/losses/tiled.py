"""InfoNCE in memory linear in the number of candidates: tiles with an online log-sum-exp,
recomputed in the backward pass (as FlashAttention does)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from contrastive.losses.infonce import _append_negatives, _check_info_nce_inputs


class Tiling(NamedTuple):
    """When to compute a loss tile by tile: always, or above a number of candidates.

    Attributes:
        always: tile whatever the size.
        size: rows and columns per tile.
        above: tile when there are more candidates than this; ``None``: only when ``always``.
    """

    always: bool = False
    size: int = 1024
    above: int | None = 8192

    def block_size(self, candidates: int) -> int | None:
        """The tile size for this many candidates, or ``None`` for the dense loss."""
        big = self.above is not None and candidates > self.above
        return self.size if self.always or big else None


def info_nce_tiled(
    anchors: Tensor,
    candidates: Tensor,
    anchor_labels: Tensor,
    candidate_labels: Tensor,
    temperature: float | Tensor = 0.1,
    anchor_positions: Tensor | None = None,
    block_size: int = 1024,
    negatives: Tensor | None = None,
) -> Tensor:
    """:func:`info_nce` in memory linear in ``N + M``: the ``(N, M)`` logits are never stored.

    Same arguments, semantics and return value as :func:`info_nce`. The similarities are
    computed in ``(block_size, block_size)`` tiles with an online log-sum-exp in the forward
    pass and recomputed tile by tile in the backward pass (as FlashAttention does), so the
    graph keeps only the normalised embeddings and two numbers per anchor. Memory per step is
    ``O((N + M) D + block_size^2)`` instead of ``O(N M)``; the price is one extra matmul pass.

    Args:
        anchors: ``(N, D)`` embeddings whose loss is taken (this rank's rows).
        candidates: ``(M, D)`` embeddings compared against (usually gathered from all ranks).
        anchor_labels: ``(N,)`` integer labels; same label = positive pair.
        candidate_labels: ``(M,)`` integer labels.
        temperature: ``T > 0``, a float or a scalar tensor (learnable temperatures work).
        anchor_positions: ``(N,)`` index of each anchor among the candidates, or ``None``.
        block_size: rows and columns per tile; any size >= 1, it need not divide N or M.
        negatives: ``(K, D)`` extra candidates that are never positives, or ``None``.

    Returns:
        The mean loss over anchors that have at least one positive: a scalar tensor, float32
        (float64 for float64 inputs); 0 with a gradient path if no anchor has a positive.
    """
    _check_info_nce_inputs(
        anchors, candidates, anchor_labels, candidate_labels, temperature, negatives
    )
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    # float32 whatever the autocast dtype: exp(s / T) with T ~ 0.1 loses too much in bf16.
    with torch.autocast(anchors.device.type, enabled=False):
        dtype = torch.promote_types(anchors.dtype, torch.float32)  # float64 stays float64
        a = F.normalize(anchors.to(dtype), dim=1)  # (N, D), ordinary autograd
        c = F.normalize(candidates.to(dtype), dim=1)  # (M, D)
        c, candidate_labels = _append_negatives(c, candidate_labels, anchor_labels, negatives)
        num_positives = _count_positives(
            anchor_labels, candidate_labels, anchor_positions, block_size
        )  # (N,)
        if not bool((num_positives > 0).any()):
            return a.sum() * 0.0  # as info_nce: keeps the graph connected for DDP's reducer
        if not torch.is_tensor(temperature):
            temperature = torch.tensor(temperature, dtype=dtype, device=a.device)
        return _TiledInfoNCE.apply(
            a, c, temperature, anchor_labels, candidate_labels, anchor_positions,
            num_positives, block_size,
        )  # fmt: skip


def _tile_masks(
    anchor_labels: Tensor,
    candidate_labels: Tensor,
    anchor_positions: Tensor | None,
    rows: slice,
    cols: slice,
) -> tuple[Tensor, Tensor | None]:
    """Positive and self masks of one tile: ``(n, m)`` bool each (self is None without
    ``anchor_positions``)."""
    positive = anchor_labels[rows, None] == candidate_labels[None, cols]  # (n, m)
    if anchor_positions is None:
        return positive, None
    columns = torch.arange(cols.start, cols.stop, device=candidate_labels.device)  # (m,)
    is_self = anchor_positions[rows, None] == columns[None, :]  # (n, m)
    return positive & ~is_self, is_self


def _tiles(n: int, m: int, block_size: int):
    """Every ``(rows, cols)`` tile of an ``(n, m)`` matrix, row blocks outermost."""
    for r in range(0, n, block_size):
        for k in range(0, m, block_size):
            yield slice(r, min(r + block_size, n)), slice(k, min(k + block_size, m))


def _count_positives(
    anchor_labels: Tensor, candidate_labels: Tensor, anchor_positions: Tensor | None, block: int
) -> Tensor:
    """``|P(i)|`` for every anchor, one tile of labels at a time: ``(N,)`` int64."""
    counts = torch.zeros(len(anchor_labels), dtype=torch.long, device=anchor_labels.device)
    for rows, cols in _tiles(len(anchor_labels), len(candidate_labels), block):
        positive, _ = _tile_masks(anchor_labels, candidate_labels, anchor_positions, rows, cols)
        counts[rows] += positive.sum(dim=1)
    return counts


class _TiledInfoNCE(torch.autograd.Function):
    """The similarity / log-sum-exp part of :func:`info_nce_tiled` on normalised inputs.

    With ``l_ij = s_ij / T``, ``lse_i = max_i + log(sum_i)`` over the non-self columns (kept as
    the two numbers) and ``V`` valid anchors::

        L = 1/V * sum_{i valid} (lse_i - 1/|P(i)| * sum_{p in P(i)} l_ip)
        dL/dl_ij = (|P(i)| * softmax_ij - [j in P(i)]) / (V * |P(i)|)   (0 for invalid rows)

    and ``dL/da = dl @ c / T``, ``dL/dc = dl^T @ a / T``, ``dL/dT = -sum(dl * s) / T^2``.
    """

    @staticmethod
    def forward(ctx, a, c, temperature, anchor_labels, candidate_labels, positions, counts, block):
        t = temperature.detach().to(a.dtype)
        # The online log-sum-exp keeps its running max and its sum apart (lse = max + log(sum)):
        # the backward pass then takes the softmax as exp(l - max) / sum, exact where l is the
        # max, instead of exp(l - lse) with lse rounded to one float (which costs a near-zero
        # loss most of its gradient's digits).
        row_max = torch.full((len(a),), float("-inf"), dtype=a.dtype, device=a.device)  # (N,)
        row_sum = torch.zeros(len(a), dtype=a.dtype, device=a.device)  # (N,) sum exp(l - max)
        positive_sum = torch.zeros(len(a), dtype=a.dtype, device=a.device)  # (N,) sum_p l_ip
        for rows, cols in _tiles(len(a), len(c), block):
            logits = a[rows] @ c[cols].T / t  # (n, m)
            positive, is_self = _tile_masks(anchor_labels, candidate_labels, positions, rows, cols)
            if is_self is not None:
                logits = logits.masked_fill(is_self, float("-inf"))
            new_max = torch.maximum(row_max[rows], logits.amax(dim=1))  # (n,)
            shift = _finite_or_zero(new_max)  # a row of only -inf so far stays at sum 0
            row_sum[rows] = row_sum[rows] * torch.exp(row_max[rows] - shift) + torch.exp(
                logits - shift[:, None]
            ).sum(dim=1)
            row_max[rows] = new_max
            positive_sum[rows] += torch.where(positive, logits, torch.zeros_like(logits)).sum(1)
        valid = counts > 0
        # lse - mean positive logit, as (max - mean positive) + log(sum): the first difference
        # is exact when the positive is the max (views that agree), where the loss is smallest.
        per_anchor = row_max - positive_sum / counts.clamp(min=1) + torch.log(row_sum)
        loss = per_anchor[valid].mean()
        ctx.save_for_backward(
            a, c, temperature, anchor_labels, candidate_labels, row_max, row_sum, counts
        )
        ctx.has_positions = positions is not None
        if positions is not None:
            ctx.positions = positions.detach()  # an index: not part of the graph
        ctx.block = block
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        a, c, temperature, anchor_labels, candidate_labels, row_max, row_sum, counts = (
            ctx.saved_tensors
        )
        positions = ctx.positions if ctx.has_positions else None
        with torch.autocast(a.device.type, enabled=False):
            t = temperature.detach().to(a.dtype)
            valid = counts > 0  # (N,)
            counts = counts.to(a.dtype)  # 1 / int would be float32 whatever a's dtype
            weight = torch.where(valid, 1.0 / (valid.sum() * counts.clamp(min=1)), 0.0)
            weight = weight * grad_output  # (N,) 1 / (V |P(i)|), 0 for rows without positive
            grad_a, grad_c = torch.zeros_like(a), torch.zeros_like(c)
            grad_s_dot_s = torch.zeros((), dtype=a.dtype, device=a.device)  # sum(dl * s)
            for rows, cols in _tiles(len(a), len(c), ctx.block):
                s = a[rows] @ c[cols].T  # (n, m), recomputed
                positive, is_self = _tile_masks(
                    anchor_labels, candidate_labels, positions, rows, cols
                )
                logits = s / t
                if is_self is not None:
                    logits = logits.masked_fill(is_self, float("-inf"))
                shift = _finite_or_zero(row_max[rows])[:, None]
                p = torch.exp(logits - shift) / row_sum[rows, None]  # (n, m) softmax, 0 on self
                dl = weight[rows, None] * (counts[rows, None] * p - positive.to(a.dtype))
                dl = torch.where(valid[rows, None], dl, torch.zeros_like(dl))  # no 0 * nan
                grad_a[rows] += dl @ c[cols] / t  # (n, D)
                grad_c[cols] += dl.T @ a[rows] / t  # (m, D)
                grad_s_dot_s += (dl * s).sum()
            grad_t = None
            if ctx.needs_input_grad[2]:
                grad_t = (-grad_s_dot_s / t**2).to(temperature.dtype).reshape(temperature.shape)
        return grad_a, grad_c, grad_t, None, None, None, None, None


def _finite_or_zero(x: Tensor) -> Tensor:
    """``x`` with its infinities replaced by 0: a shift that never makes ``-inf - -inf``."""
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))
