"""(glyph, glyph, condition) triplets from the typefaces, for the text-conditioned method.

As the shapes' triplets (:mod:`contrastive.datamodules.shape_triplets`), from real fonts: an
anchor glyph, a positive alike in the respect the condition names, a hard negative alike in
everything else, and the condition in words, phrased several ways per attribute; some
phrasings are held out of training for the benchmark ("the same character").

Fonts are not a grid of independent factors (the spacing goes with the family, not every
family has a bold italic), so partners are chosen from the train glyphs by preference:

- the **positive** shares the condition's class, is another glyph, and where such glyphs
  exist is another letter (unless the condition is the letter) and another family (unless it
  is the family): ``same letter`` pairs a ``g`` with a ``g`` of another typeface, ``same
  typeface`` a ``g`` with another letter of its family;
- the **negative** has another class of the condition and, in turn, the anchor's letter,
  family, weight, slant and spacing wherever a glyph still has them: ``same letter`` gets
  another letter of the same face, ``both bold`` the same letter of the same family in the
  other weight. Where no glyph differs in the condition (a set without monospaced fonts),
  the row has no negative (``has_negative`` false, the anchor as placeholder).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
import torch

from contrastive.datamodules.common import EvaluationData
from contrastive.datamodules.fonts import ATTRIBUTES, FontsDataModule, FontsDataset
from contrastive.datamodules.shape_triplets import (
    check_phrasings,
    condition_probabilities,
    draw_condition,
)

# ``{value}`` stands for the anchor's class name ("g", "DejaVu Serif", "bold", "italic").
PHRASINGS: dict[str, dict[str, list[str]]] = {
    "letter": {
        "seen": ["same letter", "they show the same letter", "one letter in two fonts",
                 "both are the letter {value}"],
        "held-out": ["the same character", "each one is a {value}"],
    },
    "family": {
        "seen": ["same typeface", "same font family", "they are set in the same typeface",
                 "both in {value}"],
        "held-out": ["matching typeface", "both are typeset in {value}"],
    },
    "weight": {
        "seen": ["same weight", "they are equally heavy", "the strokes have the same weight",
                 "both {value}"],
        "held-out": ["matching stroke weight", "each one is {value}"],
    },
    "slant": {
        "seen": ["same slant", "they lean the same way", "the letters have the same slant",
                 "both {value}"],
        "held-out": ["matching slant", "each letter is {value}"],
    },
    "spacing": {
        "seen": ["same spacing", "they have the same letter spacing",
                 "the fonts are spaced alike", "both {value}"],
        "held-out": ["matching spacing", "each font is {value}"],
    },
}  # fmt: skip

DEFAULT_CONDITIONS = ATTRIBUTES


def checked_jitters(jitters: int | None) -> int | None:
    """``jitters`` if it is a count >= 1 or ``None``; else one line naming it."""
    if jitters is not None and (
        isinstance(jitters, bool) or not isinstance(jitters, int) or jitters < 1
    ):
        raise ValueError(f"jitters must be a count >= 1 or None, got {jitters!r}")
    return jitters


class FontTripletDataset(FontsDataset):
    """Font triplets: anchor, positive, hard negative and a condition in words.

    Each item is a dict with ``"image"`` (the anchor), ``"view"`` (the positive),
    ``"negative"``, ``"has_negative"``, ``"text"`` (a seen phrasing filled with the anchor's
    class), ``"condition"``, the ``"labels"``, ``"view_labels"`` and ``"negative_labels"``,
    and ``"index"``. The condition, phrasing and partners are drawn anew on every fetch.

    Args:
        conditions: The attributes a condition can name.
        phrasings: ``{attribute: {"seen": [...], "held-out": [...]}}``; training uses "seen".
        condition_weights: how often each condition is drawn, relative; ``None``: uniform.
        jitters: each glyph is drawn in one of this many fixed jitters (of ``(seed, glyph)``),
            the anchor as its partners, so the images repeat across epochs and a frozen tower's
            features can be remembered (``Conditional(image_cache_size=...)``); ``None``: the
            anchor's jitter is the item's and each partner's a fresh one.
        **kwargs: :class:`FontsDataset` arguments (its split must be ``"train"``).
    """

    def __init__(
        self,
        conditions: Sequence[str] = DEFAULT_CONDITIONS,
        phrasings: Mapping[str, Mapping[str, Sequence[str]]] = PHRASINGS,
        condition_weights: Mapping[str, float] | None = None,
        jitters: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not conditions:
            raise ValueError("conditions must name at least one attribute")
        self.jitters = checked_jitters(jitters)
        check_phrasings(conditions, phrasings, ATTRIBUTES)
        self.conditions = tuple(conditions)
        self.phrasings = {c: list(phrasings[c]["seen"]) for c in self.conditions}
        self.probabilities = condition_probabilities(self.conditions, condition_weights)
        self._pool_labels = self.table.labels[self.pool]  # (k, A)

    def _choose(
        self,
        mask: np.ndarray,
        glyph: int,
        prefer: Sequence[tuple[str, bool]],
        rng: np.random.Generator,
    ) -> int | None:
        """A train glyph among ``mask`` ``(k,)`` over the pool, narrowed in turn to those alike
        to ``glyph`` (``True``) or unlike it (``False``) in each preferred attribute, where
        that leaves any; ``None`` if ``mask`` is empty."""
        labels, anchor = self._pool_labels, self.table.labels[glyph]  # (k, A), (A,)
        for attribute, same in prefer:
            column = ATTRIBUTES.index(attribute)
            narrowed = mask & ((labels[:, column] == anchor[column]) == same)
            mask = narrowed if narrowed.any() else mask
        candidates = np.flatnonzero(mask)
        return int(self.pool[rng.choice(candidates)]) if len(candidates) else None

    def positive(self, glyph: int, condition: str, rng: np.random.Generator) -> int:
        """A train glyph alike in ``condition`` (see the module docstring)."""
        column = ATTRIBUTES.index(condition)
        mask = (self._pool_labels[:, column] == self.table.labels[glyph, column]) & (
            self.pool != glyph
        )
        prefer = [(a, False) for a in ("letter", "family") if a != condition]
        chosen = self._choose(mask, glyph, prefer, rng)
        return glyph if chosen is None else chosen

    def negative(self, glyph: int, condition: str, rng: np.random.Generator) -> int | None:
        """A train glyph unlike in ``condition`` and alike in the rest, or ``None``."""
        column = ATTRIBUTES.index(condition)
        mask = self._pool_labels[:, column] != self.table.labels[glyph, column]
        return self._choose(mask, glyph, [(a, True) for a in ATTRIBUTES if a != condition], rng)

    def _draw(self, glyph: int, rng: np.random.Generator) -> torch.Tensor:
        """A partner's image: with a fresh jitter, or in one of ``glyph``'s ``jitters`` fixed
        ones (each drawn once in a process, then remembered)."""
        if self.jitters is None:
            return self.draw(glyph, rng.random(3))
        key = (glyph, int(rng.integers(self.jitters)))
        return self.remembered(
            key, lambda: self.draw(glyph, np.random.default_rng([self.seed, *key]).random(3))
        )

    def __getitem__(self, index: int) -> dict:
        index = self._checked_index(index)
        rng = self._view_rng()
        glyph, jitter = self.glyph(index)
        condition = draw_condition(self.conditions, self.probabilities, rng)
        templates = self.phrasings[condition]
        value = self.table.names(glyph)[condition]
        positive = self.positive(glyph, condition, rng)
        negative = self.negative(glyph, condition, rng)
        if self.jitters is None:
            anchor = self.remembered(index, lambda: self.draw(glyph, jitter))
        else:
            anchor = self._draw(glyph, rng)
        view = self._draw(positive, rng)
        unlike = anchor if negative is None else self._draw(negative, rng)
        return {
            "image": anchor,
            "view": view,
            "negative": unlike,
            "has_negative": negative is not None,
            "text": templates[int(rng.integers(len(templates)))].format(value=value),
            "condition": condition,
            "labels": self.labels(glyph),
            "view_labels": self.labels(positive),
            "negative_labels": self.labels(glyph if negative is None else negative),
            "index": index,
        }


class FontTripletDataModule(FontsDataModule):
    """Font triplets (:class:`FontTripletDataset`) for :class:`~contrastive.methods.Conditional`.

    Training batches are triplets; validation and test are the fonts' ``[bank, query]``
    loaders, on whose held-out glyphs the conditional benchmark runs every condition in its
    seen and held-out phrasings.

    Args:
        conditions: The attributes a condition can name (the benchmark's rows).
        phrasings: ``{attribute: {"seen": [...], "held-out": [...]}}`` templates with
            ``{value}``; the built-in ``PHRASINGS`` by default.
        condition_weights: how often training draws each condition, relative (a condition
            not named weighs 1; ``{"family": 3}``); ``None``: uniform.
        jitters: each training glyph drawn in one of this many fixed jitters, so a frozen
            tower's features repeat (see :class:`FontTripletDataset`); ``None``: fresh ones.
        **kwargs: :class:`FontsDataModule` arguments.
    """

    def __init__(
        self,
        conditions: list[str] | None = None,
        phrasings: dict[str, dict[str, list[str]]] | None = None,
        condition_weights: dict[str, float] | None = None,
        jitters: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.conditions = tuple(conditions or DEFAULT_CONDITIONS)
        phrasings = phrasings or PHRASINGS
        check_phrasings(self.conditions, phrasings, ATTRIBUTES)
        self.phrasings = {c: {g: list(t) for g, t in phrasings[c].items()} for c in self.conditions}
        condition_probabilities(self.conditions, condition_weights)  # a bad key fails here
        self.condition_weights, self.jitters = condition_weights, checked_jitters(jitters)

    def evaluation_data(self) -> EvaluationData:
        """The fonts' labelled ``[bank, query]`` loaders, and the benchmark's conditions."""
        return replace(
            super().evaluation_data(), conditions=self.conditions, phrasings=self.phrasings
        )

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        self._datasets["train"] = FontTripletDataset(
            conditions=self.conditions,
            phrasings=self.phrasings,
            condition_weights=self.condition_weights,
            jitters=self.jitters,
            table=self.table,
            renderer=self._datasets["train"].renderer,
            num_samples=self.num_train,
            seed=self.seed,
            split="train",
        )


__all__ = [
    "DEFAULT_CONDITIONS",
    "PHRASINGS",
    "FontTripletDataModule",
    "FontTripletDataset",
]
