"""What the evaluation metrics share: input checks, bounded "cat" states, and the bank/query store.

Every metric of :mod:`contrastive.evaluation` is torchmetrics-shaped: states declared with their
DDP reduction, ``update`` / ``compute``, and a functional twin. The helpers here keep the "cat"
states (lists of tensors before a sync, one tensor after it) bounded and, where rows carry dataset
ids, put the gathered rows back in dataset order with the duplicates of a ``DistributedSampler``'s
padding dropped, so that two processes compute exactly what one process computes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


def check_matrix(name: str, x: Tensor, min_rows: int = 0) -> None:
    """Raise ``ValueError`` unless ``x`` is a floating-point ``(N, D)`` tensor with enough rows."""
    if not isinstance(x, Tensor) or x.ndim != 2:
        got = f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"Expected `{name}` to be a 2-D tensor of shape (N, D), got {got}.")
    if not x.is_floating_point():
        raise ValueError(f"Expected `{name}` to be a floating-point tensor, got dtype {x.dtype}.")
    if x.shape[0] < min_rows:
        raise ValueError(
            f"Expected `{name}` to have at least {min_rows} rows, got shape {tuple(x.shape)}."
        )


def check_query_bank(query: Tensor, bank: Tensor, min_query_rows: int = 0) -> None:
    """Raise ``ValueError`` unless ``query`` ``(N, D)`` and ``bank`` ``(M, D)`` are floating-point
    matrices of one feature dimension, the bank with a row and the queries with enough."""
    check_matrix("query", query, min_rows=min_query_rows)
    check_matrix("bank", bank, min_rows=1)
    if query.shape[1] != bank.shape[1]:
        raise ValueError(
            f"Expected `query` and `bank` to share the feature dimension, got {tuple(query.shape)} "
            f"and {tuple(bank.shape)}."
        )


def num_rows(state: list[Tensor] | Tensor) -> int:
    """Rows held by a "cat" state, which is a list before sync and a tensor after it."""
    if isinstance(state, Tensor):
        return state.shape[0]
    return sum(x.shape[0] for x in state)


def feature_dim(state: list[Tensor] | Tensor) -> int | None:
    """Feature dimension of a 2-D "cat" state, or None when it holds no rows."""
    if isinstance(state, Tensor):
        return state.shape[1] if state.numel() else None
    return state[0].shape[1] if state else None


def cat_or_none(state: list[Tensor] | Tensor) -> Tensor | None:
    """Concatenate a "cat" state, or return None when it holds no rows."""
    if isinstance(state, list) and len(state) == 0:
        return None
    cat = dim_zero_cat(state)
    return None if cat.numel() == 0 else cat


def append(metric: Metric, name: str, value: Tensor) -> None:
    """Append ``value`` to the "cat" state ``name`` (a state restored already concatenated is
    turned back into a list first)."""
    state = getattr(metric, name)
    if isinstance(state, Tensor):
        setattr(metric, name, [state])
    getattr(metric, name).append(value)


def dataset_order(ids: Tensor) -> Tensor:
    """Positions that sort rows by dataset id and keep each id once (its first row).

    Under DDP a ``DistributedSampler`` deals rows to the ranks in turn and pads the last round
    with repeats; after the gather, this restores the order and the count one process sees.
    """
    ids = ids.long()
    order = torch.sort(ids, stable=True).indices  # (N,)
    sorted_ids = ids[order]
    first = torch.ones_like(sorted_ids, dtype=torch.bool)
    first[1:] = sorted_ids[1:] != sorted_ids[:-1]
    return order[first]


def normalise_num_classes(num_classes: int | Sequence[int]) -> int | tuple[int, ...]:
    """``num_classes`` checked: an int >= 1, or a non-empty sequence of them (one per field)."""
    if isinstance(num_classes, int):
        values: tuple[int, ...] = (num_classes,)
        out: int | tuple[int, ...] = num_classes
    else:
        values = out = tuple(num_classes)
        if len(values) == 0:
            raise ValueError("Expected `num_classes` to be an int or a non-empty sequence of ints.")
    for c in values:
        if not isinstance(c, int) or isinstance(c, bool) or c < 1:
            raise ValueError(f"Expected every entry of `num_classes` to be an int >= 1, got {c!r}.")
    return out


def check_labels(name: str, labels: Tensor, num_classes: int | Sequence[int], rows: int) -> None:
    """Check a label tensor's shape against ``num_classes``: (N,) for an int, (N, A) for A ints."""
    if isinstance(num_classes, int):
        expected = f"({rows},) because `num_classes` is an int"
        ok = labels.ndim == 1 and labels.shape[0] == rows
    else:
        expected = (
            f"({rows}, {len(num_classes)}) because `num_classes` has {len(num_classes)} entries"
        )
        ok = labels.ndim == 2 and labels.shape == (rows, len(num_classes))
    if not ok:
        raise ValueError(f"Expected `{name}` of shape {expected}, got {tuple(labels.shape)}.")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"Expected `{name}` to have an integer dtype, got {labels.dtype}.")


def check_label_range(labels: Tensor, num_classes: int | Sequence[int]) -> Tensor:
    """``labels`` as ``(N, A)`` int64, each field's values checked against its class count."""
    per_field = (num_classes,) if isinstance(num_classes, int) else tuple(num_classes)
    labels = labels.long().reshape(labels.shape[0], len(per_field))  # (N, A)
    if labels.numel():
        low, high = labels.min(dim=0).values.tolist(), labels.max(dim=0).values.tolist()
        for a, c in enumerate(per_field):
            if low[a] < 0 or high[a] >= c:
                raise ValueError(
                    f"Expected labels of attribute {a} in [0, {c}), "
                    f"got values in [{low[a]}, {high[a]}]."
                )
    return labels


class Labelled(NamedTuple):
    """Labelled features: ``(N, D)`` float32 and ``(N,)`` or ``(N, A)`` int64 labels."""

    features: Tensor
    labels: Tensor


class BankQueryMetric(Metric):
    """Labelled bank and query features in bounded "cat" states, for classifiers fit on the bank
    and scored on the queries (:class:`~contrastive.evaluation.knn.KNNAccuracy`,
    :class:`~contrastive.evaluation.linear_probe.LinearProbeAccuracy`, or both at once from
    :meth:`synced`).

    Memory is bounded per process: at most ``max_bank_size`` bank rows and ``max_query_size``
    query rows (each ``rows * D * 4`` bytes, e.g. 512 MiB for 65536 x 2048); exceeding either
    raises ``ValueError``. Rows may carry dataset ids (``ids``, e.g. the batch's ``"index"``):
    then :meth:`stored` returns them in dataset order with a ``DistributedSampler``'s padding
    dropped, which makes a DDP result equal to one process's. Give ids to every update or none.

    ``forward`` is not supported (a batch alone has no bank): call the updates and ``compute``.

    Args:
        num_classes: classes of the labels ``(B,)``, or a sequence of A counts for ``(B, A)``.
        max_bank_size: bank rows kept per process.
        max_query_size: query rows kept per process.
        **kwargs: passed to ``torchmetrics.Metric``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        num_classes: int | Sequence[int],
        max_bank_size: int = 65536,
        max_query_size: int = 65536,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_classes = normalise_num_classes(num_classes)
        for name, value in (("max_bank_size", max_bank_size), ("max_query_size", max_query_size)):
            if value < 1:
                raise ValueError(f"Expected `{name}` >= 1, got {value}.")
        self.max_bank_size, self.max_query_size = max_bank_size, max_query_size
        for kind in ("bank", "query"):
            for part in ("features", "labels", "ids"):
                self.add_state(f"{kind}_{part}", [], dist_reduce_fx="cat")

    def _append(
        self, kind: str, features: Tensor, labels: Tensor, ids: Tensor | None, limit: int
    ) -> None:
        check_matrix("features", features)
        check_labels("labels", labels, self.num_classes, features.shape[0])
        total = num_rows(getattr(self, f"{kind}_features")) + features.shape[0]
        if total > limit:
            raise ValueError(
                f"{type(self).__name__} {kind} would hold {total} rows on this process, more than "
                f"max_{kind}_size={limit}; raise `max_{kind}_size` (memory: rows x D x 4 bytes) "
                f"or subsample the {kind}."
            )
        for other in ("bank_features", "query_features"):
            dim = feature_dim(getattr(self, other))
            if dim is not None and dim != features.shape[1]:
                raise ValueError(
                    f"Expected features of dimension {dim} as already stored, got shape "
                    f"{tuple(features.shape)}."
                )
        with_ids = num_rows(getattr(self, f"{kind}_ids")) > 0
        if num_rows(getattr(self, f"{kind}_features")) and with_ids != (ids is not None):
            raise ValueError(f"Give ids to every {kind} update of {type(self).__name__} or none.")
        values = {"features": features.detach().float(), "labels": labels.detach().long()}
        if ids is not None:
            values["ids"] = ids.detach().long().reshape(-1).to(features.device)
        for part, value in values.items():
            append(self, f"{kind}_{part}", value.cpu() if self.compute_on_cpu else value)

    def update_bank(self, features: Tensor, labels: Tensor, ids: Tensor | None = None) -> None:
        """Append reference samples to the bank: ``(B, D)`` features, their labels, their ids.

        Raises:
            ValueError: If the bank would exceed ``max_bank_size`` rows on this process.
        """
        # Not wrapped by torchmetrics like `update`, so drop a cached result by hand.
        self._computed = None
        self._append("bank", features, labels, ids, self.max_bank_size)

    def update(self, features: Tensor, labels: Tensor, ids: Tensor | None = None) -> None:
        """Append queries: ``(B, D)`` features, their true labels, their dataset ids.

        Raises:
            ValueError: If the queries would exceed ``max_query_size`` rows on this process.
        """
        self._append("query", features, labels, ids, self.max_query_size)

    def _part(self, kind: str) -> Labelled | None:
        features = cat_or_none(getattr(self, f"{kind}_features"))
        if features is None:
            return None
        labels = dim_zero_cat(getattr(self, f"{kind}_labels"))
        ids = cat_or_none(getattr(self, f"{kind}_ids"))
        if ids is not None:
            keep = dataset_order(ids)
            features, labels = features[keep], labels[keep]
        return Labelled(features, labels)

    def stored(self) -> tuple[Labelled, Labelled]:
        """The bank and the queries, in dataset order when they have ids (synced under DDP
        when called from ``compute``)."""
        bank, query = self._part("bank"), self._part("query")
        if bank is None:
            raise ValueError(
                f"{type(self).__name__} has an empty bank; "
                "call update_bank(features, labels) before compute()."
            )
        if query is None:
            raise ValueError(
                f"{type(self).__name__} has no queries; "
                "call update(features, labels) before compute()."
            )
        return bank, query

    def synced(self) -> tuple[Labelled, Labelled]:
        """:meth:`stored` with every rank's rows (the local ones on one process)."""
        with self.sync_context():
            return self.stored()

    def compute(self) -> Tensor:
        """What a subclass measures on :meth:`stored` (which ``compute`` sees synced)."""
        raise NotImplementedError(f"{type(self).__name__} classifies nothing: call synced()")

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Not supported: a single batch has no bank."""
        raise NotImplementedError(
            f"{type(self).__name__} has no per-batch value; call update_bank(...), update(...) "
            "and compute()."
        )


class MajorityRate(Metric):
    """The share of the most frequent class of each label field: what always answering that
    class scores, the "chance" of an imbalanced split (``1 / classes`` only when balanced).

    Args:
        num_classes: classes of each of the A fields (labels ``(B, A)``).
    """

    full_state_update = False

    def __init__(self, num_classes: Sequence[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_classes = tuple(normalise_num_classes(list(num_classes)))
        self.add_state("counts", torch.zeros(sum(self.num_classes)), dist_reduce_fx="sum")

    def update(self, labels: Tensor) -> None:
        """Count ``(B, A)`` labels."""
        labels = check_label_range(labels, self.num_classes)  # (B, A)
        offsets = torch.tensor([0, *self.num_classes[:-1]]).cumsum(0).to(labels.device)
        self.counts += torch.bincount(
            (labels + offsets).reshape(-1), minlength=len(self.counts)
        ).to(self.counts)

    def compute(self) -> Tensor:
        """``(A,)`` majority-class rates."""
        rates = [c.max() / c.sum().clamp_min(1) for c in self.counts.split(self.num_classes)]
        return torch.stack(rates).float()
