"""Contrastive losses as pure functions of tensors.

A loss never reads distributed state or the Trainer: the method gathers embeddings from every
rank (``distributed.gather_with_grad``) and passes them in, with the positions of its own
anchors among the gathered candidates. That makes every loss testable on one process.

One file per family: ``infonce`` (NT-Xent, SupCon), ``tiled`` (the same in linear memory),
``clip`` (CLIP, SigLIP), ``byol``.
"""

from contrastive.losses.byol import byol_loss
from contrastive.losses.clip import clip_loss, siglip_loss
from contrastive.losses.infonce import info_nce
from contrastive.losses.tiled import Tiling, info_nce_tiled

__all__ = ["Tiling", "byol_loss", "clip_loss", "info_nce", "info_nce_tiled", "siglip_loss"]
