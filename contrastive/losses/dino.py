"""DINO's cross-entropy between a centred, sharpened teacher and the student."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from contrastive.losses.pairs import cross_view_pairs


def dino_loss(
    student: Tensor,
    teacher: Tensor,
    center: Tensor,
    student_temperature: float = 0.1,
    teacher_temperature: float = 0.04,
) -> Tensor:
    """DINO (Caron et al. 2021, arXiv:2104.14294, eq. 2-3 and Algorithm 1).

    The teacher's outputs are centred and sharpened, the student's softened, and each student
    view predicts each global view's teacher distribution but its own::

        P_t(g) = softmax((t_g - center) / T_t)        P_s(v) = softmax(s_v / T_s)
        loss = mean_{g, v != g} mean_rows  -sum_k P_t(g)_k log P_s(v)_k

    Args:
        student: ``(N, V, K)`` student head outputs of all ``V`` views (global views first).
        teacher: ``(N, G, K)`` teacher head outputs of the ``G`` global views, detached.
        center: ``(K,)`` the EMA of the teacher's mean output.
        student_temperature: ``T_s`` (0.1).
        teacher_temperature: ``T_t`` (0.04 to 0.07, after a warmup).

    Returns:
        A scalar tensor, float32 whatever the autocast dtype.
    """
    if (
        student.ndim != 3
        or teacher.shape[::2] != student.shape[::2]
        or center.shape != (student.shape[2],)
    ):
        raise ValueError(
            f"expected student (N, V, K), teacher (N, G, K) and center (K,), got "
            f"{tuple(student.shape)}, {tuple(teacher.shape)} and {tuple(center.shape)}"
        )
    # float32 whatever the autocast dtype: a softmax over ~65k prototypes at T = 0.04.
    with torch.autocast(student.device.type, enabled=False):
        dtype = torch.promote_types(student.dtype, torch.float32)
        targets = F.softmax((teacher.to(dtype) - center.to(dtype)) / teacher_temperature, dim=-1)
        log_probs = F.log_softmax(student.to(dtype) / student_temperature, dim=-1)  # (N, V, K)
        pairs = cross_view_pairs(student.shape[1], num_global=teacher.shape[1])
        terms = [-(targets[:, g] * log_probs[:, v]).sum(dim=-1).mean() for v, g in pairs]
        return torch.stack(terms).mean()
