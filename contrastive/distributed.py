"""Rank helpers and gathering with gradient.

Losses never read distributed state (see ``losses.py``); methods call these helpers and pass
the gathered tensors in. Outside an initialised process group every helper is the identity,
so the same method code runs on one CPU process and under DDP.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """Whether a process group is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank, 0 without a process group."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes, 1 without a process group."""
    return dist.get_world_size() if is_distributed() else 1


def sizes(n: int, device: torch.device | str = "cpu") -> list[int]:
    """Every rank's ``n`` (batch sizes differ when a loader skipped bad samples)."""
    if not is_distributed():
        return [n]
    parts = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world_size())]
    dist.all_gather(parts, torch.tensor([n], dtype=torch.long, device=device))
    return [int(p) for p in parts]


def offset(n: int, device: torch.device | str = "cpu") -> int:
    """Where this rank's ``n`` rows start in the rank-major concatenation of every rank's rows."""
    return sum(sizes(n, device)[: rank()])


def gather_with_grad(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` from every rank along dim 0, keeping the gradient path.

    The backward pass sums, for each rank's slice, the gradients that every rank's loss sends to
    it (``torch.distributed.nn.functional.all_gather``; gloo and NCCL both work). With DDP's
    gradient averaging this gives exactly the gradient of the loss on the global batch.

    Args:
        tensor: ``(B_r, ...)``; ``B_r`` may differ between ranks, the other dims may not.

    Returns:
        ``(sum_r B_r, ...)``, rank-major: rank ``r``'s rows follow those of ranks ``< r``.
    """
    if not is_distributed():
        return tensor
    from torch.distributed.nn.functional import all_gather

    counts = sizes(len(tensor), tensor.device)
    parts = all_gather(_pad_rows(tensor, max(counts)))
    return torch.cat([part[:n] for part, n in zip(parts, counts, strict=True)], dim=0)


def gather_no_grad(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` (labels, indices) from every rank along dim 0, without gradient.

    Rows per rank may differ, as in :func:`gather_with_grad`.
    """
    if not is_distributed():
        return tensor
    counts = sizes(len(tensor), tensor.device)
    padded = _pad_rows(tensor, max(counts)).contiguous()
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, counts, strict=True)], dim=0)


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """The sum of ``tensor`` over every rank; ``tensor`` itself on one process.

    With gradient when ``tensor`` requires one: each rank's input receives the sum of the
    gradients every rank's loss sends to the result (``torch.distributed.nn.functional``), as
    :func:`gather_with_grad` does for its rows. Sums of statistics over the global batch
    (Barlow Twins' cross-correlation, DINO's center, SwAV's Sinkhorn) go through here.
    """
    if not is_distributed():
        return tensor
    if tensor.requires_grad:
        from torch.distributed.nn.functional import all_reduce

        return all_reduce(tensor)
    total = tensor.clone()
    dist.all_reduce(total)
    return total


def _pad_rows(tensor: Tensor, rows: int) -> Tensor:  # (B, ...) -> (rows, ...), zeros below
    if len(tensor) == rows:
        return tensor
    pad = tensor.new_zeros((rows - len(tensor), *tensor.shape[1:]))
    return torch.cat([tensor, pad], dim=0)
