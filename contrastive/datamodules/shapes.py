"""The built-in generated dataset: one shape on a textured background, with known attributes.

Every image is drawn deterministically from ``(seed, split, index)``; nothing is downloaded. The
factors and the drawing are in :mod:`contrastive.datamodules.shape_render`.

Views made by the generator: with ``shared_factors`` set, every item carries a second image of
the same factors for the shared ones (class and fine value) and every other factor re-drawn to
a different class, with fresh jitter. Which object a view shows is re-drawn on every fetch, so
each epoch sees new views; see :meth:`ShapesDataset.view_factors` for the RNG.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from contrastive.datamodules.common import BankQueryDataModule, Tokenizer
from contrastive.datamodules.shape_render import (
    ATTRIBUTES,
    CLASS_NAMES,
    NUM_FINE,
    Factor,
    caption,
    fine_values,
    render,
)

SPLITS: tuple[str, ...] = ("train", "val", "test")

_VIEW_STREAM = 1  # spawn key that separates view randomness from the image streams


def view_rng(torch_seed: int) -> np.random.Generator:
    """The generator a dataset draws its views from in a process whose torch seed is given.

    Its seed sequence carries a spawn key, so it never repeats an image stream
    ``[seed, split, index]`` (numpy pads short entropy with zeros: ``default_rng(s)`` alone
    would equal image 0 of the train split of seed ``s``).
    """
    return np.random.default_rng(np.random.SeedSequence(torch_seed, spawn_key=(_VIEW_STREAM,)))


def check_factor_names(names: Sequence[str]) -> None:
    """Raise ``ValueError`` naming any entry of ``names`` that is not in ``ATTRIBUTES``."""
    if isinstance(names, str):
        raise TypeError(f"expected a list of factor names, got the string {names!r}")
    unknown = [name for name in names if name not in ATTRIBUTES]
    if unknown:
        raise ValueError(
            f"unknown factor(s) {unknown} in shared_factors; valid factors are {list(ATTRIBUTES)}"
        )


# ----------------------------------------------------------------------------- dataset


def dropout_rates(
    caption_dropout: float | Mapping[str, float], attributes: Sequence[str]
) -> np.ndarray:
    """Each attribute's probability ``(A,)`` of being left out of a caption: one number for
    all, or ``{attribute: p}`` (an attribute not named is always said).

    Raise ``ValueError`` naming a key that is no attribute or a rate outside ``[0, 1)``.
    """
    per_attribute = isinstance(caption_dropout, Mapping)
    rates = caption_dropout if per_attribute else dict.fromkeys(attributes, caption_dropout)
    for name, rate in rates.items():
        if name not in attributes:
            raise ValueError(
                f"caption_dropout: {name!r} is no attribute; valid: {list(attributes)}"
            )
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate < 1:
            key = f"caption_dropout[{name!r}]" if per_attribute else "caption_dropout"
            raise ValueError(f"{key} must be in [0, 1), got {rate!r}")
    return np.array([float(rates.get(a, 0.0)) for a in attributes])


class ShapesDataset(Dataset):
    """Generated images of one shape on a textured background, with their factors.

    Item ``i`` is drawn from ``np.random.default_rng([seed, split_id, i])``, so it depends on
    ``(seed, split, i)`` only: two instances agree byte for byte, and the splits never share a
    random stream.

    Each item is a dict:

    - ``"image"``: ``(3, H, W)`` uint8 tensor.
    - ``"labels"``: ``{attribute: int}`` for every attribute in ``ATTRIBUTES``.
    - ``"caption"``: a sentence naming every attribute's class (see :func:`caption`).
    - ``"index"``: ``i``.
    - ``"view"``: ``(3, H, W)`` uint8 tensor, only when ``shared_factors`` is not ``None``: the
      shared factors of the image kept exactly, every other one re-drawn to another class;
      with its ``"view_caption"``.

    Args:
        num_samples: Number of items.
        image_size: Height and width in pixels, at least 16.
        seed: Non-negative seed of the image stream.
        split: One of ``"train"``, ``"val"``, ``"test"``.
        shared_factors: Factors a generator view keeps; ``None`` for no view. ``[]`` makes a
            view that shares nothing with its image.
        caption_dropout: Probability that the caption leaves out each attribute, drawn anew
            on every fetch (like the views); ``{attribute: p}`` per attribute (one not named
            is always said). Partial captions ("a red star") make an image-text model learn
            each attribute on its own: with full captions, the easy attributes alone tell the
            captions of a batch apart.
    """

    def __init__(
        self,
        num_samples: int,
        image_size: int = 32,
        seed: int = 0,
        split: str = "train",
        shared_factors: list[str] | None = None,
        caption_dropout: float | Mapping[str, float] = 0.0,
    ) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if image_size < 16:
            raise ValueError(f"image_size must be >= 16 pixels, got {image_size}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0 (a numpy seed), got {seed}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if shared_factors is not None:
            check_factor_names(shared_factors)
        self.dropout = dropout_rates(caption_dropout, ATTRIBUTES)  # (7,)
        self.num_samples = num_samples
        self.image_size = image_size
        self.seed = seed
        self.split = split
        self.shared_factors = None if shared_factors is None else tuple(shared_factors)
        self._split_id = SPLITS.index(split)
        self._high = np.array([len(CLASS_NAMES[attr]) for attr in ATTRIBUTES])
        self._rng: np.random.Generator | None = None
        self._rng_key: tuple[int, int] | None = None

    @property
    def num_classes(self) -> dict[str, int]:
        """Number of classes of each attribute."""
        return {attr: len(CLASS_NAMES[attr]) for attr in ATTRIBUTES}

    def __len__(self) -> int:
        return self.num_samples

    def factors(self, index: int) -> dict[str, Factor]:
        """The factors of image ``index``, a deterministic function of ``(seed, split, index)``."""
        rng = np.random.default_rng([self.seed, self._split_id, index])
        labels = rng.integers(0, self._high)  # (7,)
        uniforms = rng.random(sum(NUM_FINE.values()))
        out, start = {}, 0
        for attr, label in zip(ATTRIBUTES, labels.tolist(), strict=True):
            n = NUM_FINE[attr]
            out[attr] = Factor(label, fine_values(attr, label, uniforms[start : start + n]))
            start += n
        return out

    def view_factors(
        self, factors: Mapping[str, Factor], rng: np.random.Generator
    ) -> dict[str, Factor]:
        """The factors of a generator view of the image with ``factors``.

        Shared factors are kept as they are; every other one gets a class different from the
        image's, drawn uniformly from the others, and new fine values.

        ``__getitem__`` passes ``view_rng(torch.initial_seed())``, made the first time it needs
        one in a process (again if the torch seed changes) and then drawn on, so views are fresh
        on every fetch, differ between DataLoader workers (each has its own torch seed) and
        repeat under ``lightning.seed_everything(seed, workers=True)``.

        Raises:
            RuntimeError: If the dataset was made without ``shared_factors``.
        """
        if self.shared_factors is None:
            raise RuntimeError("this dataset makes no views: it was built with shared_factors=None")
        out = {}
        for attr in ATTRIBUTES:
            if attr in self.shared_factors:
                out[attr] = factors[attr]
                continue
            n = len(CLASS_NAMES[attr])
            label = (factors[attr].label + int(rng.integers(1, n))) % n
            out[attr] = Factor(label, fine_values(attr, label, rng.random(NUM_FINE[attr])))
        return out

    def _view_rng(self) -> np.random.Generator:
        """This process's generator for views, made again in a new process or torch seed."""
        key = (os.getpid(), torch.initial_seed())
        if self._rng is None or self._rng_key != key:
            self._rng = view_rng(key[1])
            self._rng_key = key
        return self._rng

    def _captioned(self) -> tuple[str, ...]:
        if not self.dropout.any():
            return ATTRIBUTES
        keep = self._view_rng().random(len(ATTRIBUTES)) >= self.dropout  # (7,)
        return tuple(a for a, k in zip(ATTRIBUTES, keep, strict=True) if k)

    def _checked_index(self, index: int) -> int:
        """``index`` in ``[0, num_samples)``, negative ones counted from the end."""
        if not -self.num_samples <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        return int(index) % self.num_samples

    def __getitem__(self, index: int) -> dict:
        index = self._checked_index(index)
        factors = self.factors(index)
        item = {
            "image": torch.from_numpy(render(factors, self.image_size)),
            "labels": {attr: f.label for attr, f in factors.items()},
            "caption": caption(factors, named := self._captioned()),
            "index": index,
        }
        if self.shared_factors is not None:
            view = self.view_factors(factors, self._view_rng())
            item["view"] = torch.from_numpy(render(view, self.image_size))
            # The same attributes said: the two captions differ only where the images do.
            item["view_caption"] = caption(view, named)
        return item


# ----------------------------------------------------------------------------- datamodule


class ShapesDataModule(BankQueryDataModule):
    """The built-in dataset: generated shapes with known attributes, nothing to download.

    Validation and test return two loaders, ``[bank, query]``: ``bank`` is the first
    ``min(num_bank, num_train)`` train images without views (a kNN memory bank, labels
    included), ``query`` the ``"val"`` (or ``"test"``) split. ``predict`` uses the test query.

    Args:
        image_size: Height and width in pixels, at least 16.
        num_train: Train images; a train epoch is ``num_train // batch_size`` batches.
        num_val: Validation query images.
        num_test: Test query images (also the predict set).
        num_bank: kNN memory-bank images taken from the start of the train split.
        seed: Seed of every split's image stream (views follow the torch seed instead).
        shared_factors: Factors the train view shares with its image (see
            :class:`ShapesDataset`); ``None`` for no generator view.
        caption_dropout: Probability that a train caption leaves out each attribute, or
            ``{attribute: p}`` (see :class:`ShapesDataset`); evaluation captions always name
            every attribute.
        batch_size: Train batch size (the last incomplete batch is dropped).
        eval_batch_size: Batch size of the bank, validation, test and predict loaders.
        num_workers: DataLoader worker processes (kept alive between epochs when > 0).
    """

    def __init__(
        self,
        image_size: int = 32,
        num_train: int = 8192,
        num_val: int = 1024,
        num_test: int = 2048,
        num_bank: int = 4096,
        seed: int = 0,
        shared_factors: list[str] | None = None,
        caption_dropout: float | dict[str, float] = 0.0,
        batch_size: int = 256,
        eval_batch_size: int = 512,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if image_size < 16:
            raise ValueError(f"image_size must be >= 16 pixels, got {image_size}")
        for name, value in (
            ("num_val", num_val),
            ("num_test", num_test),
            ("num_bank", num_bank),
            ("batch_size", batch_size),
            ("eval_batch_size", eval_batch_size),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if num_train < batch_size:
            raise ValueError(
                f"num_train ({num_train}) must be >= batch_size ({batch_size}): the train loader "
                "drops the last incomplete batch, so it would yield no batch at all"
            )
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0 (a numpy seed), got {seed}")
        if shared_factors is not None:
            check_factor_names(shared_factors)
        dropout_rates(caption_dropout, ATTRIBUTES)  # a bad key or rate fails here
        self.save_hyperparameters()
        self.image_size = image_size
        self.num_train = num_train
        self.num_val = num_val
        self.num_test = num_test
        self.num_bank = min(num_bank, num_train)
        self.seed = seed
        self.shared_factors = shared_factors
        self.caption_dropout = caption_dropout
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self._datasets: dict[str, ShapesDataset] = {}
        self.tokenizer: Tokenizer | None = None  # set by methods that read captions (CLIP)

    @property
    def attributes(self) -> tuple[str, ...]:
        """The attribute names, in label order."""
        return ATTRIBUTES

    @property
    def num_classes(self) -> dict[str, int]:
        """Number of classes of each attribute."""
        return {attr: len(CLASS_NAMES[attr]) for attr in ATTRIBUTES}

    @property
    def class_names(self) -> dict[str, tuple[str, ...]]:
        """Human-readable class names of each attribute (for captions and prompts)."""
        return dict(CLASS_NAMES)

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets (generated lazily per item, so all are built whatever the stage)."""
        common = {"image_size": self.image_size, "seed": self.seed}
        self._datasets = {
            "train": ShapesDataset(
                self.num_train,
                split="train",
                shared_factors=self.shared_factors,
                caption_dropout=self.caption_dropout,
                **common,
            ),
            "bank": ShapesDataset(self.num_bank, split="train", **common),
            "val": ShapesDataset(self.num_val, split="val", **common),
            "test": ShapesDataset(self.num_test, split="test", **common),
        }
