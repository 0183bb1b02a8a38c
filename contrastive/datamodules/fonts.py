"""Typefaces: glyphs rendered from the fonts on this machine, with known attributes.

The second built-in data set after the shapes, made of real, human-designed artefacts (the
typefaces Conditional Similarity Networks compared "in letter" and "in typeface", Veit et al.
2017). The faces come from fontconfig (:mod:`contrastive.datamodules.font_catalog`); a glyph is
one letter in one face, and every image shows one glyph in black on white:

==========  =================================================================
attribute   classes
==========  =================================================================
letter      the characters of ``letters`` (``a`` to ``z`` by default)
family      the font families found, sorted (``DejaVu Sans``, ``DejaVu Serif``...)
weight      regular, bold
slant       upright, italic (obliques count as italic)
spacing     proportional, monospace
==========  =================================================================

Rendering and splits: :mod:`contrastive.datamodules.font_glyphs`.

Generator views (``shared_factors``): a second image of a train glyph that shares the listed
attributes with the item's (any values elsewhere), drawn anew on every fetch like the shapes'
views; sharing every attribute re-renders the same glyph with new jitter.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from contrastive.datamodules.common import BankQueryDataModule, Tokenizer
from contrastive.datamodules.font_catalog import read_catalog
from contrastive.datamodules.font_glyphs import (
    ATTRIBUTES,
    LETTERS,
    GlyphRenderer,
    GlyphTable,
    check_attributes,
)
from contrastive.datamodules.shapes import SPLITS, dropout_rates, view_rng

# The images a process (a loader worker) remembers: 64 MiB, 21,000 glyphs of 32 px.
DRAWN_BYTES = 64 * 2**20


def caption(names: Mapping[str, str], named: Sequence[str] = ATTRIBUTES) -> str:
    """Describe a glyph, naming the attributes in ``named``.

    All of them: ``the letter g in DejaVu Serif Bold Italic`` (regular, upright and the
    family's spacing go unsaid, as in a font's name). Without the family, the style is said
    in words: ``the letter g in bold italic monospace type``; without the letter: ``a letter
    in DejaVu Serif``; with nothing: ``a letter``.
    """
    subject = f"the letter {names['letter']}" if "letter" in named else "a letter"
    if "family" in named:
        style = [names["family"]]
        style += ["Bold"] if "weight" in named and names["weight"] == "bold" else []
        style += ["Italic"] if "slant" in named and names["slant"] == "italic" else []
        return f"{subject} in {' '.join(style)}"
    words = [names[a] for a in ("weight", "slant", "spacing") if a in named]
    return f"{subject} in {' '.join(words)} type" if words else subject


class FontsDataset(Dataset):
    """Rendered glyphs of one split, with their attributes.

    Each item is a dict: ``"image"`` ``(3, H, W)`` uint8, ``"labels"`` ``{attribute: int}``,
    ``"caption"`` (see :func:`caption`), ``"index"``, and with ``shared_factors`` a generator
    ``"view"`` and its ``"view_caption"``.

    Args:
        table: The glyphs and their splits.
        renderer: What draws them.
        num_samples: Number of items.
        seed: Seed of the split's order and jitter.
        split: ``"train"``, ``"val"`` or ``"test"``.
        shared_factors: Attributes a generator view shares with its item; ``None``: no view.
        caption_dropout: Probability that a caption leaves out each attribute (per fetch),
            or ``{attribute: p}`` (one not named is always said).
    """

    def __init__(
        self,
        table: GlyphTable,
        renderer: GlyphRenderer,
        num_samples: int,
        seed: int = 0,
        split: str = "train",
        shared_factors: Sequence[str] | None = None,
        caption_dropout: float | Mapping[str, float] = 0.0,
    ) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        check_attributes(shared_factors or [], "shared_factors")
        self.table, self.renderer, self.num_samples = table, renderer, num_samples
        self.seed, self.split, self._split_id = seed, split, SPLITS.index(split)
        self.shared_factors = None if shared_factors is None else tuple(shared_factors)
        self.dropout = dropout_rates(caption_dropout, ATTRIBUTES)  # (A,)
        rows = table.splits[split]
        self.rows = rows[np.random.default_rng([seed, self._split_id]).permutation(len(rows))]
        self.pool = table.splits["train"]  # where views and partners come from
        self._rng: np.random.Generator | None = None
        self._rng_key: tuple[int, int] | None = None
        self._drawn: dict[Hashable, torch.Tensor] = {}  # see remembered()

    def __len__(self) -> int:
        return self.num_samples

    def glyph(self, index: int) -> tuple[int, np.ndarray]:
        """Item ``index``'s glyph row and its jitter: a function of ``(seed, split, index)``."""
        jitter = np.random.default_rng([self.seed, self._split_id, index]).random(3)
        return int(self.rows[index % len(self.rows)]), jitter

    def draw(self, glyph: int, jitter: np.ndarray) -> torch.Tensor:
        face, letter = self.table.glyphs[glyph]
        return self.renderer(int(face), self.table.letters[letter], jitter)

    def remembered(self, key: Hashable, draw: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``draw()``, drawn once per ``key`` in a process (each loader worker has its own)
        while the remembered images fit in ``DRAWN_BYTES``: an item's own image is a function
        of its index, drawn again every epoch otherwise."""
        if (image := self._drawn.get(key)) is None:
            image = draw()
            if (len(self._drawn) + 1) * image.nbytes <= DRAWN_BYTES:
                self._drawn[key] = image
        return image

    def labels(self, glyph: int) -> dict[str, int]:
        return dict(zip(ATTRIBUTES, self.table.labels[glyph].tolist(), strict=True))

    def _view_rng(self) -> np.random.Generator:
        """This process's generator for views, made again in a new process or torch seed."""
        key = (os.getpid(), torch.initial_seed())
        if self._rng is None or self._rng_key != key:
            self._rng, self._rng_key = view_rng(key[1]), key
        return self._rng

    def _captioned(self) -> tuple[str, ...]:
        if not self.dropout.any():
            return ATTRIBUTES
        keep = self._view_rng().random(len(ATTRIBUTES)) >= self.dropout
        return tuple(a for a, k in zip(ATTRIBUTES, keep, strict=True) if k)

    def _checked_index(self, index: int) -> int:
        if not -self.num_samples <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        return int(index) % self.num_samples

    def __getitem__(self, index: int) -> dict:
        index = self._checked_index(index)
        glyph, jitter = self.glyph(index)
        named = self._captioned()
        item = {
            "image": self.remembered(index, lambda: self.draw(glyph, jitter)),
            "labels": self.labels(glyph),
            "caption": caption(self.table.names(glyph), named),
            "index": index,
        }
        if self.shared_factors is not None:
            rng = self._view_rng()
            candidates = self.table.matching(glyph, self.shared_factors, self.pool)
            view = int(rng.choice(candidates)) if len(candidates) else glyph
            item["view"] = self.draw(view, rng.random(3))
            item["view_caption"] = caption(self.table.names(view), named)
        return item


class FontsDataModule(BankQueryDataModule):
    """Glyphs of the fonts on this machine (see the module docstring), nothing downloaded.

    Validation and test return ``[bank, query]``: the first ``num_bank`` train images (a kNN
    memory, labelled) and the held-out glyphs of ``val`` (``test``). A one-line warning
    reports what the font scan left out (:meth:`Catalog.summary`).

    Args:
        fonts: A folder of ``.ttf``/``.otf``/``.ttc`` files; ``None``: every font installed
            (fontconfig). ``benchmarks/fonts_setup.sh`` installs the benchmark's set.
        families: Use only these families (each must be found); ``None``: all.
        letters: The characters drawn (the ``letter`` classes).
        image_size: Height and width in pixels, at least 16.
        glyph_scale: Pixels per em over ``image_size``.
        size_jitter: Relative size change, uniform in ``[-size_jitter, size_jitter)``.
        position_jitter: Largest move on each axis, over ``image_size``.
        held_out: Share of the glyphs held out, half for ``val`` and half for ``test``.
        num_train: Train images; an epoch is ``num_train // batch_size`` batches.
        num_val: Validation images; ``None``: each held-out val glyph once.
        num_test: Test images (also the predict set); ``None``: each test glyph once.
        num_bank: kNN bank images, the first train items.
        seed: Seed of the split, the order and the jitter (views follow the torch seed).
        shared_factors: Attributes a train view shares with its image; ``None``: no view.
        caption_dropout: Probability that a train caption leaves out each attribute, or
            ``{attribute: p}`` (one not named is always said: ``{letter: 0.5}``).
        batch_size: Train batch size (the last incomplete batch is dropped).
        eval_batch_size: Batch size of the bank, val, test and predict loaders.
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        fonts: str | None = None,
        families: list[str] | None = None,
        letters: str = LETTERS,
        image_size: int = 32,
        glyph_scale: float = 0.7,
        size_jitter: float = 0.1,
        position_jitter: float = 0.08,
        held_out: float = 0.2,
        num_train: int = 8192,
        num_val: int | None = None,
        num_test: int | None = None,
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
        if len(set(letters)) != len(letters) or not letters:
            raise ValueError(f"letters must be distinct characters, got {letters!r}")
        if not 0.0 < held_out < 1.0:
            raise ValueError(f"held_out must be in (0, 1), got {held_out}")
        if not (0.0 < glyph_scale <= 1.0 and 0.0 <= size_jitter < 1.0 and position_jitter >= 0):
            raise ValueError(
                "expected 0 < glyph_scale <= 1, 0 <= size_jitter < 1, position_jitter >= 0; got "
                f"{glyph_scale}, {size_jitter}, {position_jitter}"
            )
        if num_train < batch_size:
            raise ValueError(f"num_train ({num_train}) must be >= batch_size ({batch_size})")
        check_attributes(shared_factors or [], "shared_factors")
        dropout_rates(caption_dropout, ATTRIBUTES)  # a bad key or rate fails here
        self.save_hyperparameters()
        self.fonts, self.families, self.letters = fonts, families, letters
        self.image_size, self.seed, self.held_out = image_size, seed, held_out
        self.jitter = (glyph_scale, size_jitter, position_jitter)
        self.num_train, self.num_val, self.num_test = num_train, num_val, num_test
        self.num_bank = min(num_bank, num_train)
        self.shared_factors, self.caption_dropout = shared_factors, caption_dropout
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers = num_workers
        self._table: GlyphTable | None = None
        self._datasets: dict[str, FontsDataset] = {}
        self.tokenizer: Tokenizer | None = None

    @property
    def table(self) -> GlyphTable:
        """The glyphs, read from the fonts the first time it is needed."""
        if self._table is None:
            catalog = read_catalog(self.fonts, self.letters, self.families)
            if catalog.skipped or catalog.empty:
                warnings.warn(catalog.summary(), stacklevel=2)
            self._table = GlyphTable(catalog, self.letters, self.seed, self.held_out)
        return self._table

    @property
    def attributes(self) -> tuple[str, ...]:
        return ATTRIBUTES

    @property
    def num_classes(self) -> dict[str, int]:
        return {a: len(names) for a, names in self.class_names.items()}

    @property
    def class_names(self) -> dict[str, tuple[str, ...]]:
        return dict(self.table.class_names)

    def renderer(self) -> GlyphRenderer:
        return GlyphRenderer(self.table.catalog, self.image_size, *self.jitter)

    def setup(self, stage: str | None = None) -> None:
        table, renderer = self.table, self.renderer()
        sizes = {"val": self.num_val, "test": self.num_test}
        common = {"table": table, "renderer": renderer, "seed": self.seed}
        self._datasets = {
            "train": FontsDataset(
                num_samples=self.num_train,
                split="train",
                shared_factors=self.shared_factors,
                caption_dropout=self.caption_dropout,
                **common,
            ),
            "bank": FontsDataset(num_samples=self.num_bank, split="train", **common),
            **{
                split: FontsDataset(
                    num_samples=n or len(table.splits[split]), split=split, **common
                )
                for split, n in sizes.items()
            },
        }


__all__ = [
    "ATTRIBUTES",
    "FontsDataModule",
    "FontsDataset",
    "caption",
]
