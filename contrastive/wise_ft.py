"""WiSE-FT (Wortsman et al. 2022, arXiv:2109.01903): robust fine-tuning by weight interpolation.

Interpolating the weights a model was fine-tuned from with the fine-tuned ones keeps much of the
base model's robustness under distribution shift at little cost in accuracy on the fine-tuning
distribution. ``contrastive export --wise_ft ALPHA`` applies it (:mod:`contrastive.export`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from contrastive.encoder import ExportError


def interpolate(
    base: dict[str, Tensor], fine_tuned: dict[str, Tensor], alpha: float, what: str = "weights"
) -> dict[str, Tensor]:
    """WiSE-FT (Wortsman et al. 2022, arXiv:2109.01903): ``(1 - alpha) * theta_0 + alpha *
    theta_1`` tensor by tensor, ``theta_0`` the base's and ``theta_1`` the fine-tuned weights.

    Floating tensors are interpolated in at least float32 and keep the fine-tuned dtype; others
    (BatchNorm's step counter) are the fine-tuned model's.

    Raises:
        ExportError: ``alpha`` outside [0, 1], or the two do not have the same keys and shapes.
    """
    check_alpha(alpha)
    missing, extra = (
        sorted(fine_tuned.keys() - base.keys()),
        sorted(base.keys() - fine_tuned.keys()),
    )
    if missing or extra:
        raise ExportError(
            f"cannot interpolate the {what}: keys only fine-tuned: {_few(missing)}; only in the "
            f"base: {_few(extra)}"
        )
    mixed = {}
    for key, theta_1 in fine_tuned.items():
        theta_0 = base[key]
        if theta_0.shape != theta_1.shape:
            raise ExportError(
                f"cannot interpolate the {what}: '{key}' is {tuple(theta_1.shape)} fine-tuned and "
                f"{tuple(theta_0.shape)} in the base"
            )
        if not theta_1.is_floating_point():
            mixed[key] = theta_1
            continue
        dtype = torch.promote_types(theta_1.dtype, torch.float32)
        mixed[key] = ((1 - alpha) * theta_0.to(dtype) + alpha * theta_1.to(dtype)).to(theta_1.dtype)
    return mixed


def check_alpha(alpha: float) -> None:
    """Raise :class:`ExportError` unless ``0 <= alpha <= 1``."""
    if not 0.0 <= alpha <= 1.0:
        raise ExportError(
            f"--wise_ft takes alpha in [0, 1] (1: the fine-tuned weights), got {alpha}"
        )


def _few(keys: list[str], n: int = 3) -> str:  # "a, b, c (+2 more)", or "nothing"
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more if keys else "nothing"
