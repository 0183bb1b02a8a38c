"""VICReg: Variance-Invariance-Covariance Regularization for Self-Supervised Learning."""

from __future__ import annotations

from torch import Tensor

from contrastive.gradcache import Embeddings, by_sample
from contrastive.heads import MLPHead
from contrastive.losses import cross_view_pairs, vicreg_loss
from contrastive.methods.base import ContrastiveMethod, forward_views


class VICReg(ContrastiveMethod):
    """VICReg (Bardes, Ponce, LeCun 2022, arXiv:2105.04906): invariance between the views'
    embeddings, a variance hinge and a covariance penalty on each, no negatives.

    The expander's outputs are gathered from every rank with their gradient, so the variance
    and covariance are those of the global batch, as the authors' code (``FullGatherLayer``).
    With multi-crop, every pair of views with a global one is compared.

    Args:
        projector_hidden_dim: hidden width of the expander (8192).
        projector_dim: its output width (8192).
        projector_layers: its Linear layers (3).
        invariance_weight: ``lambda`` (25).
        variance_weight: ``mu`` (25).
        covariance_weight: ``nu`` (1).
        separate_views: forward each view on its own, each its own BatchNorm batch
            (:func:`~contrastive.methods.base.forward_views`).
        **kwargs: :class:`ContrastiveMethod` arguments (backbone, augment, optimizer, ...).
    """

    def __init__(
        self,
        projector_hidden_dim: int = 8192,
        projector_dim: int = 8192,
        projector_layers: int = 3,
        invariance_weight: float = 25.0,
        variance_weight: float = 25.0,
        covariance_weight: float = 1.0,
        separate_views: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.weights = (invariance_weight, variance_weight, covariance_weight)
        self.separate_views = separate_views
        self.projector = MLPHead(
            self.backbone.num_features, projector_hidden_dim, projector_dim, projector_layers
        )

    def training_embeddings(self, batch: dict) -> Embeddings:
        """``{"z": (B, V, D)}``: the expander outputs of every view."""
        network = lambda x: self.projector(self.backbone(x))  # noqa: E731
        z = forward_views(network, batch["views"], self.separate_views)  # (V * B, D)
        return {"z": by_sample(z, len(batch["views"][0]))}

    def loss_from_embeddings(self, embeddings: Embeddings, batch: dict) -> Tensor:
        """VICReg over the global batch, the mean over pairs of views."""
        z = embeddings["z"]  # (B, V, D)
        pairs = cross_view_pairs(z.shape[1], symmetric=True)
        gathered = [self.gather(z[:, v])[0] for v in range(z.shape[1])]  # (global B, D) each
        losses = [vicreg_loss(gathered[v], gathered[g], *self.weights) for v, g in pairs]
        return sum(losses) / len(pairs)
