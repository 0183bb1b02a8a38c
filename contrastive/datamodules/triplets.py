"""Triplet manifests for text-conditioned similarity: two images and what they have in common.

A manifest is JSONL (one object per line) or CSV/TSV (a header row), one triplet per row:

==============  ========  ============================================================
field           required  meaning
==============  ========  ============================================================
``image_a``     yes       the anchor image
``image_b``     yes       an image alike to it in the respect ``text`` names
``text``        yes       the condition: ``"same color"``, ``"both are portraits"``
``negative``    no        an image *not* alike in that respect
``condition``   no        a short group name for per-condition metrics (default ``all``)
==============  ========  ============================================================

Image paths are relative to the manifest's folder (absolute paths are kept).
``contrastive data triplets`` (:mod:`contrastive.tools.triplets`) writes such manifests from a
labelled folder or a metadata table.

**Bad rows.** :func:`read_triplet_manifest` checks every row on load: a malformed JSON line, a
row without a required key, an empty text or an image file that does not exist is skipped and
counted, and one warning names the counts and the first few rows. A CSV whose header lacks a
required column, or a manifest without one usable row, is a one-line :class:`DataError`. An
image that exists but does not decode is skipped later, when the loader reads it.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import NamedTuple

import lightning
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from contrastive.datamodules.common import (
    Collate,
    DataError,
    EvaluationData,
    Skipped,
    SkipReport,
    Tokenizer,
)
from contrastive.datamodules.images import load_image
from contrastive.files import JSON_SUFFIXES, TableError, read_rows

REQUIRED = ("image_a", "image_b", "text")
DEFAULT_CONDITION = "all"


class TripletRow(NamedTuple):
    """One usable row of a manifest; paths are resolved against the manifest's folder."""

    image_a: str
    image_b: str
    text: str
    condition: str
    negative: str | None
    source: str  # "manifest.jsonl:12", for messages


def _text(value: object) -> str | None:
    """A field's text, stripped; ``None`` when it is not text (a number, a list)."""
    if value is None:
        return ""
    return value.strip() if isinstance(value, str) else None


def read_triplet_manifest(path: str | os.PathLike) -> tuple[list[TripletRow], list[Skipped]]:
    """The usable rows of a triplet manifest, and the rows skipped with their reasons.

    ``.jsonl`` / ``.json`` files are read as JSON lines, ``.csv`` as comma-separated and
    ``.tsv`` as tab-separated tables with a header. Skipped rows (reasons ``"malformed row"``,
    ``"missing key 'text'"``, ``"empty text"``, ``"missing image"``) are named
    ``"manifest.jsonl:LINE"`` and summarised in one warning.

    Raises:
        DataError: the file is missing, of another type or not UTF-8 (a byte-order mark is
            allowed), a CSV/TSV header lacks a required column, or no row is usable.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"triplet manifest not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in (*JSON_SUFFIXES, ".csv", ".tsv"):
        raise DataError(f"{path}: a triplet manifest is .jsonl, .csv or .tsv, got {suffix!r}")
    exists: dict[str, bool] = {}  # images recur across rows: look each up once

    def is_file(image: str) -> bool:
        if image not in exists:
            exists[image] = os.path.isfile(image)
        return exists[image]

    rows, skipped = [], []
    hint = f"; a triplet manifest needs {list(REQUIRED)}"
    try:
        raw = list(read_rows(path, REQUIRED, hint))
    except TableError as err:
        raise DataError(str(err)) from None
    for line, row in raw:
        where = f"{path}:{line}"
        if row is None:
            skipped.append(Skipped(where, "malformed row"))
            continue
        missing = [key for key in REQUIRED if key not in row]
        if missing:
            skipped.append(Skipped(where, f"missing key {missing[0]!r}"))
            continue
        fields = {key: _text(row.get(key)) for key in (*REQUIRED, "negative", "condition")}
        if any(value is None for value in fields.values()):
            skipped.append(Skipped(where, "malformed row"))
            continue
        if not fields["text"]:
            skipped.append(Skipped(where, "empty text"))
            continue
        keys = ("image_a", "image_b", "negative") if fields["negative"] else REQUIRED[:2]
        images = [str(path.parent / fields[key]) if fields[key] else "" for key in keys]
        if not all(image and is_file(image) for image in images):
            skipped.append(Skipped(where, "missing image"))
            continue
        negative = images[2] if fields["negative"] else None
        condition = fields["condition"] or DEFAULT_CONDITION
        rows.append(TripletRow(images[0], images[1], fields["text"], condition, negative, where))
    report = SkipReport()
    report.add(skipped)
    summary = report.summary(f"triplet manifest {path}")
    if not rows:
        raise DataError(f"{path}: no usable triplet rows" + (f" ({summary})" if summary else ""))
    if summary is not None:
        warnings.warn(summary, stacklevel=2)
    return rows, skipped


class TripletDataset(Dataset):
    """The triplets of a manifest as uint8 images, ready for ``default_collate``.

    An item is ``{"image": (3, S, S) uint8 of image_a, "view": of image_b, "text": str,
    "condition": str}``, plus ``"negative"`` (``(3, S, S)`` uint8; zeros where a row has none)
    and ``"has_negative"`` (bool) on every item when ``with_negatives``. An image that does not
    decode makes the item a :class:`Skipped`, which the loader's ``Collate`` drops and counts.

    Args:
        rows: from :func:`read_triplet_manifest`.
        image_size: images are resized (shorter side) and centre-cropped to this.
        with_negatives: give every item a negative; default: when any row has one. A data module
            decides it per manifest, so splits of one manifest have the same keys.
    """

    def __init__(
        self, rows: list[TripletRow], image_size: int = 64, with_negatives: bool | None = None
    ) -> None:
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        self.rows, self.image_size = rows, image_size
        if with_negatives is None:
            with_negatives = any(row.negative is not None for row in rows)
        self.with_negatives = with_negatives

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict | Skipped:
        row = self.rows[index]
        paths = {"image": row.image_a, "view": row.image_b}
        if self.with_negatives and row.negative is not None:
            paths["negative"] = row.negative
        item: dict = {}
        for key, image_path in paths.items():
            image = load_image(image_path, self.image_size)
            if isinstance(image, Skipped):
                return image
            item[key] = image  # (3, S, S) uint8
        item["text"], item["condition"] = row.text, row.condition
        if self.with_negatives:
            item["has_negative"] = "negative" in item
            if not item["has_negative"]:
                item["negative"] = torch.zeros(
                    3, self.image_size, self.image_size, dtype=torch.uint8
                )
        return item


class TripletManifestDataModule(lightning.LightningDataModule):
    """(image, image, condition text) triplets from manifests, for text-conditioned methods.

    Validation and test give one loader each of triplet items (no kNN bank and no labels: see
    ``evaluation_data``). Without ``val_manifest``, a seeded ``val_fraction`` of the train
    manifest's rows is held out for validation (rows, not images, are split: an image may
    appear on both sides).
    Test reads ``test_manifest``, or else the validation rows. The condition ``text`` stays a
    string: the method embeds each distinct condition once (its text cache).

    Args:
        manifest: the training triplets (``.jsonl``, ``.csv`` or ``.tsv``).
        val_manifest: validation triplets; ``None`` to hold out ``val_fraction`` of ``manifest``.
        test_manifest: test triplets; ``None`` to test on the validation triplets.
        val_fraction: share of ``manifest``'s rows held out when there is no ``val_manifest``
            (at least one row); 0 for no validation.
        image_size: images are resized (shorter side) and centre-cropped to this.
        batch_size: train batch size (the last incomplete batch is dropped).
        eval_batch_size: batch size of validation and test.
        num_workers: loader worker processes (kept alive between epochs).
        seed: seed of the validation split.
    """

    def __init__(
        self,
        manifest: str,
        val_manifest: str | None = None,
        test_manifest: str | None = None,
        val_fraction: float = 0.1,
        image_size: int = 64,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        for name, value in (
            ("image_size", image_size),
            ("batch_size", batch_size),
            ("eval_batch_size", eval_batch_size),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.save_hyperparameters()
        self.manifests = {"train": manifest, "val": val_manifest, "test": test_manifest}
        self.val_fraction, self.image_size, self.seed = val_fraction, image_size, seed
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers = num_workers
        self.tokenizer: Tokenizer | None = None  # triplets carry no captions to tokenize
        self._splits: dict[str, tuple[list[TripletRow], bool]] = {}  # rows, with negatives

    def _load(self) -> None:
        """Read the manifests and split off validation rows (once)."""
        if self._splits:
            return
        loaded = {}
        for split, manifest in self.manifests.items():
            if manifest is not None:
                rows, _ = read_triplet_manifest(manifest)
                loaded[split] = (rows, any(row.negative is not None for row in rows))
        train, negatives = loaded["train"]
        if "val" not in loaded and self.val_fraction > 0:
            order = np.random.default_rng(self.seed).permutation(len(train))
            n_val = max(1, round(self.val_fraction * len(train)))
            if n_val >= len(train):
                raise DataError(
                    f"{self.manifests['train']}: {len(train)} usable rows; val_fraction "
                    f"{self.val_fraction} leaves none to train on"
                )
            loaded["val"] = ([train[i] for i in sorted(order[:n_val])], negatives)
            loaded["train"] = ([train[i] for i in sorted(order[n_val:])], negatives)
        if "test" not in loaded and "val" in loaded:
            loaded["test"] = loaded["val"]
        self._splits = loaded

    @property
    def conditions(self) -> list[str]:
        """The condition names of every loaded row (train, validation and test), sorted."""
        self._load()
        return sorted({row.condition for rows, _ in self._splits.values() for row in rows})

    def evaluation_data(self) -> EvaluationData:
        """One evaluation loader of triplets, no labels: triplet accuracy per condition."""
        return EvaluationData(conditions=self.conditions, has_bank=False)

    def setup(self, stage: str | None = None) -> None:
        self._load()

    def _loader(self, split: str) -> DataLoader:
        self._load()
        if split not in self._splits:
            raise DataError(f"no {split} triplets: set data.{split}_manifest")
        rows, negatives = self._splits[split]
        train = split == "train"
        if train and len(rows) < self.batch_size:
            raise DataError(
                f"{self.manifests['train']}: {len(rows)} training rows, fewer than batch_size "
                f"{self.batch_size}: not one full batch (the last incomplete one is dropped)"
            )
        return DataLoader(
            TripletDataset(rows, self.image_size, with_negatives=negatives),
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            drop_last=train,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            collate_fn=Collate(self.tokenizer),
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled train triplets (the last incomplete batch dropped)."""
        return self._loader("train")

    def val_dataloader(self) -> DataLoader | list:
        """The validation triplets; none when ``val_fraction`` is 0 without ``val_manifest``."""
        self._load()
        return self._loader("val") if "val" in self._splits else []

    def test_dataloader(self) -> DataLoader:
        """The test triplets: ``test_manifest``, or else the validation triplets."""
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        """The test triplets."""
        return self._loader("test")
