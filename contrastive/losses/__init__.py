"""Contrastive and self-supervised losses as pure functions of tensors.

A loss never reads distributed state or the Trainer: the method gathers embeddings from every
rank (``distributed.gather_with_grad``) and passes them in, with the positions of its own
anchors among the gathered candidates, or passes the sum over ranks (``all_reduce``) for
losses built on batch statistics. That makes every loss testable on one process.

One file per family: ``infonce`` (NT-Xent, SupCon, MoCo v3, NNCLR), ``tiled`` (the same in
linear memory), ``clip`` (CLIP, SigLIP), ``byol``, ``moco`` (MoCo v2's queue), ``simsiam``,
``barlow_twins``, ``vicreg``, ``dino``, ``swav``; ``pairs`` says which views a multi-view
loss compares.
"""

from contrastive.losses.barlow_twins import barlow_twins_loss
from contrastive.losses.byol import byol_loss
from contrastive.losses.clip import clip_loss, siglip_loss
from contrastive.losses.dino import dino_loss
from contrastive.losses.infonce import info_nce
from contrastive.losses.moco import moco_loss
from contrastive.losses.pairs import cross_view_pairs
from contrastive.losses.simsiam import negative_cosine
from contrastive.losses.swav import sinkhorn_knopp, swav_loss
from contrastive.losses.tiled import Tiling, info_nce_tiled
from contrastive.losses.vicreg import vicreg_loss

__all__ = [
    "Tiling",
    "barlow_twins_loss",
    "byol_loss",
    "clip_loss",
    "cross_view_pairs",
    "dino_loss",
    "info_nce",
    "info_nce_tiled",
    "moco_loss",
    "negative_cosine",
    "siglip_loss",
    "sinkhorn_knopp",
    "swav_loss",
    "vicreg_loss",
]
