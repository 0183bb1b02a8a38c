"""Tests for the built-in generated dataset (contrastive/datamodules/shapes.py)."""

from __future__ import annotations

import lightning
import numpy as np
import pytest
import torch

from contrastive.datamodules import ShapesDataModule, ShapesDataset
from contrastive.datamodules.shape_render import ATTRIBUTES, CLASS_NAMES, Factor, caption, render
from contrastive.datamodules.shapes import view_rng

# The object palette, to find the object's pixels (backgrounds never come close to it).
OBJECT_RGB = {
    "red": (230, 30, 40),
    "green": (40, 200, 70),
    "blue": (50, 100, 255),
    "yellow": (255, 225, 40),
    "purple": (170, 70, 235),
    "orange": (255, 140, 0),
    "white": (245, 245, 245),
    "cyan": (0, 220, 230),
}


def object_pixels(image: np.ndarray, color: str) -> np.ndarray:
    """(H, W) bool mask of the pixels drawn fully in the object's color."""
    rgb = np.array(OBJECT_RGB[color])[:, None, None]
    return np.abs(image.astype(int) - rgb).max(0) <= 1


# ----------------------------------------------------------------------------- determinism


def test_same_seed_split_index_gives_identical_items():
    a, b = ShapesDataset(50, seed=3), ShapesDataset(50, seed=3)
    for i in range(0, 50, 7):
        x, y = a[i], b[i]
        assert x["image"].dtype == torch.uint8 and x["image"].shape == (3, 32, 32)
        assert torch.equal(x["image"], y["image"])
        assert x["labels"] == y["labels"] and x["caption"] == y["caption"] and x["index"] == i
    assert torch.equal(a[5]["image"], a[5]["image"])


def test_seed_and_split_change_the_images():
    images = {
        (seed, split): torch.stack(
            [ShapesDataset(20, seed=seed, split=split)[i]["image"] for i in range(20)]
        )
        for seed, split in [(0, "train"), (1, "train"), (0, "val"), (0, "test")]
    }
    keys = list(images)
    for j, k1 in enumerate(keys):
        for k2 in keys[j + 1 :]:
            same = (images[k1] == images[k2]).flatten(1).all(1)  # (20,)
            assert not same.any(), f"{k1} and {k2} share an image"


def test_images_differ_across_indices():
    ds = ShapesDataset(100)
    flat = torch.stack([ds[i]["image"] for i in range(100)]).flatten(1)
    assert torch.unique(flat, dim=0).shape[0] == 100


# ----------------------------------------------------------------------------- labels


def test_labels_in_range_and_every_class_occurs():
    ds = ShapesDataset(400, seed=1)
    assert ds.num_classes == {attr: len(CLASS_NAMES[attr]) for attr in ATTRIBUTES}
    assert ds.num_classes["shape"] == 6 and ds.num_classes["size"] == 3
    seen = {attr: set() for attr in ATTRIBUTES}
    for i in range(len(ds)):
        labels = ds[i]["labels"]
        assert list(labels) == list(ATTRIBUTES)
        for attr, label in labels.items():
            assert isinstance(label, int) and 0 <= label < ds.num_classes[attr]
            seen[attr].add(label)
    for attr in ATTRIBUTES:
        assert seen[attr] == set(range(ds.num_classes[attr])), attr


def test_caption_names_every_attribute_class():
    ds = ShapesDataset(60, seed=2)
    for i in range(60):
        item = ds[i]
        name = {attr: CLASS_NAMES[attr][label] for attr, label in item["labels"].items()}
        text = item["caption"]
        assert text == caption(ds.factors(i))
        assert text.startswith(f"a {name['size']} {name['color']} {name['shape']} ")
        assert f"at the {name['position']}," in text
        assert f"rotated {name['rotation']}," in text
        assert text.endswith(f"on a {name['texture']} {name['background']} background")


def test_fine_values_lie_inside_their_class():
    ds = ShapesDataset(300, seed=4)
    for i in range(300):
        f = ds.factors(i)
        (radius,) = f["size"].fine
        assert abs(radius - (0.28, 0.38, 0.48)[f["size"].label]) <= 0.025
        x, y = f["position"].fine
        assert (x > 0) == (f["position"].label % 2 == 1)  # right
        assert (y > 0) == (f["position"].label >= 2)  # bottom (y points down)
        assert 0.3 <= abs(x) <= 0.6 and 0.3 <= abs(y) <= 0.6
        (degrees,) = f["rotation"].fine
        assert 22.5 * f["rotation"].label < degrees < 22.5 * (f["rotation"].label + 1)
        assert f["shape"].fine == () and len(f["texture"].fine) == 2


# ----------------------------------------------------------------------------- rendering


def test_render_draws_the_object_where_and_as_the_factors_say():
    ds = ShapesDataset(40, seed=5)
    for i in range(40):
        f = ds.factors(i)
        image = ds[i]["image"].numpy()
        assert np.array_equal(image, render(f, 32))
        mask = object_pixels(image, CLASS_NAMES["color"][f["color"].label])
        # The pixel at the object's centre is the object's color ...
        x, y = f["position"].fine
        col, row = int((x + 1) / 2 * 32), int((y + 1) / 2 * 32)
        assert mask[row, col], (i, f)
        # ... and the object's pixels sit in its quadrant.
        rows, cols = np.nonzero(mask)
        assert (cols.mean() > 16) == (x > 0) and (rows.mean() > 16) == (y > 0)


@pytest.mark.parametrize("shape", range(6))
def test_area_grows_with_size_class(shape):
    f = ShapesDataset(1).factors(0)
    f["shape"] = Factor(shape, ())
    f["color"] = Factor(0, ())
    areas = []
    for size in range(3):
        f["size"] = Factor(size, ((0.28, 0.38, 0.48)[size],))
        areas.append(object_pixels(render(f, 32), "red").sum())
    assert 6 < areas[0] < areas[1] < areas[2], areas


def test_render_at_64_pixels_matches_32_downsampled():
    f = ShapesDataset(1, image_size=64).factors(0)
    big = ShapesDataset(1, image_size=64)[0]["image"]
    assert big.shape == (3, 64, 64)
    pooled = torch.nn.functional.avg_pool2d(big[None].float(), 2)[0]  # (3, 32, 32)
    small = torch.from_numpy(render(f, 32)).float()
    # Same picture at both resolutions: only anti-aliased edges may disagree.
    assert (pooled - small).abs().mean() < 4.0


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="image_size must be >= 16"):
        ShapesDataset(10, image_size=8)
    with pytest.raises(ValueError, match="split must be one of"):
        ShapesDataset(10, split="validation")
    with pytest.raises(IndexError, match="out of range"):
        ShapesDataset(10)[10]


# ----------------------------------------------------------------------------- views

VIEW_CONFIGS = [
    ["shape", "size"],
    ["shape", "color", "background"],
    [attr for attr in ATTRIBUTES if attr != "texture"],
    [],
]


@pytest.mark.parametrize("shared", VIEW_CONFIGS, ids=lambda s: "+".join(s) or "none")
def test_view_factors_keep_exactly_the_shared_ones(shared):
    ds = ShapesDataset(200, shared_factors=shared)
    rng = view_rng(0)
    seen = {attr: set() for attr in ATTRIBUTES}
    for i in range(200):
        f = ds.factors(i)
        v = ds.view_factors(f, rng)
        for attr in ATTRIBUTES:
            if attr in shared:
                assert v[attr] == f[attr]
            else:
                assert v[attr].label != f[attr].label
                assert v[attr].fine != f[attr].fine or not f[attr].fine
                seen[attr].add((f[attr].label, v[attr].label))
    for attr in ATTRIBUTES:
        if attr not in shared:  # re-drawn to every other class, not a fixed shift
            n = len(CLASS_NAMES[attr])
            assert len(seen[attr]) > n * (n - 1) // 2, attr


def test_view_stream_is_not_an_image_stream():
    # numpy pads entropy with zeros: default_rng(0) would replay image 0 of seed 0's train split.
    image_stream = np.random.default_rng([0, 0, 0]).random(4)
    assert not np.array_equal(view_rng(0).random(4), image_stream)


def test_view_tensor_is_the_render_of_the_view_factors():
    ds = ShapesDataset(30, shared_factors=["shape", "color"])
    torch.manual_seed(123)
    items = [ds[i] for i in (4, 9, 4)]
    rng = view_rng(torch.initial_seed())  # the dataset's view RNG, seeded the same way
    for item in items:
        expected = render(ds.view_factors(ds.factors(item["index"]), rng), 32)
        assert item["view"].dtype == torch.uint8 and item["view"].shape == (3, 32, 32)
        assert np.array_equal(item["view"].numpy(), expected)
    # Views are re-drawn on every fetch, the image is not.
    assert torch.equal(items[0]["image"], items[2]["image"])
    assert not torch.equal(items[0]["view"], items[2]["view"])


def test_views_repeat_under_seed_everything_in_workers():
    ds = ShapesDataset(8, shared_factors=["shape"])

    def views():
        lightning.seed_everything(7, workers=True, verbose=False)
        loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=1)
        return next(iter(loader))["view"]

    first, second = views(), views()
    assert torch.equal(first, second)
    lightning.seed_everything(8, workers=True, verbose=False)
    other = next(iter(torch.utils.data.DataLoader(ds, batch_size=8, num_workers=1)))["view"]
    assert not torch.equal(first, other)


def test_no_view_without_shared_factors():
    ds = ShapesDataset(4)
    assert "view" not in ds[0]
    with pytest.raises(RuntimeError, match="shared_factors=None"):
        ds.view_factors(ds.factors(0), np.random.default_rng(0))


def test_unknown_factor_is_named_with_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown factor\(s\) \['colour'\]") as info:
        ShapesDataset(4, shared_factors=["shape", "colour"])
    assert all(attr in str(info.value) for attr in ATTRIBUTES)
    with pytest.raises(ValueError, match="colour"):
        ShapesDataModule(shared_factors=["colour"])


# ----------------------------------------------------------------------------- datamodule


def check_batch(batch: dict, size: int, image_size: int, view: bool) -> None:
    expected = {"image", "labels", "caption", "index"} | (
        {"view", "view_caption"} if view else set()
    )
    assert set(batch) == expected
    keys = ["image", "view"] if view else ["image"]
    for key in keys:
        assert batch[key].dtype == torch.uint8
        assert batch[key].shape == (size, 3, image_size, image_size)
    assert list(batch["labels"]) == list(ATTRIBUTES)
    for labels in batch["labels"].values():
        assert labels.dtype == torch.long and labels.shape == (size,)
    assert len(batch["caption"]) == size and batch["index"].shape == (size,)


def test_datamodule_loaders_follow_their_arguments():
    dm = ShapesDataModule(
        image_size=24,
        num_train=64,
        num_val=24,
        num_test=40,
        num_bank=1000,
        seed=1,
        shared_factors=["shape"],
        batch_size=16,
        eval_batch_size=10,
    )
    assert dm.hparams.batch_size == 16 and dm.attributes == ATTRIBUTES
    assert dm.num_classes["shape"] == 6 and dm.class_names["size"] == ("small", "medium", "large")
    with pytest.raises(RuntimeError, match="setup"):
        dm.train_dataloader()
    dm.setup("fit")

    torch.manual_seed(0)
    train = dm.train_dataloader()
    assert len(train) == 4
    batch = next(iter(train))
    check_batch(batch, 16, 24, view=True)
    assert not torch.equal(batch["index"], torch.arange(16))  # shuffled

    for loaders, query_size in ((dm.val_dataloader(), 24), (dm.test_dataloader(), 40)):
        bank, query = loaders
        assert len(bank.dataset) == 64 and len(query.dataset) == query_size  # bank capped
        check_batch(next(iter(bank)), 10, 24, view=False)
        check_batch(next(iter(query)), 10, 24, view=False)
    assert len(dm.predict_dataloader().dataset) == 40

    # The bank is the start of the train split (same images, no view); seed reaches every split.
    train_set, bank_set = train.dataset, dm.val_dataloader()[0].dataset
    assert torch.equal(bank_set[3]["image"], train_set[3]["image"])
    other = ShapesDataModule(image_size=24, num_train=64, batch_size=16, seed=2)
    other.setup("fit")
    assert not torch.equal(
        other.val_dataloader()[1].dataset[0]["image"], dm.val_dataloader()[1].dataset[0]["image"]
    )

    small = ShapesDataModule(num_train=64, num_bank=32, batch_size=16)
    small.setup("validate")
    assert len(small.val_dataloader()[0].dataset) == 32
    assert "view" not in small.train_dataloader().dataset[0]


def test_datamodule_with_a_worker():
    dm = ShapesDataModule(
        num_train=32,
        num_val=8,
        batch_size=8,
        eval_batch_size=8,
        num_workers=1,
        shared_factors=["shape", "size"],
    )
    dm.setup("fit")
    train = dm.train_dataloader()
    assert train.num_workers == 1 and train.persistent_workers
    check_batch(next(iter(train)), 8, 32, view=True)


def test_datamodule_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"num_train \(100\) must be >= batch_size \(256\)"):
        ShapesDataModule(num_train=100)
    with pytest.raises(ValueError, match="image_size must be >= 16"):
        ShapesDataModule(image_size=12)
    with pytest.raises(ValueError, match="eval_batch_size must be >= 1"):
        ShapesDataModule(eval_batch_size=0)
    with pytest.raises(ValueError, match="num_workers must be >= 0"):
        ShapesDataModule(num_workers=-1)


def test_caption_dropout_leaves_attributes_unsaid_in_train_captions_only():
    full = ShapesDataset(64, split="train")
    partial = ShapesDataset(64, split="train", caption_dropout=0.5, shared_factors=["shape"])
    lengths = [len(partial[i]["caption"]) for i in range(64)]
    assert sum(lengths) < 0.8 * sum(len(full[i]["caption"]) for i in range(64))
    item = partial[3]
    for word in item["caption"].replace(",", "").split():  # every word said is true
        assert word in full[3]["caption"].replace(",", "").split() + ["shape", "background"]
    assert item["view_caption"].startswith("a ")
    assert caption(full.factors(0), ()) == "a shape"
    data = ShapesDataModule(num_train=32, batch_size=16, caption_dropout=0.5)
    data.setup("fit")
    assert data._datasets["train"].dropout.tolist() == [0.5] * 7
    assert not data._datasets["val"].dropout.any()  # evaluation captions are full
    with pytest.raises(ValueError, match=r"caption_dropout must be in \[0, 1\), got 1.0"):
        ShapesDataset(4, caption_dropout=1.0)


def test_caption_dropout_per_attribute_drops_only_the_attributes_named():
    data = ShapesDataset(64, split="train", caption_dropout={"color": 0.9})
    full = ShapesDataset(64, split="train")
    kept = 0
    for i in range(64):
        text, whole = data[i]["caption"], full[i]["caption"]
        color = CLASS_NAMES["color"][data[i]["labels"]["color"]]
        assert text in (whole, whole.replace(f" {color} ", " ", 1))  # the rest always said
        kept += text == whole
    assert kept < 20  # said about a tenth of the time (6.4 expected)


@pytest.mark.parametrize(
    "rates, message",
    [
        ({"colour": 0.5}, r"caption_dropout: 'colour' is no attribute; valid: \['shape'"),
        ({"color": 1.0}, r"caption_dropout\['color'\] must be in \[0, 1\), got 1.0"),
        ({"color": "half"}, r"caption_dropout\['color'\] must be in \[0, 1\), got 'half'"),
        (-0.1, r"caption_dropout must be in \[0, 1\), got -0.1"),
    ],
)
def test_a_bad_caption_dropout_is_refused_by_the_data_module(rates, message):
    with pytest.raises(ValueError, match=message):
        ShapesDataModule(caption_dropout=rates)
