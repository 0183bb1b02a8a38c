"""Built-in (image, image, condition) triplets from the shapes data, for the text-conditioned
method.

Each training item is an anchor image, a positive that shares the attribute the condition
names and differs in every other attribute, a hard negative that shares every other attribute
and differs in the named one, and the condition in words. The condition is phrased several
ways per attribute ("same color", "they share a color", "both are red"); some phrasings are
held out of training and used only by the benchmark, to measure generalisation to wording
the model never saw.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
import torch

from contrastive.datamodules.common import EvaluationData
from contrastive.datamodules.shape_render import (
    ATTRIBUTES,
    CLASS_NAMES,
    Factor,
    fine_values,
    render,
)
from contrastive.datamodules.shapes import ShapesDataModule, ShapesDataset

# Per attribute: phrasings used in training ("seen") and kept for the benchmark ("held-out").
# ``{value}`` stands for the anchor's class name ("red", "star", "top left").
PHRASINGS: dict[str, dict[str, list[str]]] = {
    "shape": {
        "seen": ["same shape", "they share a shape", "the objects have the same form",
                 "each one is a {value}"],
        "held-out": ["matching shape", "both show a {value}"],
    },
    "color": {
        "seen": ["same color", "they share a color", "the objects have the same colour",
                 "both are {value}"],
        "held-out": ["matching color", "both objects are {value}"],
    },
    "size": {
        "seen": ["same size", "they are equally large", "the objects have the same size",
                 "both are {value}"],
        "held-out": ["matching size", "both shapes are {value}"],
    },
    "position": {
        "seen": ["same position", "they are in the same place", "the objects sit in the same spot",
                 "both at the {value}"],
        "held-out": ["matching position", "both in the {value} corner"],
    },
    "background": {
        "seen": ["same background color", "they share a background color",
                 "the backgrounds have the same colour", "both on a {value} background"],
        "held-out": ["matching background color", "the backgrounds are both {value}"],
    },
    "texture": {
        "seen": ["same texture", "they share a background pattern",
                 "the backgrounds have the same pattern", "both backgrounds are {value}"],
        "held-out": ["matching background pattern", "both have a {value} background"],
    },
}  # fmt: skip

DEFAULT_CONDITIONS = ("shape", "color", "size", "position", "background", "texture")


def pair_factors(
    factors: Mapping[str, Factor], keep: Sequence[str], rng: np.random.Generator
) -> dict[str, Factor]:
    """Factors of a partner image: the classes of ``keep`` kept (with fresh fine values), every
    other factor moved to a different class.

    With ``keep=[c]`` it is a positive for the condition ``c``; with every factor but ``c`` it
    is a hard negative for it (alike in all else).
    """
    out = {}
    for attr in ATTRIBUTES:
        n = len(CLASS_NAMES[attr])
        label = factors[attr].label
        if attr not in keep:
            label = (label + int(rng.integers(1, n))) % n
        out[attr] = Factor(label, fine_values(attr, label, rng.random(len(factors[attr].fine))))
    return out


def _labels(factors: Mapping[str, Factor]) -> dict[str, int]:
    return {attr: f.label for attr, f in factors.items()}


def check_phrasings(
    conditions: Sequence[str],
    phrasings: Mapping[str, Mapping[str, Sequence[str]]],
    attributes: Sequence[str] = ATTRIBUTES,
) -> None:
    """Raise ``ValueError`` naming a condition without phrasings or a bad template.

    ``attributes`` are the valid conditions (the shapes' by default; the fonts pass theirs).
    """
    for name in conditions:
        if name not in attributes:
            raise ValueError(f"unknown condition '{name}'; valid: {list(attributes)}")
        groups = phrasings.get(name)
        if not groups or not groups.get("seen"):
            raise ValueError(f"phrasings['{name}'] needs a non-empty 'seen' list of templates")
        for template in (t for g in groups.values() for t in g):
            try:
                template.format(value="x")
            except (KeyError, IndexError, ValueError) as error:
                raise ValueError(
                    f"phrasings['{name}'] template {template!r}: only {{value}} may be used"
                ) from error


def condition_probabilities(
    conditions: Sequence[str], weights: Mapping[str, float] | None
) -> np.ndarray | None:
    """Each condition's share of the training triplets ``(C,)`` from relative ``weights``
    (a condition not named weighs 1); ``None`` when every condition weighs the same.

    Raise ``ValueError`` naming a key that is not a condition or a weight that is negative,
    not finite, or zero for every condition.
    """
    if not weights:
        return None
    for name, weight in weights.items():
        if name not in conditions:
            raise ValueError(
                f"condition_weights: {name!r} is not one of the conditions {list(conditions)}"
            )
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise ValueError(f"condition_weights[{name!r}]: expected a number, got {weight!r}")
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"condition_weights[{name!r}] must be finite and >= 0, got {weight}")
    p = np.array([float(weights.get(c, 1.0)) for c in conditions])
    if p.sum() == 0:
        raise ValueError("condition_weights: every condition weighs 0; nothing to train on")
    return None if np.all(p == p[0]) else p / p.sum()


def draw_condition(
    conditions: Sequence[str], probabilities: np.ndarray | None, rng: np.random.Generator
) -> str:
    """A condition for one triplet: uniform (``probabilities`` ``None``) or by its share."""
    if probabilities is None:
        return conditions[int(rng.integers(len(conditions)))]
    return conditions[int(rng.choice(len(conditions), p=probabilities))]


class ShapesTripletDataset(ShapesDataset):
    """Shapes triplets: anchor, positive, hard negative and a condition in words.

    Each item is a dict with ``"image"`` (the anchor), ``"view"`` (the positive),
    ``"negative"`` and ``"has_negative"`` (always ``True`` here), ``"text"`` (the condition,
    a seen phrasing filled with the anchor's class), ``"condition"`` (the attribute), the
    ``"labels"`` of the anchor, ``"view_labels"`` and ``"negative_labels"`` of its partners,
    and ``"index"``. Which condition, phrasing and partners an anchor
    gets is drawn anew on every fetch, from the same per-process generator as the views.

    Args:
        num_samples: number of anchors.
        conditions: the attributes a condition can name.
        phrasings: ``{attribute: {"seen": [...], "held-out": [...]}}``; training draws from
            ``"seen"`` only.
        condition_weights: how often each condition is drawn, relative (``{"shape": 3}``:
            three times as often as each other); ``None``: uniform.
        **kwargs: :class:`ShapesDataset` arguments (``image_size``, ``seed``, ``split``).
    """

    def __init__(
        self,
        num_samples: int,
        conditions: Sequence[str] = DEFAULT_CONDITIONS,
        phrasings: Mapping[str, Mapping[str, Sequence[str]]] = PHRASINGS,
        condition_weights: Mapping[str, float] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(num_samples, **kwargs)
        if not conditions:
            raise ValueError("conditions must name at least one attribute")
        check_phrasings(conditions, phrasings)
        self.conditions = tuple(conditions)
        self.phrasings = {c: list(phrasings[c]["seen"]) for c in self.conditions}
        self.probabilities = condition_probabilities(self.conditions, condition_weights)

    def __getitem__(self, index: int) -> dict:
        index = self._checked_index(index)
        rng = self._view_rng()
        factors = self.factors(index)
        condition = draw_condition(self.conditions, self.probabilities, rng)
        templates = self.phrasings[condition]
        value = CLASS_NAMES[condition][factors[condition].label]
        others = [a for a in ATTRIBUTES if a != condition]

        def draw(f: Mapping[str, Factor]) -> torch.Tensor:
            return torch.from_numpy(render(f, self.image_size))

        positive = pair_factors(factors, [condition], rng)
        negative = pair_factors(factors, others, rng)
        return {
            "image": draw(factors),
            "view": draw(positive),
            "negative": draw(negative),
            "has_negative": True,
            "text": templates[int(rng.integers(len(templates)))].format(value=value),
            "condition": condition,
            "labels": _labels(factors),
            "view_labels": _labels(positive),
            "negative_labels": _labels(negative),
            "index": index,
        }


class ShapesTripletDataModule(ShapesDataModule):
    """The built-in triplets (see :class:`ShapesTripletDataset`) for the conditional method.

    Training batches are triplets; validation and test are the shapes' ``[bank, query]``
    loaders, on whose labelled queries the method runs the conditional benchmark for every
    condition, in its seen and held-out phrasings.

    Args:
        conditions: the attributes a condition can name (the benchmark's rows).
        phrasings: ``{attribute: {"seen": [...], "held-out": [...]}}`` templates with
            ``{value}``; the built-in ``PHRASINGS`` by default.
        condition_weights: how often training draws each condition, relative (a condition
            not named weighs 1); ``None``: uniform.
        **kwargs: :class:`ShapesDataModule` arguments.
    """

    def __init__(
        self,
        conditions: list[str] | None = None,
        phrasings: dict[str, dict[str, list[str]]] | None = None,
        condition_weights: dict[str, float] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.conditions = tuple(conditions or DEFAULT_CONDITIONS)
        phrasings = phrasings or PHRASINGS
        check_phrasings(self.conditions, phrasings)
        self.phrasings = {c: {g: list(t) for g, t in phrasings[c].items()} for c in self.conditions}
        condition_probabilities(self.conditions, condition_weights)  # a bad key fails here
        self.condition_weights = condition_weights

    def evaluation_data(self) -> EvaluationData:
        """The shapes' labelled ``[bank, query]`` loaders, and the benchmark's conditions."""
        return replace(
            super().evaluation_data(), conditions=self.conditions, phrasings=self.phrasings
        )

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        self._datasets["train"] = ShapesTripletDataset(
            self.num_train,
            conditions=self.conditions,
            phrasings=self.phrasings,
            condition_weights=self.condition_weights,
            image_size=self.image_size,
            seed=self.seed,
            split="train",
        )


__all__ = [
    "DEFAULT_CONDITIONS",
    "PHRASINGS",
    "ShapesTripletDataModule",
    "ShapesTripletDataset",
    "check_phrasings",
    "condition_probabilities",
    "draw_condition",
    "pair_factors",
]
