"""Contrastive losses as pure functions of tensors.

A loss never reads distributed state or the Trainer: the method gathers embeddings from every
rank (``distributed.gather_with_grad``) and passes them in, with the positions of its own
anchors among the gathered candidates. That makes every loss testable on one process.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

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


def clip_loss(
    images: Tensor,
    texts: Tensor,
    candidate_images: Tensor,
    candidate_texts: Tensor,
    positions: Tensor,
    logit_scale: float | Tensor,
    block_size: int | None = None,
    image_negatives: Tensor | None = None,
    text_negatives: Tensor | None = None,
) -> Tensor:
    """CLIP's symmetric cross-entropy (Radford et al. 2021, arXiv:2103.00020, Figure 3).

    With ``s`` the cosine similarity and ``t`` the logit scale, this rank's image ``i`` is
    classified among all candidate texts (its own caption is the class) and its text ``i``
    among all candidate images; the loss is the mean of the two cross-entropies::

        loss = 1/2 * (CE(t * s(I_i, T_all), pos_i) + CE(t * s(T_i, I_all), pos_i))

    On one process the candidates are the inputs and ``positions = arange(N)``; under DDP they
    are gathered from every rank and each rank takes the loss of its own rows.

    Args:
        images: ``(N, D)`` this rank's image embeddings.
        texts: ``(N, D)`` their captions' embeddings, row for row.
        candidate_images: ``(M, D)`` image embeddings of the global batch.
        candidate_texts: ``(M, D)`` text embeddings of the global batch.
        positions: ``(N,)`` index of each local pair among the candidates.
        logit_scale: ``t > 0``, the multiplier of the cosine (``exp`` of the learnt parameter).
        block_size: compute each direction with :func:`info_nce_tiled` in tiles of this size
            (memory linear in ``N + M``); ``None`` for the dense form.
        image_negatives: ``(K, D)`` extra images that are never a text's match (a queue); texts
            are classified among ``candidate_images`` and these.
        text_negatives: ``(K', D)`` extra texts, never an image's match; images are classified
            among ``candidate_texts`` and these.

    Returns:
        A scalar tensor, float32 (float64 for float64 inputs).
    """
    if images.shape != texts.shape or candidate_images.shape != candidate_texts.shape:
        raise ValueError(
            f"expected images and texts of one shape, and candidates of one shape, got "
            f"{tuple(images.shape)}, {tuple(texts.shape)}, {tuple(candidate_images.shape)} and "
            f"{tuple(candidate_texts.shape)}"
        )
    ids = torch.arange(len(candidate_images), device=images.device)  # (M,) one class per pair
    temperature = 1 / logit_scale
    if block_size is None:
        one_way = info_nce
    else:
        one_way = functools.partial(info_nce_tiled, block_size=block_size)
    # Labels: local pair i is global pair positions[i]; a queue's rows match no pair.
    image_to_text = one_way(
        images, candidate_texts, positions, ids, temperature, None, negatives=text_negatives
    )
    text_to_image = one_way(
        texts, candidate_images, positions, ids, temperature, None, negatives=image_negatives
    )
    return (image_to_text + text_to_image) / 2


def siglip_loss(
    images: Tensor,
    candidate_texts: Tensor,
    positions: Tensor,
    logit_scale: float | Tensor,
    logit_bias: float | Tensor,
) -> Tensor:
    """SigLIP's pairwise sigmoid loss (Zhai et al. 2023, arXiv:2303.15343, Algorithm 1).

    Every (image, text) pair is its own binary problem: ``z_ij = 1`` for a matching pair and
    ``-1`` otherwise, with logit ``t * s_ij + b``::

        loss = -1/N * sum_i sum_j log sigmoid(z_ij * (t * s_ij + b))

    Under DDP each rank passes its images and the texts of every rank: the pairs are then
    covered once, and DDP's gradient mean over ranks gives the paper's ``1/|B|`` normalisation.

    Args:
        images: ``(N, D)`` this rank's image embeddings.
        candidate_texts: ``(M, D)`` text embeddings of the global batch.
        positions: ``(N,)`` index of each image's own caption among ``candidate_texts``.
        logit_scale: ``t > 0`` (``exp`` of the learnt parameter; the paper starts at 10).
        logit_bias: ``b`` (the paper starts at -10, so the many negatives start near 0 loss).

    Returns:
        A scalar tensor, float32 (float64 for float64 inputs).
    """
    if images.ndim != 2 or candidate_texts.ndim != 2 or images.shape[1] != candidate_texts.shape[1]:
        raise ValueError(
            f"expected (N, D) images and (M, D) texts, got {tuple(images.shape)} and "
            f"{tuple(candidate_texts.shape)}"
        )
    # float32 whatever the autocast dtype: the logits are a scale of ~10-100 times a cosine.
    with torch.autocast(images.device.type, enabled=False):
        dtype = torch.promote_types(images.dtype, torch.float32)
        a = F.normalize(images.to(dtype), dim=1)
        c = F.normalize(candidate_texts.to(dtype), dim=1)
        logits = logit_scale * (a @ c.T) + logit_bias  # (N, M)
        signs = -torch.ones_like(logits)
        signs[torch.arange(len(a), device=a.device), positions] = 1.0  # (N, M) z_ij
        return -F.logsigmoid(signs * logits).sum() / len(a)


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

    With ``l_ij = s_ij / T``, ``lse_i`` over the non-self columns and ``V`` valid anchors::

        L = 1/V * sum_{i valid} (lse_i - 1/|P(i)| * sum_{p in P(i)} l_ip)
        dL/dl_ij = (|P(i)| * softmax_ij - [j in P(i)]) / (V * |P(i)|)   (0 for invalid rows)

    and ``dL/da = dl @ c / T``, ``dL/dc = dl^T @ a / T``, ``dL/dT = -sum(dl * s) / T^2``.
    """

    @staticmethod
    def forward(ctx, a, c, temperature, anchor_labels, candidate_labels, positions, counts, block):
        t = temperature.detach().to(a.dtype)
        lse = torch.full((len(a),), float("-inf"), dtype=a.dtype, device=a.device)  # (N,)
        positive_sum = torch.zeros(len(a), dtype=a.dtype, device=a.device)  # (N,) sum_p l_ip
        for rows, cols in _tiles(len(a), len(c), block):
            logits = a[rows] @ c[cols].T / t  # (n, m)
            positive, is_self = _tile_masks(anchor_labels, candidate_labels, positions, rows, cols)
            if is_self is not None:
                logits = logits.masked_fill(is_self, float("-inf"))
            # online log-sum-exp: logaddexp keeps the running max and rescales the running sum
            lse[rows] = torch.logaddexp(lse[rows], torch.logsumexp(logits, dim=1))
            positive_sum[rows] += torch.where(positive, logits, torch.zeros_like(logits)).sum(1)
        valid = counts > 0
        loss = (lse[valid] - positive_sum[valid] / counts[valid]).mean()
        ctx.save_for_backward(a, c, temperature, anchor_labels, candidate_labels, lse, counts)
        ctx.has_positions = positions is not None
        if positions is not None:
            ctx.positions = positions.detach()  # an index: not part of the graph
        ctx.block = block
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        a, c, temperature, anchor_labels, candidate_labels, lse, counts = ctx.saved_tensors
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
                p = torch.exp(logits - lse[rows, None])  # (n, m) softmax, 0 on self
                dl = weight[rows, None] * (counts[rows, None] * p - positive.to(a.dtype))
                dl = torch.where(valid[rows, None], dl, torch.zeros_like(dl))  # no 0 * nan
                grad_a[rows] += dl @ c[cols] / t  # (n, D)
                grad_c[cols] += dl.T @ a[rows] / t  # (m, D)
                grad_s_dot_s += (dl * s).sum()
            grad_t = None
            if ctx.needs_input_grad[2]:
                grad_t = (-grad_s_dot_s / t**2).to(temperature.dtype).reshape(temperature.shape)
        return grad_a, grad_c, grad_t, None, None, None, None, None
