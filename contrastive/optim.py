"""The optimizer every method gets: parameter groups without decay on biases and norms, a
per-step linear warmup followed by a cosine decay, and the check that its updates stay finite."""

from __future__ import annotations

import math

import torch
from lightning.pytorch import Trainer
from torch import Tensor, nn


def parameter_groups(module: nn.Module) -> list[dict]:
    """The trainable parameters in two groups: weights, and biases and normalisation parameters
    (``ndim <= 1``) with ``weight_decay`` 0 (so LARS does not adapt them either)."""
    decay, no_decay = [], []
    for param in module.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def warmup_cosine(optimizer: torch.optim.Optimizer, trainer: Trainer, warmup_epochs: float) -> dict:
    """Lightning's optimizer config: ``optimizer`` stepped per batch by a linear warmup of
    ``warmup_epochs`` (fractions allowed) then a cosine decay to 0 at the run's last step."""
    total = trainer.estimated_stepping_batches
    if math.isinf(total):
        raise ValueError("the cosine schedule needs a length: set trainer.max_epochs or max_steps")
    if trainer.train_dataloader is None:  # max_steps alone does not load the data
        trainer.fit_loop.setup_data()
    batches = trainer.num_training_batches
    if math.isinf(batches) and warmup_epochs > 0:
        raise ValueError("warmup_epochs needs a training loader with a length")
    per_epoch = 0 if math.isinf(batches) else batches / trainer.accumulate_grad_batches
    total = max(1, int(total))
    warmup = min(total - 1, round(warmup_epochs * per_epoch))
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total - warmup)
    schedule = cosine
    if warmup > 0:
        # lr * (k + 1) / warmup at step k: the full rate is reached on the last warmup step.
        ramp = torch.optim.lr_scheduler.LinearLR(
            optimizer, start_factor=1.0 / warmup, total_iters=max(1, warmup - 1)
        )
        schedule = torch.optim.lr_scheduler.SequentialLR(
            optimizer, [ramp, cosine], milestones=[warmup]
        )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def weights_finite(tensors: list[Tensor]) -> bool:
    """Whether every tensor is finite, in one fused reduction and one host sync.

    The sum of the tensors' L2 norms (``torch._foreach_norm``: one kernel per device and dtype)
    is finite only when every element is, and when no tensor is so large that its squares
    overflow (weights of 1e30 in float32: finite, but their next forward is not).
    """
    if not tensors:
        return True
    return bool(torch.stack(torch._foreach_norm(tensors)).sum().isfinite())
