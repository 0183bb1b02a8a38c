"""A queue of past embeddings, used as extra negatives (MoCo's dictionary)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class EmbeddingQueue(nn.Module):
    """A FIFO of the last ``size`` embeddings pushed, as in MoCo (He et al. 2020,
    arXiv:1911.05722): each step's loss sees them as negatives, then the step's own (gathered,
    detached) embeddings are pushed, the oldest overwritten first.

    Any batch size works: the buffer is a ring, so a last batch that is smaller, or ranks that
    skipped samples, need no ``size % batch == 0`` rule; a batch larger than the queue leaves
    its last ``size`` rows. Until it is full, only the rows pushed so far are negatives.

    There is no momentum encoder here: queued embeddings come from the encoder of earlier steps
    and grow stale as it moves (MoCo's reason for one). Keep the queue a few batches long, or
    the learning rate small, so that they still resemble the current encoder's.

    The buffers are persistent: a checkpoint holds the queue, and a resumed run continues with
    it (``size * dim`` float32 values in every checkpoint).

    Args:
        size: ``K``, the number of embeddings kept.
        dim: ``D``, their width.
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"expected queue size >= 1 and dim >= 1, got {size} and {dim}")
        self.register_buffer("embeddings", torch.zeros(size, dim))  # (K, D), a ring
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))  # next row to write
        self.register_buffer("count", torch.zeros((), dtype=torch.long))  # rows filled so far

    @property
    def is_full(self) -> bool:
        """Whether ``size`` embeddings have been pushed (every row holds one)."""
        return int(self.count) == len(self.embeddings)

    def negatives(self) -> Tensor:
        """The queued embeddings, oldest first: ``(min(pushed, K), D)`` float32, a copy."""
        count, size = int(self.count), len(self.embeddings)
        if count < size:
            return self.embeddings[:count].clone()
        return torch.roll(self.embeddings, -int(self.pointer), dims=0)  # (K, D)

    @torch.no_grad()
    def nearest(self, rows: Tensor) -> Tensor:
        """Each row's nearest queued embedding by cosine similarity (NNCLR's support set):
        ``(N, D)`` -> ``(N, D)``, detached; the rows themselves while the queue is empty."""
        support = self.negatives()  # (K, D)
        if len(support) == 0:
            return rows.detach()
        queries = F.normalize(rows.to(support.dtype), dim=1)  # (N, D)
        similarity = queries @ F.normalize(support, dim=1).T  # (N, K)
        return support[similarity.argmax(dim=1)].to(rows.dtype)

    @torch.no_grad()
    def push(self, rows: Tensor) -> None:
        """Append ``(M, D)`` embeddings (detached, stored as float32), dropping the oldest."""
        size, dim = self.embeddings.shape
        if rows.ndim != 2 or rows.shape[1] != dim:
            raise ValueError(f"expected (M, {dim}) embeddings to queue, got {tuple(rows.shape)}")
        rows = rows.detach()[-size:].to(self.embeddings.dtype)  # (min(M, K), D)
        start = int(self.pointer)
        index = (start + torch.arange(len(rows), device=rows.device)) % size  # wraps around
        self.embeddings[index] = rows
        self.pointer.fill_((start + len(rows)) % size)
        self.count.fill_(min(size, int(self.count) + len(rows)))
