"""Exponential moving averages of networks: BYOL's target, MoCo's key encoder, DINO's teacher."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy with ``requires_grad=False``: no gradient reaches it, no optimizer sees it."""
    return copy.deepcopy(module).requires_grad_(False)


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """``target = momentum * target + (1 - momentum) * online`` for parameters; buffers copied.

    Buffers (BatchNorm running statistics, counters) are copied, not averaged, as in BYOL's
    reference implementation. Both modules must have the same structure.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    target_params, online_params = list(target.parameters()), list(online.parameters())
    if len(target_params) != len(online_params):
        raise ValueError(
            f"target has {len(target_params)} parameters, online has {len(online_params)}"
        )
    torch._foreach_lerp_(target_params, online_params, 1.0 - momentum)
    for t, o in zip(target.buffers(), online.buffers(), strict=True):
        t.copy_(o)


def cosine_momentum(step: int, total_steps: int, base: float, final: float = 1.0) -> float:
    """BYOL's schedule: ``final - (final - base) * (cos(pi * step / total) + 1) / 2``.

    ``base`` at step 0, ``final`` at ``total_steps``, per step.
    """
    progress = min(step, total_steps) / max(total_steps, 1)
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2
