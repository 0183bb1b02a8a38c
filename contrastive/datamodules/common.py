"""What every data module shares: skipping bad samples, collating with a tokenizer, and what it
offers for evaluation.

A dataset that cannot use a sample (a missing or corrupt image, an empty caption) returns a
:class:`Skipped` in its place instead of raising, so one bad file never stops an epoch. The
loader's :class:`Collate` drops it from the batch and passes it on under ``batch["skipped"]``
(present only when a sample was skipped);
the method counts them with a :class:`SkipReport` and warns once per epoch, naming the first few.

Methods that read text (CLIP) give the data module their tokenizer (``datamodule.tokenizer``),
and :class:`Collate` tokenizes ``batch["caption"]`` into ``batch["tokens"]`` in the loader's
worker processes, off the training step's critical path.

What a data module offers the evaluation callbacks (:mod:`contrastive.evaluation`) is one typed
record, :class:`EvaluationData`, returned by its ``evaluation_data()`` (the
:class:`EvaluatesWith` protocol) and checked once by :func:`check_evaluation_data`.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, runtime_checkable

import lightning
import torch
from torch.utils.data import DataLoader, default_collate

from contrastive import distributed


class DataError(ValueError):
    """The user's data cannot be used (a folder, file or field); the message is one line.

    The ``contrastive`` command prints it as ``error: ...`` without a traceback.
    """


class Skipped(NamedTuple):
    """A sample a dataset could not use, returned in its place.

    Attributes:
        source: What the user can look up: a file path, ``manifest.csv:12`` or a shard key.
        reason: Why, in a few words (``"missing image"``, ``"empty caption"``, ...).
    """

    source: str
    reason: str


Tokenizer = Callable[[list[str]], Any]  # captions -> token ids (a tensor or a dict of tensors)

# The batch's string fields that Collate tokenizes, and where the tokens go.
TOKENIZED = {"caption": "tokens", "view_caption": "view_tokens"}


class Collate:
    """``collate_fn`` of the project's loaders: drops :class:`Skipped` samples, tokenizes captions.

    Picklable (a plain object holding the tokenizer), so it also works with spawned workers.

    Args:
        tokenizer: ``list[str] -> tokens``; when set, a batch's ``"caption"`` (a generator
            view's ``"view_caption"``) gets its ``"tokens"`` (``"view_tokens"``). A condition
            ``"text"`` is not tokenized here: a text-conditioned method embeds each distinct
            condition once, from its cache.
    """

    def __init__(self, tokenizer: Tokenizer | None = None) -> None:
        self.tokenizer = tokenizer

    def __call__(self, samples: Sequence[Any]) -> dict:
        good = [s for s in samples if not isinstance(s, Skipped)]
        batch = default_collate(good) if good else {}
        skipped = [s for s in samples if isinstance(s, Skipped)]
        if skipped:
            batch["skipped"] = skipped
        if self.tokenizer is not None:
            for key, out in TOKENIZED.items():
                if key in batch:
                    batch[out] = self.tokenizer(list(batch[key]))
        return batch


class SkipReport:
    """Counts skipped samples by reason and remembers the first few, for one warning per epoch.

    Args:
        keep: How many examples the summary names.
    """

    def __init__(self, keep: int = 5) -> None:
        self.keep = keep
        self.reset()

    def reset(self) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: list[Skipped] = []

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, skipped: Sequence[Skipped]) -> None:
        for item in skipped:
            self.counts[item.reason] += 1
            if len(self.examples) < self.keep:
                self.examples.append(Skipped(*item))

    def summary(self, where: str) -> str | None:
        """One line such as ``train epoch 3: skipped 4 bad samples (missing image: 3, ...)``."""
        if not self.counts:
            return None
        reasons = ", ".join(f"{reason}: {n}" for reason, n in self.counts.most_common())
        first = "; ".join(f"{s.source} ({s.reason})" for s in self.examples)
        return f"{where}: skipped {self.total} bad samples ({reasons}); first: {first}"


class StageSkipReports:
    """A :class:`SkipReport` per stage (train, validation, test, predict), so that each stage
    reports its own skips: a train epoch's are not counted into the validation run inside it."""

    def __init__(self) -> None:
        self.reports = {stage: SkipReport() for stage in ("train", "validation", "test", "predict")}

    def add(self, trainer: lightning.Trainer, skipped: Sequence[Skipped]) -> None:
        """Count a batch's ``skipped`` samples under the trainer's current stage."""
        stage = "train" if trainer.training else "test" if trainer.testing else "validation"
        self.reports["predict" if trainer.predicting else stage].add(skipped)

    def report(self, stage: str, where: str) -> None:
        """One warning naming ``where`` for the samples ``stage`` skipped, then a fresh count."""
        summary = self.reports[stage].summary(where)
        if summary is not None:
            rank = f"rank {distributed.rank()} " if distributed.is_distributed() else ""
            warnings.warn(rank + summary, stacklevel=2)
        self.reports[stage].reset()


@dataclass(frozen=True)
class EvaluationData:
    """What a data module offers for evaluation.

    Attributes:
        num_classes: the label fields of ``batch["labels"]`` and their class counts (kNN, linear
            probe); empty when the batches carry no labels.
        class_names: the class names of label fields, in label order (zero-shot prompts,
            condition texts); a subset of ``num_classes``' fields.
        conditions: the attributes a condition can name (the conditional benchmark's rows, or
            the ``condition`` values of triplet batches).
        phrasings: ``{condition: {"seen": templates, "held-out": templates}}`` with ``{value}``
            for the class name (the conditional benchmark).
        gallery_tasks: ``{task: records}`` when each query batch carries its own gallery
            (``"gallery"``, ``"gallery_mask"``, the target first) and its ``"task"``, a
            position in this mapping (GeneCIS).
        has_bank: validation and test give two loaders, ``[bank, query]`` (the training images
            without augmentation, then the held-out queries); otherwise one, the queries.
    """

    num_classes: Mapping[str, int] = field(default_factory=dict)
    class_names: Mapping[str, Sequence[str]] = field(default_factory=dict)
    conditions: Sequence[str] = ()
    phrasings: Mapping[str, Mapping[str, Sequence[str]]] = field(default_factory=dict)
    gallery_tasks: Mapping[str, int] = field(default_factory=dict)
    has_bank: bool = True

    @property
    def query_loader(self) -> int:
        """The index of the query loader among the evaluation loaders."""
        return 1 if self.has_bank else 0


@runtime_checkable
class EvaluatesWith(Protocol):
    """A data module the evaluation callbacks can read: it says what it offers."""

    def evaluation_data(self) -> EvaluationData:
        """What this data module offers for evaluation (after ``setup``)."""


def check_evaluation_data(datamodule: object) -> EvaluationData:
    """The data module's :class:`EvaluationData`, checked.

    Raises:
        DataError: One line naming the data module and what is wrong: no such method, or
            class names, conditions or phrasings that do not match the label fields.
    """
    name = type(datamodule).__name__
    if not isinstance(datamodule, EvaluatesWith):
        raise DataError(
            f"{name} does not say what it offers for evaluation: give it "
            "evaluation_data() -> EvaluationData (contrastive/datamodules/common.py), or drop "
            "the evaluation callbacks from trainer.callbacks"
        )
    data = datamodule.evaluation_data()
    if not isinstance(data, EvaluationData):
        raise DataError(
            f"{name}.evaluation_data() returned {type(data).__name__}, not EvaluationData"
        )
    for field_name, n in data.num_classes.items():
        if not isinstance(n, int) or n < 1:
            raise DataError(f"{name}: label field {field_name!r} has {n!r} classes, expected >= 1")
    for field_name, names in data.class_names.items():
        if data.num_classes.get(field_name) != len(names):
            raise DataError(
                f"{name}: {len(names)} class names for {field_name!r}, which has "
                f"{data.num_classes.get(field_name, 'no')} classes"
            )
    for condition in data.conditions if data.phrasings else ():
        if condition not in data.class_names or not data.phrasings.get(condition, {}).get("seen"):
            raise DataError(
                f"{name}: condition {condition!r} needs class names and 'seen' phrasings"
            )
    return data


def default_num_workers(processes: int = 1) -> int:
    """Loader workers per training process: the CPUs it may use, less one for itself, up to 8.

    Eight workers decode some 2,000 ImageNet JPEGs a second at 224 px, more than most single
    GPUs consume with a ResNet-50; more only costs memory.

    Args:
        processes: Training processes sharing this machine's CPUs (one per device).
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(0, min(8, (cpus or 1) // max(1, processes) - 1))


class BankQueryDataModule(lightning.LightningDataModule):
    """The loaders of a labelled data module: shuffled train batches, and ``[bank, query]``
    for validation and test (the kNN memory and the held-out queries; see
    :class:`~contrastive.methods.ContrastiveMethod`); predict runs on the test queries.

    A subclass fills ``self._datasets`` in ``setup`` with ``"train"``, ``"bank"`` and the
    splits named by ``val_split`` and ``test_split``, and sets ``batch_size``,
    ``eval_batch_size``, ``num_workers`` and ``tokenizer``, and has ``num_classes`` and
    ``class_names`` (see :class:`EvaluationData`).
    """

    val_split = "val"
    test_split = "test"

    def evaluation_data(self) -> EvaluationData:
        """Labelled ``[bank, query]`` loaders: the label fields and their class names."""
        return EvaluationData(num_classes=self.num_classes, class_names=self.class_names)

    def loader_workers(self) -> int:
        return self.num_workers

    def collate(self) -> Collate:
        """The loaders' ``collate_fn``."""
        return Collate(self.tokenizer)

    def _loader(self, name: str, train: bool = False) -> DataLoader:
        if not self._datasets:
            raise RuntimeError(f"call setup() before asking {type(self).__name__} for a dataloader")
        workers = self.loader_workers()
        return DataLoader(
            self._datasets[name],
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            drop_last=train,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            collate_fn=self.collate(),
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled train batches (the last incomplete one dropped); views are made later."""
        return self._loader("train", train=True)

    def val_dataloader(self) -> list[DataLoader]:
        """``[bank, query]``: the kNN memory (training images) and the validation split."""
        return [self._loader("bank"), self._loader(self.val_split)]

    def test_dataloader(self) -> list[DataLoader]:
        """``[bank, query]``: the kNN memory (training images) and the test split."""
        return [self._loader("bank"), self._loader(self.test_split)]

    def predict_dataloader(self) -> DataLoader:
        """The test split."""
        return self._loader(self.test_split)
