from collections import Counter

import numpy as np
import pytest
import torch

from contrastive.datamodules.shape_render import ATTRIBUTES, CLASS_NAMES, render
from contrastive.datamodules.shape_triplets import (
    PHRASINGS,
    ShapesTripletDataModule,
    ShapesTripletDataset,
    check_phrasings,
    condition_probabilities,
    draw_condition,
)
from contrastive.datamodules.shapes import ShapesDataset


def test_positives_share_only_the_named_attribute_and_negatives_all_but_it():
    data = ShapesTripletDataset(200, image_size=16)
    seen = {c: {t for t in PHRASINGS[c]["seen"]} for c in PHRASINGS}
    conditions = set()
    for i in range(200):
        item = data[i]
        c = item["condition"]
        conditions.add(c)
        a, p, n = item["labels"], item["view_labels"], item["negative_labels"]
        assert p[c] == a[c] and all(p[x] != a[x] for x in ATTRIBUTES if x != c)
        assert n[c] != a[c] and all(n[x] == a[x] for x in ATTRIBUTES if x != c)
        value = CLASS_NAMES[c][a[c]]
        assert item["text"] in {t.format(value=value) for t in seen[c]}  # never held out
        assert torch.equal(item["image"], ShapesDataset(200, image_size=16)[i]["image"])
    assert conditions == {"shape", "color", "size", "position", "background", "texture"}


def test_the_anchor_is_the_shapes_image_and_partners_are_redrawn_each_fetch():
    data = ShapesTripletDataset(4, image_size=16, conditions=["color"])
    first, second = data[0], data[0]
    assert torch.equal(first["image"], second["image"])
    assert not torch.equal(first["view"], second["view"])  # a new positive every epoch
    factors = data.factors(0)
    assert torch.equal(first["image"], torch.from_numpy(render(factors, 16)))


def test_phrasings_are_checked():
    with pytest.raises(ValueError, match="unknown condition 'hue'"):
        check_phrasings(["hue"], PHRASINGS)
    with pytest.raises(ValueError, match="needs a non-empty 'seen'"):
        check_phrasings(["color"], {"color": {"held-out": ["x"]}})
    with pytest.raises(ValueError, match=r"only \{value\} may be used"):
        check_phrasings(["color"], {"color": {"seen": ["both are {colour}"]}})


def test_the_data_module_trains_on_triplets_and_evaluates_on_labelled_images():
    data = ShapesTripletDataModule(
        image_size=16, num_train=32, num_val=16, num_bank=16, batch_size=8, eval_batch_size=16,
        conditions=["shape", "size"], phrasings={**PHRASINGS, "size": {"seen": ["same size"]}},
    )  # fmt: skip
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["negative"].shape == (8, 3, 16, 16) and batch["has_negative"].all()
    assert set(batch["condition"]) <= {"shape", "size"}
    assert data.phrasings["size"] == {"seen": ["same size"]}
    bank, query = data.val_dataloader()
    assert "text" not in next(iter(query)) and "labels" in next(iter(query))


def test_condition_weights_set_each_conditions_share_of_the_draws():
    conditions = ("shape", "color", "size")
    p = condition_probabilities(conditions, {"shape": 3, "size": 0})
    assert p.tolist() == [0.75, 0.25, 0.0]
    rng = np.random.default_rng(0)
    draws = Counter(draw_condition(conditions, p, rng) for _ in range(4000))
    assert draws["size"] == 0 and abs(draws["shape"] / 4000 - 0.75) < 0.03  # 4.5 sd
    # Equal weights are the uniform draw itself: the same conditions from the same generator.
    assert condition_probabilities(conditions, {"color": 2, "shape": 2, "size": 2}) is None
    assert condition_probabilities(conditions, None) is None
    a, b = np.random.default_rng(1), np.random.default_rng(1)
    uniform = [conditions[int(a.integers(3))] for _ in range(50)]
    assert [draw_condition(conditions, None, b) for _ in range(50)] == uniform


def test_a_weight_for_no_condition_is_one_line_naming_the_key():
    with pytest.raises(ValueError, match=r"condition_weights: 'colour' is not one of the condit"):
        condition_probabilities(("shape", "color"), {"colour": 2})


@pytest.mark.parametrize("weight", [-1, float("nan"), float("inf")])
def test_a_negative_or_non_finite_weight_is_refused(weight):
    with pytest.raises(ValueError, match=r"condition_weights\['shape'\] must be finite and >= 0"):
        condition_probabilities(("shape", "color"), {"shape": weight})


@pytest.mark.parametrize("weight", ["3", True, None])
def test_a_weight_that_is_not_a_number_is_refused(weight):
    with pytest.raises(ValueError, match=r"condition_weights\['shape'\]: expected a number"):
        condition_probabilities(("shape", "color"), {"shape": weight})


def test_weights_of_zero_for_every_condition_are_refused():
    with pytest.raises(ValueError, match="every condition weighs 0"):
        condition_probabilities(("shape", "color"), {"shape": 0, "color": 0})


def test_the_data_module_draws_conditions_by_their_weights():
    data = ShapesTripletDataModule(
        image_size=16, num_train=64, batch_size=64, conditions=["shape", "size"],
        condition_weights={"size": 0},
    )  # fmt: skip
    data.setup("fit")
    assert set(next(iter(data.train_dataloader()))["condition"]) == {"shape"}
    with pytest.raises(ValueError, match="'hue' is not one of the conditions"):
        ShapesTripletDataModule(conditions=["shape"], condition_weights={"hue": 1})
