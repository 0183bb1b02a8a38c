import pytest
import torch

from contrastive.datamodules.shape_render import ATTRIBUTES, CLASS_NAMES, render
from contrastive.datamodules.shape_triplets import (
    PHRASINGS,
    ShapesTripletDataModule,
    ShapesTripletDataset,
    check_phrasings,
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
