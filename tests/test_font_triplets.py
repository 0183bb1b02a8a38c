"""Triplets of glyphs (contrastive/datamodules/font_triplets.py): partners by condition, held-out
phrasings, and the triplet module's training and evaluation data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from contrastive.datamodules.font_glyphs import ATTRIBUTES
from contrastive.datamodules.font_triplets import (
    PHRASINGS,
    FontTripletDataModule,
    FontTripletDataset,
)
from tests.test_fonts import small


def best_match(labels: np.ndarray, anchor: np.ndarray, order: list[tuple[int, bool]]) -> tuple:
    """The best lexicographic (alike or unlike, attribute by attribute) any candidate reaches."""
    scores = np.stack([(labels[:, c] == anchor[c]) == same for c, same in order], 1)  # (k, A)
    return max(tuple(row) for row in scores.tolist())


def test_triplet_partners_follow_the_preferences(fonts):
    data = small(fonts, cls=FontTripletDataModule, num_train=256)
    dataset = data._datasets["train"]
    pool_labels = data.table.labels[dataset.pool]
    seen = {c: set(PHRASINGS[c]["seen"]) for c in PHRASINGS}
    conditions = set()
    for i in range(150):
        item = dataset[i]
        c, a = item["condition"], item["labels"]
        conditions.add(c)
        p, n = item["view_labels"], item["negative_labels"]
        column = ATTRIBUTES.index(c)
        anchor = np.array([a[x] for x in ATTRIBUTES])
        assert item["has_negative"] and p[c] == a[c] and n[c] != a[c]
        # The positive: another glyph, unlike in letter and family as far as any glyph is.
        unlike = [(ATTRIBUTES.index(x), False) for x in ("letter", "family") if x != c]
        alike = pool_labels[
            (pool_labels[:, column] == anchor[column]) & (dataset.pool != dataset.glyph(i)[0])
        ]
        reached = tuple((p[ATTRIBUTES[col]] == a[ATTRIBUTES[col]]) == s for col, s in unlike)
        assert reached == best_match(alike, anchor, unlike)
        # The negative: alike in every other attribute, in order, as far as any glyph is.
        others = [(ATTRIBUTES.index(x), True) for x in ATTRIBUTES if x != c]
        different = pool_labels[pool_labels[:, column] != anchor[column]]
        reached = tuple(n[ATTRIBUTES[col]] == a[ATTRIBUTES[col]] for col, _ in others)
        assert reached == best_match(different, anchor, others)
        value = data.class_names[c][a[c]]
        assert item["text"] in {t.format(value=value) for t in seen[c]}
    assert conditions == set(ATTRIBUTES)


def test_a_condition_no_glyph_differs_in_has_no_negative(fonts):
    data = small(
        fonts,
        cls=FontTripletDataModule,
        families=["DejaVu Serif"],
        conditions=["spacing", "letter"],
    )
    dataset = data._datasets["train"]
    items = [dataset[i] for i in range(30)]
    for item in items:
        assert item["has_negative"] == (item["condition"] == "letter")
        if item["condition"] == "spacing":
            assert torch.equal(item["negative"], item["image"])
    batch = next(iter(data.train_dataloader()))
    assert batch["negative"].shape == (16, 3, 24, 24) and batch["has_negative"].dtype == torch.bool


def test_the_triplet_module_trains_on_triplets_and_evaluates_labelled_glyphs(fonts):
    phrasings = {**PHRASINGS, "weight": {"seen": ["same weight"]}}
    data = small(
        fonts, cls=FontTripletDataModule, conditions=["letter", "weight"], phrasings=phrasings
    )
    assert data.phrasings["weight"] == {"seen": ["same weight"]}
    batch = next(iter(data.train_dataloader()))
    assert set(batch["condition"]) <= {"letter", "weight"}
    bank, query = data.val_dataloader()
    assert "text" not in next(iter(query)) and "labels" in next(iter(query))
    with pytest.raises(ValueError, match="unknown condition 'colour'"):
        FontTripletDataModule(fonts=str(fonts), conditions=["colour"])
    with pytest.raises(ValueError, match="conditions must name"):
        FontTripletDataset(conditions=[], table=data.table, renderer=None, num_samples=4)


def test_the_font_triplets_draw_conditions_by_their_weights(fonts):
    data = small(
        fonts, cls=FontTripletDataModule, conditions=["letter", "weight"],
        condition_weights={"letter": 0},
    )  # fmt: skip
    dataset = data._datasets["train"]
    assert {dataset[i]["condition"] for i in range(20)} == {"weight"}
    with pytest.raises(ValueError, match="'family' is not one of the conditions"):
        FontTripletDataModule(
            fonts=str(fonts), conditions=["letter"], condition_weights={"family": 2}
        )


def _renders_per_glyph(dataset, items: int) -> dict[tuple, set[bytes]]:
    renders: dict[tuple, set[bytes]] = {}
    for i in range(items):
        item = dataset[i]
        for image, labels in [("image", "labels"), ("view", "view_labels"),
                              ("negative", "negative_labels")]:  # fmt: skip
            glyph = tuple(item[labels][a] for a in ATTRIBUTES)
            renders.setdefault(glyph, set()).add(item[image].numpy().tobytes())
    return renders


def test_with_jitters_each_glyph_is_drawn_in_so_many_fixed_ways(fonts):
    data = small(fonts, cls=FontTripletDataModule, families=["DejaVu Serif"], jitters=2)
    dataset = data._datasets["train"]
    renders = _renders_per_glyph(dataset, 64)
    torch.manual_seed(1)  # another process's draws: the same fixed jitters
    dataset._rng = None
    for glyph, images in _renders_per_glyph(dataset, 64).items():
        renders.setdefault(glyph, set()).update(images)
    assert max(len(r) for r in renders.values()) == 2
    fresh = small(fonts, cls=FontTripletDataModule, families=["DejaVu Serif"])
    assert max(len(r) for r in _renders_per_glyph(fresh._datasets["train"], 64).values()) > 2


@pytest.mark.parametrize("jitters", [0, -1, True, 1.5])
def test_jitters_must_be_a_count(fonts, jitters):
    with pytest.raises(ValueError, match=f"jitters must be a count >= 1 or None, got {jitters}"):
        FontTripletDataModule(fonts=str(fonts), jitters=jitters)
