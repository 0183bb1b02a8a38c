"""MoCo v3: An Empirical Study of Training Self-Supervised Vision Transformers."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contrastive.ema import frozen_copy
from contrastive.gradcache import Embeddings, by_sample
from contrastive.heads import MLPHead
from contrastive.losses import Tiling, cross_view_pairs
from contrastive.methods.base import forward_views
from contrastive.methods.momentum import MomentumMethod


class MoCoV3(MomentumMethod):
    """MoCo v3 (Chen, Xie, He 2021, arXiv:2104.02057): a predictor on the query side and
    InfoNCE against the momentum encoder's keys of the global batch, no queue.

    Each view's prediction ``q`` is classified among the keys ``k`` of the other view of every
    image of the global batch (gathered from every rank), its own image's key the positive;
    both directions are summed, each scaled by ``2T`` as in the authors' code. The momentum
    encoder (backbone and projector) follows with a momentum from 0.99 to 1 (cosine). With
    multi-crop every view is a query for each global view's keys but its own. ResNets and ViTs
    (``--model.backbone timm:vit_small_patch16_224``) alike; ``tiled`` and ``chunk_size`` let
    the batch grow past memory.

    Args:
        temperature: ``T`` (0.2, the paper's for ViTs; the authors' ResNet-50 runs use 1.0).
        projector_hidden_dim: hidden width of the projector and predictor (4096).
        projector_dim: their output width (256).
        projector_layers: Linear layers of the projector (2 for ResNets, 3 for ViTs); it ends
            in a BatchNorm without affine parameters, as the paper's.
        predictor_hidden_dim: hidden width of the 2-layer predictor (4096).
        base_momentum: momentum at step 0 (0.99).
        final_momentum: at the last step (1.0).
        tiled: compute the loss with :func:`~contrastive.losses.info_nce_tiled`, in memory
            linear in the global batch.
        tile_size: rows and columns per tile when ``tiled``.
        tile_above: tile automatically above this many gathered keys; ``None`` never does.
        separate_views: forward each view on its own, each its own BatchNorm batch
            (:func:`~contrastive.methods.base.forward_views`).
        **kwargs: :class:`ContrastiveMethod` arguments (backbone, augment, optimizer,
            ``chunk_size``, ...).
    """

    def __init__(
        self,
        temperature: float = 0.2,
        projector_hidden_dim: int = 4096,
        projector_dim: int = 256,
        projector_layers: int = 2,
        predictor_hidden_dim: int = 4096,
        base_momentum: float = 0.99,
        final_momentum: float = 1.0,
        tiled: bool = False,
        tile_size: int = 1024,
        tile_above: int | None = 8192,
        separate_views: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(base_momentum=base_momentum, final_momentum=final_momentum, **kwargs)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if tile_size < 1:
            raise ValueError(f"tile_size must be >= 1, got {tile_size}")
        self.temperature, self.separate_views = temperature, separate_views
        self.tiling = Tiling(tiled, tile_size, tile_above)
        self.projector = MLPHead(
            self.backbone.num_features,
            projector_hidden_dim,
            projector_dim,
            projector_layers,
            last_batch_norm=True,
        )
        self.predictor = MLPHead(projector_dim, predictor_hidden_dim, projector_dim)
        self.momentum_backbone = frozen_copy(self.backbone)
        self.momentum_projector = frozen_copy(self.projector)

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [
            (self.momentum_backbone, self.backbone),
            (self.momentum_projector, self.projector),
        ]

    def training_embeddings(self, batch: dict) -> Embeddings:
        """``{"q": (B, V, D)}`` predictions of every view, ``{"k": (B, 2, D)}`` momentum keys
        of the global views (no gradient)."""
        views, n = batch["views"], len(batch["views"][0])
        query = lambda x: self.predictor(self.projector(self.backbone(x)))  # noqa: E731
        key = lambda x: self.momentum_projector(self.momentum_backbone(x))  # noqa: E731
        q = forward_views(query, views, self.separate_views)  # (V * B, D)
        with torch.no_grad():
            k = forward_views(key, views[:2], self.separate_views)  # (2B, D)
        return {"q": by_sample(q, n), "k": by_sample(k, n)}

    def loss_from_embeddings(self, embeddings: Embeddings, batch: dict) -> Tensor:
        """``2T`` times InfoNCE of the queries among the gathered keys, per direction."""
        q, k = embeddings["q"], embeddings["k"]  # (B, V, D), (B, 2, D)
        ids = self.global_ids(len(q))  # (B,) a query's positive is its own image's key
        pairs = cross_view_pairs(q.shape[1])
        losses = [
            self.info_nce(q[:, v], ids, self.temperature, self.tiling, keys=k[:, g])
            for v, g in pairs
        ]
        # The authors' code: CE * 2T per direction, the two directions summed.
        return 2 * self.temperature * sum(losses) * 2 / len(pairs)
