"""SimCLR: A Simple Framework for Contrastive Learning of Visual Representations."""

from __future__ import annotations

import torch
from torch import Tensor

from contrastive.heads import ProjectionHead
from contrastive.losses import Tiling
from contrastive.methods.base import ContrastiveMethod


class SimCLR(ContrastiveMethod):
    """SimCLR (Chen et al. 2020, arXiv:2002.05709): NT-Xent between two views of each image.

    Each of the 2B views in the batch is an anchor; its positive is the other view of the same
    image and its negatives are the other 2B - 2 views, gathered from every rank by default.

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
        **kwargs: :class:`ContrastiveMethod` arguments (backbone, augment, optimizer, ...).
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
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if tile_size < 1:
            raise ValueError(f"tile_size must be >= 1, got {tile_size}")
        self.temperature = temperature
        self.tiling = Tiling(tiled, tile_size, tile_above)
        self.projector = ProjectionHead(
            self.backbone.num_features, projector_hidden_dim, projector_dim, projector_layers
        )

    def training_loss(self, batch: dict) -> Tensor:
        return self.contrast(batch, self.global_ids(len(batch["views"][0])))  # (B,) image ids

    def contrast(self, batch: dict, labels: Tensor) -> Tensor:
        """InfoNCE over both views of the global batch; same label = positive pair.

        Args:
            batch: the training batch, with its two ``"views"``.
            labels: ``(B,)`` one label per image, shared by its two views.
        """
        z = self.projector(self.backbone(torch.cat(batch["views"])))  # (2B, D)
        labels = labels.repeat(2)  # (2B,)
        return self.info_nce(z, labels, self.temperature, self.tiling)
