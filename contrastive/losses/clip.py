"""Image-text losses: CLIP's symmetric cross-entropy and SigLIP's pairwise sigmoid."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from contrastive.losses.infonce import info_nce
from contrastive.losses.tiled import info_nce_tiled


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
