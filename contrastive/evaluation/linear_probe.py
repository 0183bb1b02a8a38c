"""The offline linear probe: a linear classifier fit on frozen bank features, scored on queries.

What is *linearly present* in the embedding, the measure SSL papers and peers (solo-learn,
lightly, stable-pretraining) compare by; kNN (:mod:`contrastive.evaluation.knn`) reads what is
*near* instead. The protocol, deterministic for a seed:

1. the bank's features are standardised (their mean and std; a constant dimension is left as is);
2. a seeded ``held_out`` slice of the bank chooses each label field's weight decay: for each
   value of ``weight_decays`` a multinomial logistic regression is fit on the rest of the bank
   and scored on the slice (ties go to the larger decay);
3. the chosen decays are fit on the whole bank and scored on the queries.

Each fit is full-batch L-BFGS (strong-Wolfe line search) from zero weights for ``max_iter``
iterations of cross-entropy plus ``weight_decay / 2 * ||W||^2``, in float32 whatever the
Trainer's precision; the label fields, independent problems, are fit together (the sum of their
losses), so that one matmul serves them all. The online probe, trained during fit, is
:mod:`contrastive.evaluation.online_probe`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastive.evaluation.common import (
    BankQueryMetric,
    check_label_range,
    check_labels,
    check_matrix,
    check_query_bank,
    normalise_num_classes,
)

__all__ = [
    "DEFAULT_WEIGHT_DECAYS",
    "LinearClassifier",
    "LinearProbeAccuracy",
    "fit_linear_classifier",
    "fit_linear_probe",
    "linear_probe_accuracy",
    "standardisation",
]

#: The weight decays tried on the held-out slice: 1e-6 (next to none) to 1e-2 (strong).
DEFAULT_WEIGHT_DECAYS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)


class LinearClassifier(nn.Module):
    """``(x - mean) / std @ W^T + b``: standardisation and one linear layer per label field,
    stacked: ``(N, D) -> (N, sum(num_classes))`` logits, :meth:`predict` ``(N, A)`` classes."""

    def __init__(
        self, mean: Tensor, std: Tensor, weight: Tensor, bias: Tensor, num_classes: Sequence[int]
    ) -> None:
        super().__init__()
        for name, value in (("mean", mean), ("std", std), ("weight", weight), ("bias", bias)):
            self.register_buffer(name, value.detach().clone())
        self.num_classes = tuple(num_classes)
        self.weight_decay: tuple[float, ...] = ()  # set by fit_linear_probe: the decays chosen

    def forward(self, x: Tensor) -> Tensor:
        return ((x.float() - self.mean) / self.std) @ self.weight.T + self.bias  # (N, sum C)

    def predict(self, x: Tensor) -> Tensor:
        """``(N, A)`` the most likely class of each field."""
        with torch.autocast(x.device.type, enabled=False):
            logits = self(x).split(self.num_classes, dim=1)
        return torch.stack([part.argmax(dim=1) for part in logits], dim=1)


def standardisation(x: Tensor) -> tuple[Tensor, Tensor]:
    """``(D,)`` mean and std of the rows of ``x`` ``(N, D)``; a constant dimension's std is 1,
    so that ``(x - mean) / std`` leaves it as is."""
    std = x.std(dim=0, correction=0)  # (D,)
    return x.mean(dim=0), torch.where(std > 1e-6, std, torch.ones_like(std))


def fit_linear_classifier(
    features: Tensor,
    labels: Tensor,
    num_classes: Sequence[int],
    weight_decay: float | Sequence[float],
    max_iter: int = 100,
) -> LinearClassifier:
    """Multinomial logistic regression of every label field by full-batch L-BFGS from zero
    weights (deterministic). The fields are independent problems fit as one: the loss is the
    sum of their cross-entropies and penalties, so one matmul serves them all.

    Args:
        features: ``(N, D)`` training features (standardised here with their own statistics).
        labels: ``(N, A)`` classes, field ``a`` in ``[0, num_classes[a])``.
        num_classes: the A class counts.
        weight_decay: the L2 penalty ``wd / 2 * ||W_a||^2`` of each field's weights (biases are
            not penalised), one value for all or one per field.
        max_iter: L-BFGS iterations.
    """
    num_classes = tuple(num_classes)
    check_matrix("features", features, min_rows=1)
    check_labels("labels", labels, num_classes, features.shape[0])
    decays = [weight_decay] * len(num_classes) if isinstance(weight_decay, float) else weight_decay
    # Evaluation runs under inference mode; the fit needs autograd, in float32.
    with torch.inference_mode(False), torch.enable_grad():
        with torch.autocast(features.device.type, enabled=False):
            x = features.detach().clone().float()  # (N, D), a normal tensor
            y = labels.detach().clone().long()  # (N, A)
            mean, std = standardisation(x)
            x = (x - mean) / std
            weight = torch.zeros(sum(num_classes), x.shape[1], device=x.device, requires_grad=True)
            bias = torch.zeros(sum(num_classes), device=x.device, requires_grad=True)
            penalty = torch.cat(
                [torch.full((c, 1), float(wd)) for c, wd in zip(num_classes, decays, strict=True)]
            ).to(x.device)  # (sum C, 1): each row's field's decay
            optimizer = torch.optim.LBFGS(
                [weight, bias], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe"
            )

            def closure() -> Tensor:
                optimizer.zero_grad()
                logits = (x @ weight.T + bias).split(num_classes, dim=1)  # A x (N, C_a)
                loss = sum(F.cross_entropy(z, y[:, a]) for a, z in enumerate(logits))
                loss = loss + 0.5 * (penalty * weight.square()).sum()
                loss.backward()
                return loss

            optimizer.step(closure)
    return LinearClassifier(mean, std, weight, bias, num_classes)


def fit_linear_probe(
    features: Tensor,
    labels: Tensor,
    num_classes: Sequence[int],
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    held_out: float = 0.2,
    max_iter: int = 100,
    seed: int = 0,
) -> LinearClassifier:
    """Linear probes of the label fields, each field's weight decay chosen on a seeded
    held-out slice of the rows, then all fit on every row (see the module docstring).

    Args:
        features: ``(N, D)`` bank features, in a fixed order (the held-out draw follows it).
        labels: ``(N, A)`` their classes.
        num_classes: the A class counts.
        weight_decays: candidate decays; one value skips the selection.
        held_out: share of the rows held out to choose the decays (at least one row each side).
        max_iter: L-BFGS iterations per fit.
        seed: seed of the held-out draw.

    Returns:
        The fitted classifier, its ``weight_decay`` the decays chosen.
    """
    if not weight_decays:
        raise ValueError("Expected at least one weight decay.")
    if not 0.0 < held_out < 1.0:
        raise ValueError(f"Expected `held_out` in (0, 1), got {held_out}.")
    n, fields = features.shape[0], len(num_classes)
    chosen = [float(weight_decays[0])] * fields
    if len(weight_decays) > 1 and n >= 2:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        n_held = min(n - 1, max(1, round(held_out * n)))
        held, fit = order[:n_held].to(features.device), order[n_held:].to(features.device)
        best = [-1.0] * fields
        for decay in sorted(float(d) for d in weight_decays):
            probe = fit_linear_classifier(features[fit], labels[fit], num_classes, decay, max_iter)
            scores = (probe.predict(features[held]) == labels[held]).float().mean(dim=0)
            for a, score in enumerate(scores.tolist()):
                if score >= best[a]:  # ties: the larger decay, the simpler model
                    best[a], chosen[a] = score, decay
    probe = fit_linear_classifier(features, labels, num_classes, chosen, max_iter)
    probe.weight_decay = tuple(chosen)
    return probe


def linear_probe_accuracy(
    query: Tensor,
    query_labels: Tensor,
    bank: Tensor,
    bank_labels: Tensor,
    num_classes: int | Sequence[int],
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    held_out: float = 0.2,
    max_iter: int = 100,
    seed: int = 0,
) -> Tensor:
    """Top-1 accuracy on ``query`` of linear probes fit on ``bank``, one per label field.

    Args:
        query: ``(N, D)`` query features, N >= 1.
        query_labels: ``(N,)`` or ``(N, A)`` their labels, as ``bank_labels``.
        bank: ``(M, D)`` bank features, M >= 1.
        bank_labels: ``(M,)`` for an int ``num_classes``, ``(M, A)`` for A of them.
        num_classes: classes, or one count per field.
        weight_decays, held_out, max_iter, seed: see :func:`fit_linear_probe`.

    Returns:
        Float32 accuracy in ``[0, 1]``: a scalar for 1-D labels, shape (A,) for 2-D labels.
    """
    check_query_bank(query, bank, min_query_rows=1)
    num_classes = normalise_num_classes(num_classes)
    check_labels("query_labels", query_labels, num_classes, query.shape[0])
    check_labels("bank_labels", bank_labels, num_classes, bank.shape[0])
    per_field = (num_classes,) if isinstance(num_classes, int) else num_classes
    bank_y = check_label_range(bank_labels, num_classes).to(bank.device)  # (M, A)
    query_y = query_labels.long().reshape(query.shape[0], len(per_field)).to(query.device)
    probe = fit_linear_probe(bank, bank_y, per_field, weight_decays, held_out, max_iter, seed)
    accuracy = (probe.to(query.device).predict(query) == query_y).float().mean(dim=0)  # (A,)
    return accuracy[0] if isinstance(num_classes, int) else accuracy


class LinearProbeAccuracy(BankQueryMetric):
    """:func:`linear_probe_accuracy` over an evaluation run: the bank (no augmentation) and the
    queries accumulated batch by batch, the probes fit in ``compute``.

    Give dataset ids (the batch's ``"index"``) to the updates and the result under DDP equals one
    process's: the gathered rows are put back in dataset order before the held-out draw, so
    every rank fits the same probe on the same rows. Memory bounds as in
    :class:`~contrastive.evaluation.common.BankQueryMetric`.

    Args:
        num_classes: classes, or one count per label field.
        weight_decays, held_out, max_iter, seed: see :func:`fit_linear_probe`.
        max_bank_size: bank rows kept per process.
        max_query_size: query rows kept per process.
    """

    def __init__(
        self,
        num_classes: int | Sequence[int],
        weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
        held_out: float = 0.2,
        max_iter: int = 100,
        seed: int = 0,
        max_bank_size: int = 65536,
        max_query_size: int = 65536,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes, max_bank_size, max_query_size, **kwargs)
        if max_iter < 1:
            raise ValueError(f"Expected `max_iter` >= 1, got {max_iter}.")
        self.weight_decays, self.held_out = tuple(weight_decays), held_out
        self.max_iter, self.seed = max_iter, seed

    def compute(self) -> Tensor:
        """The probes' accuracy on the queries: a scalar, or shape (A,) for A fields."""
        bank, query = self.stored()
        return linear_probe_accuracy(
            query.features,
            query.labels,
            bank.features,
            bank.labels,
            self.num_classes,
            self.weight_decays,
            self.held_out,
            self.max_iter,
            self.seed,
        )
