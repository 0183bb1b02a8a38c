"""SimSiam: Exploring Simple Siamese Representation Learning."""

from __future__ import annotations

from torch import Tensor

from contrastive.gradcache import Embeddings, by_sample
from contrastive.heads import MLPHead
from contrastive.losses import cross_view_pairs, negative_cosine
from contrastive.methods.base import ContrastiveMethod, forward_views


class SimSiam(ContrastiveMethod):
    """SimSiam (Chen and He 2021, arXiv:2011.10566): a predictor and a stop-gradient, no
    negatives and no momentum encoder.

    Each view's prediction ``p`` regresses the other view's projection ``z``, detached, by
    negative cosine similarity, symmetrised; with multi-crop every view predicts each global
    view's projection but its own.

    Args:
        projector_hidden_dim: hidden width of the projector (2048).
        projector_dim: its output width (2048); it ends in a BatchNorm without affine
            parameters, as the paper's.
        projector_layers: its Linear layers (3).
        predictor_hidden_dim: the predictor's bottleneck (512).
        separate_views: forward each view on its own, each its own BatchNorm batch
            (:func:`~contrastive.methods.base.forward_views`).
        **kwargs: :class:`ContrastiveMethod` arguments (backbone, augment, optimizer, ...).
    """

    def __init__(
        self,
        projector_hidden_dim: int = 2048,
        projector_dim: int = 2048,
        projector_layers: int = 3,
        predictor_hidden_dim: int = 512,
        separate_views: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.separate_views = separate_views
        self.projector = MLPHead(
            self.backbone.num_features,
            projector_hidden_dim,
            projector_dim,
            projector_layers,
            last_batch_norm=True,
        )
        self.predictor = MLPHead(projector_dim, predictor_hidden_dim, projector_dim)

    def training_embeddings(self, batch: dict) -> Embeddings:
        """``{"p": (B, V, D)}`` predictions of every view, ``{"z": (B, 2, D)}`` projections of
        the global views."""
        z = forward_views(
            lambda x: self.projector(self.backbone(x)), batch["views"], self.separate_views
        )  # (V * B, D)
        n = len(batch["views"][0])
        return {"p": by_sample(self.predictor(z), n), "z": by_sample(z[: 2 * n], n)}

    def loss_from_embeddings(self, embeddings: Embeddings, batch: dict) -> Tensor:
        """``D(p_v, stopgrad(z_g))`` averaged over view pairs."""
        p, z = embeddings["p"], embeddings["z"].detach()  # (B, V, D), (B, 2, D)
        pairs = cross_view_pairs(p.shape[1])
        return sum(negative_cosine(p[:, v], z[:, g]) for v, g in pairs) / len(pairs)
