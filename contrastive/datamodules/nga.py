"""National Gallery of Art images with their metadata, from a folder ``contrastive data nga`` wrote.

The folder holds ``images/<objectid>.jpg`` and ``manifest.jsonl`` (one row per image: path,
objectid, title, artist, classification, medium, year, ...; see :mod:`contrastive.tools.nga`).
The metadata serves three uses:

- labels for kNN evaluation, per attribute (``LABELS``): ``classification`` (Painting, Print,
  Drawing, ...), ``artist`` (the ``num_artists`` most frequent, the rest ``"other"``, so every
  class has examples) and ``century`` (``"17th century"``, from the year the work was begun);
- a caption for CLIP-style methods: ``"Oil on canvas painting by Rembrandt van Rijn, 1650"``;
- conditions for triplets ("same artist", "same medium", "same century"):
  :meth:`NGADataset.metadata` gives each item's ``METADATA_FIELDS``.

Splits are deterministic: rows are ordered by a seeded hash of their object id; the first
``val_fraction`` of them are the validation queries, the next ``test_fraction`` the test
queries, the rest train. A row keeps its split as the collection grows, except near the cuts.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from torch.utils.data import Dataset

from contrastive.datamodules.common import (
    BankQueryDataModule,
    DataError,
    Skipped,
    Tokenizer,
)
from contrastive.datamodules.images import DEFAULT_MAX_PIXELS, load_image
from contrastive.files import TableError
from contrastive.tools.nga_catalog import MANIFEST, read_manifest

LABELS: tuple[str, ...] = ("classification", "artist", "century")
METADATA_FIELDS: tuple[str, ...] = (
    "title",
    "artist",
    "classification",
    "medium",
    "year",
    "century",
)
OTHER_ARTIST = "other"
UNKNOWN = "unknown"


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def century(year: int | None) -> str:
    """The century of a year in words: 1650 -> ``"17th century"``, -500 -> ``"5th century BCE"``.

    Centuries go by hundreds as people say them (1600-1699 is the 17th century); years are
    astronomical (``-500`` is 500 BCE); ``None`` gives ``"unknown"``.
    """
    if year is None:
        return UNKNOWN
    if year >= 0:
        return f"{_ordinal(year // 100 + 1)} century"
    return f"{_ordinal(-year // 100 + (1 if -year % 100 else 0))} century BCE"


def _century_key(name: str) -> tuple[int, int]:
    """Chronological order of :func:`century` names, ``"unknown"`` last."""
    if name == UNKNOWN:
        return (1, 0)
    n = int("".join(ch for ch in name.split()[0] if ch.isdigit()))
    return (0, -n if name.endswith("BCE") else n)


def caption(record: Mapping) -> str:
    """Describe an artwork in words from its manifest row.

    For example ``"Oil on canvas painting by Rembrandt van Rijn, 1650"``; parts that the
    metadata lacks are left out (``"Drawing, 1520"``, ``"Engraving print by Albrecht Dürer"``).
    """
    medium = (record.get("medium") or "").strip()
    kind = (record.get("classification") or "").strip().lower()
    text = f"{medium} {kind}" if medium and kind else medium or kind or "artwork"
    text = text[0].upper() + text[1:]
    if record.get("artist"):
        text += f" by {record['artist']}"
    year = record.get("year")
    if year is not None:
        text += f", {year}" if year >= 0 else f", {-year} BCE"
    return text


def class_names_of(records: Sequence[Mapping], num_artists: int) -> dict[str, tuple[str, ...]]:
    """The classes of each label in ``LABELS``, fixed by the whole collection.

    ``classification``: sorted names (``"unknown"`` where empty); ``artist``: the
    ``num_artists`` most frequent (ties by name), then ``"other"``; ``century``: chronological,
    ``"unknown"`` last when a year is missing.
    """
    classifications = sorted({r.get("classification") or UNKNOWN for r in records})
    artists = Counter(r["artist"] for r in records if r.get("artist"))
    top = sorted(artists.items(), key=lambda item: (-item[1], item[0]))[:num_artists]
    centuries = sorted({century(r.get("year")) for r in records}, key=_century_key)
    return {
        "classification": tuple(classifications),
        "artist": (*(name for name, _ in top), OTHER_ARTIST),
        "century": tuple(centuries),
    }


def _label_value(record: Mapping, label: str) -> str:
    if label == "classification":
        return record.get("classification") or UNKNOWN
    if label == "artist":
        return record.get("artist") or OTHER_ARTIST
    return century(record.get("year"))


class NGADataset(Dataset):
    """Items of an NGA folder: the image, its labels, caption and path.

    Each item is a dict:

    - ``"image"``: ``(3, S, S)`` uint8 tensor (shorter side resized to S, centre crop).
    - ``"labels"``: ``{label: int}`` for every name in ``LABELS``, indices into ``class_names``.
    - ``"caption"``: see :func:`caption`.
    - ``"index"``: the item's index in this dataset.
    - ``"path"``: the image file.

    An image that cannot be read comes back as a :class:`Skipped` (see
    :func:`contrastive.datamodules.images.load_image`).

    Args:
        root: The folder ``contrastive data nga`` wrote.
        records: Manifest rows (see :func:`contrastive.tools.nga_catalog.read_manifest`).
        class_names: The classes of each label, e.g. from :func:`class_names_of`.
        image_size: Output height and width in pixels.
        max_pixels: Larger images are skipped (decompression bombs).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        records: Sequence[Mapping],
        class_names: Mapping[str, Sequence[str]],
        image_size: int = 224,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.root = Path(root)
        self.records = list(records)
        self.class_names = {label: tuple(class_names[label]) for label in LABELS}
        self.image_size = image_size
        self.max_pixels = max_pixels
        index = {
            label: {n: i for i, n in enumerate(names)} for label, names in self.class_names.items()
        }
        self._labels: list[dict[str, int]] = []
        for record in self.records:
            labels = {}
            for label in LABELS:
                value = _label_value(record, label)
                if label == "artist" and value not in index[label]:
                    value = OTHER_ARTIST
                if value not in index[label]:
                    raise ValueError(
                        f"{record['path']}: {label} {value!r} is not in class_names[{label!r}] "
                        f"{self.class_names[label]}"
                    )
                labels[label] = index[label][value]
            self._labels.append(labels)

    def __len__(self) -> int:
        return len(self.records)

    def metadata(self, index: int) -> dict:
        """Item ``index``'s ``METADATA_FIELDS``: title, artist, classification, medium, year and
        century (conditions such as "same artist" compare these)."""
        record = self.records[index]
        out = {field: record.get(field) for field in METADATA_FIELDS if field != "century"}
        out["century"] = century(record.get("year"))
        return out

    def __getitem__(self, index: int) -> dict | Skipped:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        index = int(index) % len(self)
        record = self.records[index]
        path = self.root / record["path"]
        image = load_image(path, self.image_size, self.max_pixels)
        if isinstance(image, Skipped):
            return image
        return {
            "image": image,
            "labels": dict(self._labels[index]),
            "caption": caption(record),
            "index": index,
            "path": str(path),
        }


class NGADataModule(BankQueryDataModule):
    """National Gallery of Art images (``contrastive data nga --root ROOT`` downloads them).

    Validation and test return two loaders, ``[bank, query]``: ``bank`` is the first
    ``min(num_bank, train size)`` train images (a kNN memory bank, in the split's hashed
    order: a random sample), ``query`` the validation (or test) split. ``predict`` uses the
    test split. Labels, captions and metadata: see :class:`NGADataset`.

    Args:
        root: The folder with ``manifest.jsonl`` and ``images/``.
        image_size: Height and width of the images in pixels.
        val_fraction: Share of the images held out as validation queries (at least one).
        test_fraction: Share held out as test queries (at least one).
        num_bank: kNN memory-bank images taken from the train split.
        num_artists: Artists with their own class; the rest share ``"other"``.
        seed: Seed of the split.
        batch_size: Train batch size (the last incomplete batch is dropped).
        eval_batch_size: Batch size of the bank, validation, test and predict loaders.
        num_workers: DataLoader worker processes (kept alive between epochs when > 0).
        max_pixels: Larger images are skipped and reported (decompression bombs).
    """

    def __init__(
        self,
        root: str = "data/nga",
        image_size: int = 224,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        num_bank: int = 4096,
        num_artists: int = 20,
        seed: int = 0,
        batch_size: int = 256,
        eval_batch_size: int = 512,
        num_workers: int = 0,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        super().__init__()
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 < value < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {value}")
        if val_fraction + test_fraction >= 1.0:
            raise ValueError(
                f"val_fraction + test_fraction must leave images to train on, got "
                f"{val_fraction} + {test_fraction}"
            )
        for name, value in (
            ("image_size", image_size),
            ("num_bank", num_bank),
            ("num_artists", num_artists),
            ("batch_size", batch_size),
            ("eval_batch_size", eval_batch_size),
            ("max_pixels", max_pixels),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.save_hyperparameters()
        self.root = Path(root).expanduser()
        self.image_size = image_size
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.num_bank = num_bank
        self.num_artists = num_artists
        self.seed = seed
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.max_pixels = max_pixels
        self.tokenizer: Tokenizer | None = None  # set by methods that read captions (CLIP)
        self._splits: dict[str, list[dict]] = {}
        self._class_names: dict[str, tuple[str, ...]] = {}
        self._datasets: dict[str, NGADataset] = {}

    # ---- the collection -------------------------------------------------------------------

    def _load(self) -> None:
        """Read the manifest, fix the classes and split the rows (once)."""
        if self._splits:
            return
        try:
            records = read_manifest(self.root)
        except TableError as err:
            raise DataError(str(err)) from None
        if not records:
            raise DataError(
                f"no images listed in {self.root / MANIFEST}: download them first with "
                f"`contrastive data nga --root {self.root}`"
            )
        self._class_names = class_names_of(records, self.num_artists)
        order = sorted(
            records,
            key=lambda r: hashlib.sha256(f"{self.seed}:{r['objectid']}".encode()).digest(),
        )
        n_val = max(1, round(self.val_fraction * len(order)))
        n_test = max(1, round(self.test_fraction * len(order)))
        train = order[n_val + n_test :]
        if len(train) < self.batch_size:
            raise ValueError(
                f"{self.root} has {len(records)} images, {len(train)} of them for training: "
                f"fewer than batch_size ({self.batch_size}), so the train loader (which drops "
                "the last incomplete batch) would yield no batch at all"
            )
        self._splits = {
            "train": train,
            "bank": train[: self.num_bank],
            "val": order[:n_val],
            "test": order[n_val : n_val + n_test],
        }

    @property
    def attributes(self) -> tuple[str, ...]:
        """The label names, in label order."""
        return LABELS

    @property
    def num_classes(self) -> dict[str, int]:
        """Number of classes of each label (reads the manifest if ``setup`` has not)."""
        self._load()
        return {label: len(names) for label, names in self._class_names.items()}

    @property
    def class_names(self) -> dict[str, tuple[str, ...]]:
        """The class names of each label, index order (for reports, captions and prompts)."""
        self._load()
        return dict(self._class_names)

    def setup(self, stage: str | None = None) -> None:
        """Read the manifest and build every split's dataset (images are read lazily)."""
        self._load()
        self._datasets = {
            name: NGADataset(
                self.root, records, self._class_names, self.image_size, self.max_pixels
            )
            for name, records in self._splits.items()
        }

    def dataset(self, split: str) -> NGADataset:
        """The dataset of ``split`` (``"train"``, ``"bank"``, ``"val"`` or ``"test"``)."""
        if not self._datasets:
            raise RuntimeError("call setup() before asking NGADataModule for a dataset")
        return self._datasets[split]

    # ---- loaders ----------------------------------------------------------------------------
