"""BYOL: Bootstrap Your Own Latent."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from contrastive.ema import cosine_momentum, ema_update, frozen_copy
from contrastive.heads import PredictionHead, ProjectionHead
from contrastive.losses import byol_loss
from contrastive.methods.base import ContrastiveMethod, forward_views


class BYOL(ContrastiveMethod):
    """BYOL (Grill et al. 2020, arXiv:2006.07733): predict a slow target's projection, no negatives.

    The online network (backbone, projector, predictor) is trained to predict the target
    network's projection of the other view; the target (backbone, projector) is an exponential
    moving average of the online one, with momentum rising from ``base_momentum`` to
    ``final_momentum`` on a cosine schedule, per step. The target gets no gradient and no
    optimizer state; it stays identical on every rank because the online weights (and, with
    DDP's buffer broadcast, the BatchNorm statistics it copies) are.

    Args:
        projector_hidden_dim: hidden width of the projector (4096 in the paper).
        projector_dim: output width of the projector and the predictor (256).
        predictor_hidden_dim: hidden width of the predictor (4096).
        base_momentum: target momentum at step 0 (0.996).
        final_momentum: target momentum at the last step (1.0).
        representation: what ``embed`` returns: the pooled ``backbone`` features (the paper's
            choice) or the ``projector`` output.
        separate_views: forward each view on its own, each its own BatchNorm batch, as BYOL's
            and lightly's code do; False: one batch of both views
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
        super().__init__(**kwargs)
        if not 0.0 <= base_momentum <= final_momentum <= 1.0:
            raise ValueError(
                f"expected 0 <= base_momentum <= final_momentum <= 1, got {base_momentum} "
                f"and {final_momentum}"
            )
        self.base_momentum, self.final_momentum = base_momentum, final_momentum
        self.representation = representation
        self.separate_views = separate_views
        dim = self.backbone.num_features
        self.projector = ProjectionHead(dim, projector_hidden_dim, projector_dim)
        self.predictor = PredictionHead(projector_dim, predictor_hidden_dim, projector_dim)
        self.target_backbone = frozen_copy(self.backbone)
        self.target_projector = frozen_copy(self.projector)
        self.momentum = base_momentum
        self._ema_step = 0  # the optimizer step the target was last updated at

    def training_loss(self, batch: dict) -> Tensor:
        views, separate = batch["views"], self.separate_views
        online = lambda x: self.predictor(self.projector(self.backbone(x)))  # noqa: E731
        target = lambda x: self.target_projector(self.target_backbone(x))  # noqa: E731
        predictions = forward_views(online, views, separate)  # (2B, D): view 1 then view 2
        with torch.no_grad():
            targets = forward_views(target, views, separate)  # (2B, D)
        # Each view's prediction regresses the *other* view's target: swap the halves.
        swapped = torch.cat(targets.chunk(2)[::-1])  # (2B, D)
        return byol_loss(predictions, swapped)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.global_step == self._ema_step:  # accumulating gradients: no optimizer step yet
            return
        self._ema_step = self.global_step
        total = int(self.trainer.estimated_stepping_batches)
        self.momentum = cosine_momentum(
            self.global_step, total, self.base_momentum, self.final_momentum
        )
        ema_update(self.target_backbone, self.backbone, self.momentum)
        ema_update(self.target_projector, self.projector, self.momentum)
        self.log("train/momentum", self.momentum)

    def represent(self, views: Tensor) -> Tensor:
        features = self.backbone(views)  # (B, num_features)
        return self.projector(features) if self.representation == "projector" else features
