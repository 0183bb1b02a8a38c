"""The loss over every rank's batch: what a method calls to see the global batch.

``ContrastiveMethod`` inherits these; a method's loss calls ``self.gather`` (every rank's rows,
with their gradient), ``self.info_nce`` (InfoNCE against them, dense or tiled, with an optional
queue) and ``self.global_ids`` (ids unique across ranks), and never reads distributed state
itself. On one process (or with ``gather_negatives`` off) each is the identity.
"""

from __future__ import annotations

import torch
from torch import Tensor

from contrastive import distributed
from contrastive.losses import Tiling, info_nce, info_nce_tiled
from contrastive.queue import EmbeddingQueue


class GlobalBatch:
    """The global-batch helpers of :class:`~contrastive.methods.ContrastiveMethod` (a mixin of
    a LightningModule with a ``gather_negatives`` flag)."""

    gather_negatives: bool
    device: torch.device

    def gather(
        self, embeddings: Tensor, labels: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """Embeddings and labels from every rank, and where this rank's rows sit among them.

        For losses over the global batch (batch statistics, a cross-correlation, negatives
        from every rank): every rank computes the loss of the gathered rows, and the gradient
        reaching each rank's rows is summed over ranks, so with DDP's gradient averaging the
        update is that of one process on the concatenated batch.

        Args:
            embeddings: ``(N, D)`` this rank's embeddings.
            labels: ``(N,)`` their labels (image ids or classes); ``None`` for none.

        Returns:
            ``(M, D)`` candidates with gradient (``M`` rows from all ranks), their ``(M,)``
            labels (``None`` without labels), and the ``(N,)`` positions of the local rows
            among them. Without ``gather_negatives`` or on one process: the inputs themselves
            and ``arange(N)``.
        """
        if not self.gather_negatives or not distributed.is_distributed():
            return embeddings, labels, torch.arange(len(embeddings), device=embeddings.device)
        gathered = distributed.gather_with_grad(embeddings)
        gathered_labels = None if labels is None else distributed.gather_no_grad(labels)
        return gathered, gathered_labels, self.global_ids(len(embeddings))

    def info_nce(
        self,
        z: Tensor,
        labels: Tensor,
        temperature: float | Tensor,
        tiling: Tiling | None = None,
        queue: EmbeddingQueue | None = None,
        keys: Tensor | None = None,
    ) -> Tensor:
        """InfoNCE of this rank's embeddings against the gathered batch; same label = positive.

        Args:
            z: ``(N, D)`` embeddings (e.g. both views of each image).
            labels: ``(N,)`` labels (image ids repeated per view, or classes).
            temperature: the softmax temperature.
            tiling: when to use :func:`info_nce_tiled` instead of the dense loss.
            queue: past embeddings as extra negatives (never positives). The candidates are
                pushed after the loss (detached): the global batch with ``gather_negatives``,
                so that every rank holds the same queue.
            keys: ``(N, D)`` candidates other than ``z``, labelled by ``labels`` too (another
                view's embeddings, a momentum encoder's keys): ``z`` is classified among the
                gathered keys, and is not among its own candidates. ``None``: ``z`` itself.
        """
        candidates, candidate_labels, positions = self.gather(z if keys is None else keys, labels)
        if keys is not None:
            positions = None  # the anchors are not among the candidates
        negatives = None if queue is None else queue.negatives()  # (K, D)
        args = (z, candidates, labels, candidate_labels, temperature, positions)
        columns = len(candidates) + (0 if negatives is None else len(negatives))
        block_size = None if tiling is None else tiling.block_size(columns)
        if block_size is not None:
            loss = info_nce_tiled(*args, block_size=block_size, negatives=negatives)
        else:
            loss = info_nce(*args, negatives=negatives)
        if queue is not None:
            queue.push(candidates)
        return loss

    def global_ids(self, n: int) -> Tensor:
        """``(n,)`` ids of this rank's rows, unique across ranks (rank-major, as gathered)."""
        return distributed.offset(n, self.device) + torch.arange(n, device=self.device)
