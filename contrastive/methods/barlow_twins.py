"""Barlow Twins: Self-Supervised Learning via Redundancy Reduction."""

from __future__ import annotations

from torch import Tensor

from contrastive import distributed
from contrastive.gradcache import Embeddings, by_sample
from contrastive.heads import MLPHead
from contrastive.losses import barlow_twins_loss, cross_view_pairs
from contrastive.methods.base import ContrastiveMethod, forward_views


class BarlowTwins(ContrastiveMethod):
    """Barlow Twins (Zbontar et al. 2021, arXiv:2103.03230): the cross-correlation of the two
    views' batch-normalised embeddings is pushed towards the identity.

    The batch statistics and the cross-correlation matrix are summed over ranks (as the
    authors' code: SyncBatchNorm, then ``all_reduce`` of ``C``), so the loss is that of the
    global batch. With multi-crop, every pair of views with a global one is compared.

    Args:
        projector_hidden_dim: hidden width of the projector (8192).
        projector_dim: its output width (8192).
        projector_layers: its Linear layers (3).
        lambda_offdiag: ``lambda``, the weight of the redundancy terms (5e-3).
        separate_views: forward each view on its own, each its own BatchNorm batch
            (:func:`~contrastive.methods.base.forward_views`).
        **kwargs: :class:`ContrastiveMethod` arguments (backbone, augment, optimizer, ...).
    """

    def __init__(
        self,
        projector_hidden_dim: int = 8192,
        projector_dim: int = 8192,
        projector_layers: int = 3,
        lambda_offdiag: float = 5e-3,
        separate_views: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if lambda_offdiag < 0:
            raise ValueError(f"lambda_offdiag must be >= 0, got {lambda_offdiag}")
        self.lambda_offdiag, self.separate_views = lambda_offdiag, separate_views
        self.projector = MLPHead(
            self.backbone.num_features, projector_hidden_dim, projector_dim, projector_layers
        )

    def training_embeddings(self, batch: dict) -> Embeddings:
        """``{"z": (B, V, D)}``: the projections of every view."""
        network = lambda x: self.projector(self.backbone(x))  # noqa: E731
        z = forward_views(network, batch["views"], self.separate_views)  # (V * B, D)
        return {"z": by_sample(z, len(batch["views"][0]))}

    def loss_from_embeddings(self, embeddings: Embeddings, batch: dict) -> Tensor:
        """Barlow Twins over the global batch, the mean over pairs of views."""
        z = embeddings["z"]  # (B, V, D)
        reduce = distributed.all_reduce_sum if self.gather_negatives else None
        pairs = cross_view_pairs(z.shape[1], symmetric=True)
        losses = [
            barlow_twins_loss(z[:, v], z[:, g], self.lambda_offdiag, all_reduce=reduce)
            for v, g in pairs
        ]
        return sum(losses) / len(pairs)
