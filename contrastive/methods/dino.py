"""DINO: Emerging Properties in Self-Supervised Vision Transformers."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastive import distributed
from contrastive.ema import frozen_copy
from contrastive.gradcache import Embeddings, by_sample
from contrastive.losses import dino_loss
from contrastive.methods.base import forward_views
from contrastive.methods.momentum import MomentumMethod


class DINOHead(nn.Module):
    """DINO's projection head: an MLP with GELU to a bottleneck, L2 normalisation, and a
    weight-normalised linear layer onto ``num_prototypes`` outputs (without bias).

    Args:
        in_dim: the backbone's features.
        hidden_dim: hidden width (2048).
        bottleneck_dim: the MLP's output width (256).
        num_prototypes: ``K``, the output width (65536).
        num_layers: Linear layers of the MLP (3).
        norm_last_layer: fix the prototypes' norm at 1 (the weight-norm scale ``g`` not
            learnt), which the paper finds steadier.
        batch_norm: BatchNorm after each hidden Linear (DINO's ``use_bn_in_head``).
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_prototypes: int = 65536,
        num_layers: int = 3,
        norm_last_layer: bool = True,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-1], dims[1:], strict=True):
            norm = [nn.BatchNorm1d(d_out)] if batch_norm else []
            layers += [nn.Linear(d_in, d_out), *norm, nn.GELU()]
        layers = layers[: -2 if batch_norm else -1]  # the last Linear ends the MLP
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        # Weight norm by hand, w = g * v / ||v|| per prototype: torch's weight_norm is deprecated.
        self.prototypes = nn.Parameter(torch.empty(num_prototypes, bottleneck_dim))  # v
        nn.init.trunc_normal_(self.prototypes, std=0.02)
        self.scale = nn.Parameter(torch.ones(num_prototypes, 1), requires_grad=not norm_last_layer)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_dim)`` -> ``(B, num_prototypes)``."""
        x = F.normalize(self.mlp(x), dim=-1)  # (B, bottleneck)
        return x @ (self.scale * F.normalize(self.prototypes, dim=1)).T  # (B, K)


class DINO(MomentumMethod):
    """DINO (Caron et al. 2021, arXiv:2104.14294): self-distillation with no labels.

    The student (backbone and :class:`DINOHead`) is trained to match, on every view, the
    output distribution of the teacher, its momentum copy, on each global view but its own
    (multi-crop: the teacher sees the global views only). Collapse is avoided by centring
    the teacher's outputs (an EMA of their mean over the global batch, summed over ranks) and
    sharpening them (a low teacher temperature, warmed up linearly). The last layer's
    gradient is dropped during the first ``freeze_last_layer_epochs``.

    Args:
        num_prototypes: ``K``, the head's output width (65536).
        projector_hidden_dim: the head's hidden width (2048).
        projector_dim: its bottleneck width (256).
        projector_layers: Linear layers of its MLP (3).
        projector_batch_norm: BatchNorm in the head's MLP (False; DINO's ``use_bn_in_head``).
        norm_last_layer: fix the prototypes' norm (True; False for ViT-S with more care).
        student_temperature: ``T_s`` (0.1).
        teacher_temperature: ``T_t`` after the warmup (0.04; 0.07 for long runs).
        warmup_teacher_temperature: ``T_t`` at epoch 0 (0.04).
        teacher_temperature_warmup_epochs: epochs of its linear warmup (0; 30 with 0.07).
        center_momentum: the center's EMA momentum (0.9).
        freeze_last_layer_epochs: epochs during which the prototypes are not updated (1).
        base_momentum: teacher momentum at step 0 (0.996).
        final_momentum: at the last step (1.0).
        representation: what ``embed`` returns: the ``student``'s backbone features (the
            trained ``backbone``, which ``contrastive export`` writes) or the ``teacher``'s
            (what the paper evaluates; an export, holding the backbone alone, is then skipped).
        separate_views: forward each view on its own, each its own BatchNorm batch
            (:func:`~contrastive.methods.base.forward_views`).
        **kwargs: :class:`ContrastiveMethod` arguments (backbone, augment, optimizer, ...).
    """

    def __init__(
        self,
        num_prototypes: int = 65536,
        projector_hidden_dim: int = 2048,
        projector_dim: int = 256,
        projector_layers: int = 3,
        projector_batch_norm: bool = False,
        norm_last_layer: bool = True,
        student_temperature: float = 0.1,
        teacher_temperature: float = 0.04,
        warmup_teacher_temperature: float = 0.04,
        teacher_temperature_warmup_epochs: int = 0,
        center_momentum: float = 0.9,
        freeze_last_layer_epochs: int = 1,
        base_momentum: float = 0.996,
        final_momentum: float = 1.0,
        representation: Literal["student", "teacher"] = "student",
        separate_views: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(base_momentum=base_momentum, final_momentum=final_momentum, **kwargs)
        temperatures = (student_temperature, teacher_temperature, warmup_teacher_temperature)
        if min(temperatures) <= 0:
            raise ValueError(f"temperatures must be > 0, got {temperatures}")
        if not 0.0 <= center_momentum <= 1.0:
            raise ValueError(f"center_momentum must be in [0, 1], got {center_momentum}")
        self.student_temperature = student_temperature
        self.teacher_temperature = teacher_temperature
        self.warmup_teacher_temperature = warmup_teacher_temperature
        self.teacher_temperature_warmup_epochs = teacher_temperature_warmup_epochs
        self.center_momentum = center_momentum
        self.freeze_last_layer_epochs = freeze_last_layer_epochs
        self.representation, self.separate_views = representation, separate_views
        self.head = DINOHead(
            self.backbone.num_features,
            projector_hidden_dim,
            projector_dim,
            num_prototypes,
            projector_layers,
            norm_last_layer,
            projector_batch_norm,
        )
        self.teacher_backbone = frozen_copy(self.backbone)
        self.teacher_head = frozen_copy(self.head)
        self.register_buffer("center", torch.zeros(num_prototypes))  # (K,), in checkpoints

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.teacher_backbone, self.backbone), (self.teacher_head, self.head)]

    def training_embeddings(self, batch: dict) -> Embeddings:
        """``{"student": (B, V, K)}`` of every view, ``{"teacher": (B, 2, K)}`` of the global
        views (no gradient)."""
        views, n = batch["views"], len(batch["views"][0])
        student = lambda x: self.head(self.backbone(x))  # noqa: E731
        teacher = lambda x: self.teacher_head(self.teacher_backbone(x))  # noqa: E731
        s = forward_views(student, views, self.separate_views)  # (V * B, K)
        with torch.no_grad():
            t = forward_views(teacher, views[:2], self.separate_views)  # (2B, K)
        return {"student": by_sample(s, n), "teacher": by_sample(t, n)}

    def loss_from_embeddings(self, embeddings: Embeddings, batch: dict) -> Tensor:
        """DINO's loss with the current center; then the center moves to this batch's mean."""
        teacher = embeddings["teacher"]  # (B, 2, K)
        loss = dino_loss(
            embeddings["student"],
            teacher,
            self.center,
            self.student_temperature,
            self.current_teacher_temperature(),
        )
        with torch.no_grad():  # the mean over the global batch: sums over ranks
            reduce = distributed.all_reduce_sum if self.gather_negatives else lambda t: t
            rows = teacher.flatten(0, 1).to(self.center.dtype)  # (2B, K)
            total = reduce(rows.sum(dim=0))  # (K,)
            count = reduce(rows.new_tensor(float(len(rows))))
            self.center.lerp_(total / count, 1 - self.center_momentum)
        return loss

    def current_teacher_temperature(self) -> float:
        """``T_t`` of this epoch: linear from the warmup value, then constant."""
        warmup, epoch = self.teacher_temperature_warmup_epochs, self.current_epoch
        if epoch >= warmup:
            return self.teacher_temperature
        start, end = self.warmup_teacher_temperature, self.teacher_temperature
        return start + (end - start) * epoch / warmup

    def on_after_backward(self) -> None:
        if self.current_epoch < self.freeze_last_layer_epochs:
            self.head.prototypes.grad = None  # as DINO's cancel_gradients_last_layer
            self.head.scale.grad = None

    def embed(self, images: Tensor) -> Tensor:
        if self.representation == "teacher":
            return self.teacher_backbone(self._memory_format(self.augment.normalize(images)))
        return super().embed(images)
