"""SimCLR: A Simple Framework for Contrastive Learning of Visual Representations."""

from __future__ import annotations

from torch import Tensor

from contrastive.gradcache import Embeddings, by_sample, by_view
from contrastive.heads import ProjectionHead
from contrastive.losses import Tiling
from contrastive.methods.base import ContrastiveMethod, forward_views
from contrastive.queue import EmbeddingQueue


class SimCLR(ContrastiveMethod):
    """SimCLR (Chen et al. 2020, arXiv:2002.05709): NT-Xent between two views of each image.

    Each of the 2B views in the batch is an anchor; its positive is the other view of the same
    image and its negatives are the other 2B - 2 views, gathered from every rank by default.
    With multi-crop (``V`` views per image), every other view of the image is a positive (the
    mean over positives, as solo-learn does).

    Args:
        temperature: the NT-Xent temperature (0.1 in the paper's CIFAR-10 runs).
        projector_hidden_dim: hidden width of the projection MLP.
        projector_dim: output width of the projection MLP (the space the loss sees).
        projector_layers: number of linear layers of the projection MLP.
        tiled: compute the loss with :func:`info_nce_tiled`, in memory linear in the global
            batch instead of quadratic; same value and gradients, one extra matmul pass.
        tile_size: rows and columns per tile when ``tiled``.
        tile_above: tile automatically when the gathered candidates are more than this (the
            dense ``(N, M)`` logits and their gradient would take ~1 GB at 8192 x 8192);
            ``None`` never does.
        separate_views: forward each view on its own, so each is its own BatchNorm batch (as in
            lightly and solo-learn) and no batch statistic mixes an image's two views. False:
            one batch of both views, BatchNorm over both as in the paper
            (:func:`~contrastive.methods.base.forward_views`).
        queue_size: keep the last this many projections (2 per image, from every rank) as
            extra negatives, MoCo-style (``queue.py``; no momentum encoder, so they are slightly
            stale); 0: no queue.
        **kwargs: :class:`ContrastiveMethod` arguments (backbone, augment, optimizer,
            ``chunk_size``: with gradient caching, the projector's hidden BatchNorm normalises
            each chunk on its own; ``projector_layers=1`` has none).
    """

    def __init__(
        self,
        temperature: float = 0.1,
        projector_hidden_dim: int = 2048,
        projector_dim: int = 128,
        projector_layers: int = 2,
        tiled: bool = False,
        tile_size: int = 1024,
        tile_above: int | None = 8192,
        queue_size: int = 0,
        separate_views: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if tile_size < 1:
            raise ValueError(f"tile_size must be >= 1, got {tile_size}")
        if queue_size < 0:
            raise ValueError(f"queue_size must be >= 0 (0: no queue), got {queue_size}")
        self.temperature = temperature
        self.tiling = Tiling(tiled, tile_size, tile_above)
        self.projector = ProjectionHead(
            self.backbone.num_features, projector_hidden_dim, projector_dim, projector_layers
        )
        self.queue = EmbeddingQueue(queue_size, projector_dim) if queue_size else None
        self.separate_views = separate_views

    def training_embeddings(self, batch: dict) -> Embeddings:
        """``{"z": (B, V, D)}``: the projections of every view of each image."""
        network = lambda views: self.projector(self.backbone(views))  # noqa: E731
        z = forward_views(network, batch["views"], self.separate_views)  # (V * B, D)
        return {"z": by_sample(z, len(batch["views"][0]))}  # (B, V, D)

    def loss_from_embeddings(self, embeddings: Embeddings, batch: dict) -> Tensor:
        """InfoNCE over every view of the global batch; same label = positive pair."""
        z = by_view(embeddings["z"])  # (V * B, D): first views, then second views, ...
        labels = self.positive_labels(batch).repeat(embeddings["z"].shape[1])  # (V * B,)
        return self.info_nce(z, labels, self.temperature, self.tiling, self.queue)

    def positive_labels(self, batch: dict) -> Tensor:
        """``(B,)`` one label per image, shared by its two views: image ids, unique across
        ranks (each image's only positive is its other view)."""
        return self.global_ids(len(batch["views"][0]))
