"""The base of methods with a momentum encoder: BYOL, MoCo v2, MoCo v3, DINO."""

from __future__ import annotations

from torch import nn

from contrastive.ema import cosine_momentum, ema_update
from contrastive.methods.base import ContrastiveMethod


class MomentumMethod(ContrastiveMethod):
    """A method with momentum (EMA) copies of some of its networks.

    A subclass makes its copies with :func:`~contrastive.ema.frozen_copy` (no gradient, so no
    optimizer state) and lists them in :meth:`momentum_pairs`. After each optimizer step,
    every copy moves towards its online network with a momentum rising from
    ``base_momentum`` to ``final_momentum`` on a cosine schedule (BYOL's), parameters
    averaged and buffers copied (:func:`~contrastive.ema.ema_update`). The copies stay equal
    on every rank because the online weights are (and, with DDP's buffer broadcast, the
    BatchNorm statistics they copy).

    Args:
        base_momentum: the momentum at step 0.
        final_momentum: the momentum at the last step; equal to ``base_momentum`` for a
            constant one (MoCo v2's 0.999).
        **kwargs: :class:`ContrastiveMethod` arguments (backbone, augment, optimizer, ...).
    """

    def __init__(self, base_momentum: float = 0.99, final_momentum: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= base_momentum <= final_momentum <= 1.0:
            raise ValueError(
                f"expected 0 <= base_momentum <= final_momentum <= 1, got {base_momentum} "
                f"and {final_momentum}"
            )
        self.base_momentum, self.final_momentum = base_momentum, final_momentum
        self.momentum = base_momentum
        self._ema_step = 0  # the optimizer step the copies were last updated at

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """``(momentum copy, online network)`` pairs, updated after each optimizer step."""
        raise NotImplementedError(f"{type(self).__name__} must list its momentum_pairs")

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.global_step == self._ema_step:  # accumulating gradients: no optimizer step yet
            return
        self._ema_step = self.global_step
        total = int(self.trainer.estimated_stepping_batches)
        self.momentum = cosine_momentum(
            self.global_step, total, self.base_momentum, self.final_momentum
        )
        for target, online in self.momentum_pairs():
            ema_update(target, online, self.momentum)
        self.log("train/momentum", self.momentum)
