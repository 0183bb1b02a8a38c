"""SwAV: Unsupervised Learning of Visual Features by Contrasting Cluster Assignments."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastive import distributed
from contrastive.gradcache import Embeddings, by_sample
from contrastive.heads import ProjectionHead
from contrastive.losses import sinkhorn_knopp, swav_loss
from contrastive.methods.base import ContrastiveMethod, forward_views
from contrastive.queue import EmbeddingQueue


class SwAV(ContrastiveMethod):
    """SwAV (Caron et al. 2020, arXiv:2006.09882): swapped prediction of cluster codes.

    Each view's normalised projection is scored against ``K`` learnt prototypes. The codes of
    the global views are soft assignments with equal mass on every prototype, computed by
    Sinkhorn-Knopp over the global batch (the sums all-reduced, as SwAV's
    ``distributed_sinkhorn``), with no gradient; every view (multi-crop: local views too)
    predicts each global view's codes but its own. The prototypes are normalised before each
    step and not updated during the first ``freeze_prototypes_steps``, as the paper.

    The optional queue (for batches smaller than ``K``, from ``queue_start_epoch``) keeps the
    last ``queue_size`` projections of each global view, pushed from the global batch; once
    full, its rows join the Sinkhorn problem (each rank takes its share, so every row counts
    once over the ranks, as SwAV's per-GPU queues).

    Args:
        temperature: ``T`` of the prediction's softmax (0.1).
        num_prototypes: ``K`` (3000 for ImageNet).
        projector_hidden_dim: hidden width of the projector (2048).
        projector_dim: its output width, the prototypes' (128).
        sinkhorn_epsilon: the entropy weight of the codes (0.05).
        sinkhorn_iterations: Sinkhorn-Knopp rounds (3).
        freeze_prototypes_steps: optimizer steps without prototype updates (313: one ImageNet
            epoch at batch 4096).
        queue_size: queued projections per global view; 0 for no queue (batches of 4096).
        queue_start_epoch: the epoch from which the queue fills (15).
        separate_views: forward each view on its own, each its own BatchNorm batch
            (:func:`~contrastive.methods.base.forward_views`).
        **kwargs: :class:`ContrastiveMethod` arguments (backbone, augment, optimizer, ...).
    """

    def __init__(
        self,
        temperature: float = 0.1,
        num_prototypes: int = 3000,
        projector_hidden_dim: int = 2048,
        projector_dim: int = 128,
        sinkhorn_epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        freeze_prototypes_steps: int = 313,
        queue_size: int = 0,
        queue_start_epoch: int = 15,
        separate_views: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if min(temperature, sinkhorn_epsilon) <= 0 or sinkhorn_iterations < 1:
            raise ValueError(
                f"expected temperature, sinkhorn_epsilon > 0 and sinkhorn_iterations >= 1, got "
                f"{temperature}, {sinkhorn_epsilon} and {sinkhorn_iterations}"
            )
        if queue_size < 0:
            raise ValueError(f"queue_size must be >= 0 (0: no queue), got {queue_size}")
        self.temperature, self.separate_views = temperature, separate_views
        self.sinkhorn_epsilon, self.sinkhorn_iterations = sinkhorn_epsilon, sinkhorn_iterations
        self.freeze_prototypes_steps = freeze_prototypes_steps
        self.queue_start_epoch = queue_start_epoch
        self.projector = ProjectionHead(
            self.backbone.num_features, projector_hidden_dim, projector_dim
        )
        self.prototypes = nn.Linear(projector_dim, num_prototypes, bias=False)
        self.queues = nn.ModuleList(
            [EmbeddingQueue(queue_size, projector_dim) for _ in range(2)] if queue_size else []
        )

    def training_embeddings(self, batch: dict) -> Embeddings:
        """``{"z": (B, V, D)}`` normalised projections and ``{"scores": (B, V, K)}`` their
        prototype scores, for every view."""
        network = lambda x: F.normalize(self.projector(self.backbone(x)), dim=1)  # noqa: E731
        z = forward_views(network, batch["views"], self.separate_views)  # (V * B, D)
        n = len(batch["views"][0])
        return {"z": by_sample(z, n), "scores": by_sample(self.prototypes(z), n)}

    def loss_from_embeddings(self, embeddings: Embeddings, batch: dict) -> Tensor:
        """Swapped prediction of the global views' Sinkhorn codes."""
        z, scores = embeddings["z"], embeddings["scores"]  # (B, V, D), (B, V, K)
        codes = torch.stack([self._codes(scores[:, g], g) for g in range(2)], dim=1)  # (B, 2, K)
        if self.queues and self.current_epoch >= self.queue_start_epoch:
            for g, queue in enumerate(self.queues):
                queue.push(self.gather(z[:, g].detach())[0])  # every rank's rows
        return swav_loss(scores, codes, self.temperature)

    @torch.no_grad()
    def _codes(self, scores: Tensor, view: int) -> Tensor:
        """``(B, K)`` Sinkhorn codes of one global view, over the global batch and the queue."""
        batch = scores.detach()  # (B, K)
        if self.queues and self.queues[view].is_full:
            queued = self.queues[view].negatives()  # (Q, D), the same on every rank
            if self.gather_negatives:  # this rank's share: every row counted once in the sums
                queued = queued[distributed.rank() :: distributed.world_size()]
            scores = torch.cat([self.prototypes(queued), batch])  # (Q' + B, K)
        else:
            scores = batch
        reduce = distributed.all_reduce_sum if self.gather_negatives else None
        codes = sinkhorn_knopp(
            scores, self.sinkhorn_epsilon, self.sinkhorn_iterations, all_reduce=reduce
        )
        return codes[len(scores) - len(batch) :]  # the batch's rows

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        with torch.no_grad():  # the prototypes on the unit sphere before each step
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def on_after_backward(self) -> None:
        if self.global_step < self.freeze_prototypes_steps:
            self.prototypes.weight.grad = None
