"""MoCo v2: Improved Baselines with Momentum Contrastive Learning."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contrastive.ema import frozen_copy
from contrastive.gradcache import Embeddings, by_sample
from contrastive.heads import ProjectionHead
from contrastive.losses import cross_view_pairs, moco_loss
from contrastive.methods.base import forward_views
from contrastive.methods.momentum import MomentumMethod
from contrastive.queue import EmbeddingQueue


class MoCoV2(MomentumMethod):
    """MoCo v2 (Chen, Fan, Girshick, He 2020, arXiv:2003.04297) on MoCo (He et al. 2020,
    arXiv:1911.05722): queries against their key and a queue of past keys.

    The query encoder (backbone and MLP head) is trained; the key encoder is its momentum
    copy (:class:`MomentumMethod`). Each query's positive is its image's key from the key
    encoder; its negatives are the queue, the keys of the last ``queue_size`` images (of every
    rank: every rank pushes the gathered keys, so all hold the same queue), pushed after each
    step's loss. The loss is symmetrised (each view is a query for the other's key, as in
    solo-learn's MoCo v2+ and MoCo v3; the paper's Algorithm 1 has one direction), and with
    multi-crop every view is a query for each global view's key but its own.

    MoCo's shuffled BatchNorm (keys normalised in a batch shuffled across GPUs) is not
    implemented: the key encoder normalises each rank's batch, as solo-learn and lightly do.

    Args:
        temperature: ``T`` (0.2 in MoCo v2).
        projector_hidden_dim: hidden width of the MLP head (2048).
        projector_dim: its output width, the keys' (128).
        queue_size: ``K``, queued keys (65536).
        base_momentum: key encoder momentum at step 0 (0.999).
        final_momentum: at the last step (0.999: constant, as the paper; 1.0 for a cosine
            rise as BYOL's).
        separate_views: forward each view on its own, each its own BatchNorm batch
            (:func:`~contrastive.methods.base.forward_views`).
        **kwargs: :class:`ContrastiveMethod` arguments (backbone, augment, optimizer, ...).
    """

    def __init__(
        self,
        temperature: float = 0.2,
        projector_hidden_dim: int = 2048,
        projector_dim: int = 128,
        queue_size: int = 65536,
        base_momentum: float = 0.999,
        final_momentum: float = 0.999,
        separate_views: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(base_momentum=base_momentum, final_momentum=final_momentum, **kwargs)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature, self.separate_views = temperature, separate_views
        # MoCo v2's head: an MLP without BatchNorm.
        self.projector = ProjectionHead(
            self.backbone.num_features, projector_hidden_dim, projector_dim, batch_norm=False
        )
        self.key_backbone = frozen_copy(self.backbone)
        self.key_projector = frozen_copy(self.projector)
        self.queue = EmbeddingQueue(queue_size, projector_dim)

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.key_backbone, self.backbone), (self.key_projector, self.projector)]

    def training_embeddings(self, batch: dict) -> Embeddings:
        """``{"q": (B, V, D)}`` queries of every view, ``{"k": (B, 2, D)}`` keys of the global
        views (no gradient)."""
        views, n = batch["views"], len(batch["views"][0])
        query = lambda x: self.projector(self.backbone(x))  # noqa: E731
        key = lambda x: self.key_projector(self.key_backbone(x))  # noqa: E731
        q = forward_views(query, views, self.separate_views)  # (V * B, D)
        with torch.no_grad():
            k = forward_views(key, views[:2], self.separate_views)  # (2B, D)
        return {"q": by_sample(q, n), "k": by_sample(k, n)}

    def loss_from_embeddings(self, embeddings: Embeddings, batch: dict) -> Tensor:
        """The mean MoCo loss over (query view, key view) pairs; then the keys are queued."""
        q, k = embeddings["q"], embeddings["k"]  # (B, V, D), (B, 2, D)
        queue = self.queue.negatives()  # (K, D), the same for every pair
        pairs = cross_view_pairs(q.shape[1])
        loss = sum(moco_loss(q[:, v], k[:, g], queue, self.temperature) for v, g in pairs)
        for g in range(k.shape[1]):
            self.queue.push(self.gather(k[:, g])[0])  # (global B, D), every rank's keys
        return loss / len(pairs)
