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


def gather_with_grad(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` from every rank along dim 0, keeping the gradient path.

    The backward pass sums, for each rank's slice, the gradients that every rank's loss sends to
    it (``torch.distributed.nn.functional.all_gather``; gloo and NCCL both work). With DDP's
    gradient averaging this gives exactly the gradient of the loss on the global batch.

    Args:
        tensor: ``(B, ...)``, the same shape on every rank.

    Returns:
        ``(world_size * B, ...)``, rank-major: rows ``r * B : (r + 1) * B`` came from rank ``r``.
    """
    if not is_distributed():
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor), dim=0)


def gather_no_grad(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` (labels, indices) from every rank along dim 0, without gradient."""
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)
