"""NNCLR: With a Little Help from My Friends, Nearest-Neighbor Contrastive Learning."""

from __future__ import annotations

from torch import Tensor

from contrastive.gradcache import Embeddings, by_sample
from contrastive.heads import MLPHead
from contrastive.losses import Tiling, cross_view_pairs
from contrastive.methods.base import ContrastiveMethod, forward_views
from contrastive.queue import EmbeddingQueue


class NNCLR(ContrastiveMethod):
    """NNCLR (Dwibedi et al. 2021, arXiv:2104.14548): the nearest neighbour of a view's
    projection in a support set of past projections is its positive.

    For each image, the nearest neighbour ``NN(z_g)`` of a global view's projection in the
    support set (cosine, no gradient) is classified among the predictions ``p`` of the other
    view of every image of the global batch (gathered from every rank), its own image's the
    positive (eq. 3); symmetrised over the views (multi-crop: every view's predictions for
    each global view but its own). The support set is a queue of the first view's
    projections of the global batch, pushed after each step (every rank holds the same);
    while it is empty a projection is its own neighbour.

    Args:
        temperature: ``tau`` (0.1).
        projector_hidden_dim: hidden width of the 3-layer projector (2048).
        projector_dim: its output width, the support set's (256).
        predictor_hidden_dim: hidden width of the 2-layer predictor (4096).
        queue_size: the support set's size (98304).
        tiled: compute the loss with :func:`~contrastive.losses.info_nce_tiled`, in memory
            linear in the global batch.
        tile_size: rows and columns per tile when ``tiled``.
        tile_above: tile automatically above this many gathered candidates; ``None`` never.
        separate_views: forward each view on its own, each its own BatchNorm batch
            (:func:`~contrastive.methods.base.forward_views`).
        **kwargs: :class:`ContrastiveMethod` arguments (backbone, augment, optimizer,
            ``chunk_size``, ...).
    """

    def __init__(
        self,
        temperature: float = 0.1,
        projector_hidden_dim: int = 2048,
        projector_dim: int = 256,
        predictor_hidden_dim: int = 4096,
        queue_size: int = 98304,
        tiled: bool = False,
        tile_size: int = 1024,
        tile_above: int | None = 8192,
        separate_views: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if tile_size < 1:
            raise ValueError(f"tile_size must be >= 1, got {tile_size}")
        self.temperature, self.separate_views = temperature, separate_views
        self.tiling = Tiling(tiled, tile_size, tile_above)
        self.projector = MLPHead(
            self.backbone.num_features, projector_hidden_dim, projector_dim, 3, last_batch_norm=True
        )
        self.predictor = MLPHead(projector_dim, predictor_hidden_dim, projector_dim)
        self.support = EmbeddingQueue(queue_size, projector_dim)

    def training_embeddings(self, batch: dict) -> Embeddings:
        """``{"z": (B, 2, D)}`` projections of the global views, ``{"p": (B, V, D)}``
        predictions of every view."""
        z = forward_views(
            lambda x: self.projector(self.backbone(x)), batch["views"], self.separate_views
        )  # (V * B, D)
        n = len(batch["views"][0])
        return {"z": by_sample(z[: 2 * n], n), "p": by_sample(self.predictor(z), n)}

    def loss_from_embeddings(self, embeddings: Embeddings, batch: dict) -> Tensor:
        """InfoNCE of each neighbour among the gathered predictions, mean over view pairs."""
        z, p = embeddings["z"], embeddings["p"]  # (B, 2, D), (B, V, D)
        ids = self.global_ids(len(z))  # (B,) the positive is the same image's prediction
        neighbours = [self.support.nearest(z[:, g]) for g in range(2)]  # (B, D) each, detached
        pairs = cross_view_pairs(p.shape[1])
        losses = [
            self.info_nce(neighbours[g], ids, self.temperature, self.tiling, keys=p[:, v])
            for v, g in pairs
        ]
        self.support.push(self.gather(z[:, 0].detach())[0])  # every rank's first views
        return sum(losses) / len(pairs)
