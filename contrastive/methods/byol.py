"""BYOL: Bootstrap Your Own Latent."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from contrastive.ema import frozen_copy
from contrastive.gradcache import Embeddings, by_sample
from contrastive.heads import PredictionHead, ProjectionHead
from contrastive.losses import byol_loss, cross_view_pairs
from contrastive.methods.base import forward_views
from contrastive.methods.momentum import MomentumMethod


class BYOL(MomentumMethod):
    """BYOL (Grill et al. 2020, arXiv:2006.07733): predict a slow target's projection, no negatives.

    The online network (backbone, projector, predictor) is trained to predict the target
    network's projection of the other view; the target (backbone, projector) is an exponential
    moving average of the online one (:class:`MomentumMethod`: momentum from
    ``base_momentum`` 0.996 to ``final_momentum`` 1.0 on a cosine schedule, per step). With
    multi-crop, the target sees the global views only and every view's prediction regresses
    each global view's target but its own, as in solo-learn.

    Args:
        projector_hidden_dim: hidden width of the projector (4096 in the paper).
        projector_dim: output width of the projector and the predictor (256).
        predictor_hidden_dim: hidden width of the predictor (4096).
        base_momentum: target momentum at step 0 (0.996).
        final_momentum: target momentum at the last step (1.0).
        representation: what ``embed`` returns: the pooled ``backbone`` features (the paper's
            choice) or the ``projector`` output.
        separate_views: forward each view on its own, each its own BatchNorm batch, as BYOL's
            and lightly's code do; False: one batch of the views of a size
            (:func:`~contrastive.methods.base.forward_views`).
        **kwargs: :class:`ContrastiveMethod` arguments (backbone, augment, optimizer, ...).
    """

    def __init__(
        self,
        projector_hidden_dim: int = 4096,
        projector_dim: int = 256,
        predictor_hidden_dim: int = 4096,
        base_momentum: float = 0.996,
        final_momentum: float = 1.0,
        representation: Literal["backbone", "projector"] = "backbone",
        separate_views: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(base_momentum=base_momentum, final_momentum=final_momentum, **kwargs)
        self.representation = representation
        self.separate_views = separate_views
        dim = self.backbone.num_features
        self.projector = ProjectionHead(dim, projector_hidden_dim, projector_dim)
        self.predictor = PredictionHead(projector_dim, predictor_hidden_dim, projector_dim)
        self.target_backbone = frozen_copy(self.backbone)
        self.target_projector = frozen_copy(self.projector)

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.target_backbone, self.backbone), (self.target_projector, self.projector)]

    def training_embeddings(self, batch: dict) -> Embeddings:
        """``{"p": (B, V, D)}`` online predictions of every view, ``{"z": (B, 2, D)}`` target
        projections of the global views (no gradient)."""
        views, separate, n = batch["views"], self.separate_views, len(batch["views"][0])
        online = lambda x: self.predictor(self.projector(self.backbone(x)))  # noqa: E731
        target = lambda x: self.target_projector(self.target_backbone(x))  # noqa: E731
        predictions = forward_views(online, views, separate)  # (V * B, D)
        with torch.no_grad():
            targets = forward_views(target, views[:2], separate)  # (2B, D)
        return {"p": by_sample(predictions, n), "z": by_sample(targets, n)}

    def loss_from_embeddings(self, embeddings: Embeddings, batch: dict) -> Tensor:
        """Each view's prediction regresses the *other* global views' targets (symmetrised)."""
        p, z = embeddings["p"], embeddings["z"]  # (B, V, D), (B, 2, D)
        pairs = cross_view_pairs(p.shape[1])
        return sum(byol_loss(p[:, v], z[:, g]) for v, g in pairs) / len(pairs)

    def embed(self, images: Tensor) -> Tensor:
        features = super().embed(images)  # (B, num_features)
        return self.projector(features) if self.representation == "projector" else features
