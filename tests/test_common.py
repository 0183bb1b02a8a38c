import pickle

import pytest
import torch

from contrastive.datamodules.common import (
    Collate,
    DataError,
    EvaluationData,
    Skipped,
    SkipReport,
    check_evaluation_data,
)


def test_collate_drops_skipped_samples_and_passes_them_on():
    samples = [
        {"image": torch.zeros(3), "caption": "a"},
        Skipped("x.jpg", "missing image"),
        {"image": torch.ones(3), "caption": "b"},
    ]
    batch = Collate()(samples)
    assert batch["image"].shape == (2, 3) and batch["caption"] == ["a", "b"]
    assert batch["skipped"] == [Skipped("x.jpg", "missing image")]
    assert "skipped" not in Collate()(samples[:1])  # clean batches carry no extra key
    assert Collate()([Skipped("y", "empty caption")]) == {
        "skipped": [Skipped("y", "empty caption")]
    }


def test_collate_tokenizes_captions_and_pickles():
    collate = pickle.loads(pickle.dumps(Collate(tokenizer=len)))  # spawned workers pickle it
    batch = collate([{"caption": "ab"}, {"caption": "c"}])
    assert batch["tokens"] == 2  # the tokenizer saw the batch's list of captions
    assert "tokens" not in collate([{"image": torch.zeros(1)}])


def test_skip_report_counts_by_reason_and_names_the_first_few():
    report = SkipReport(keep=2)
    assert report.summary("train") is None
    report.add([Skipped("a.jpg", "missing image"), Skipped("b.csv:3", "empty caption")])
    report.add([Skipped("c.jpg", "missing image")])
    assert report.total == 3
    line = report.summary("train epoch 0")
    assert line == (
        "train epoch 0: skipped 3 bad samples (missing image: 2, empty caption: 1); "
        "first: a.jpg (missing image); b.csv:3 (empty caption)"
    )
    report.reset()
    assert report.total == 0 and report.summary("x") is None


def test_what_each_data_module_offers_for_evaluation_is_one_checked_record():
    from contrastive.datamodules import ShapesDataModule, ShapesTripletDataModule

    shapes = check_evaluation_data(ShapesDataModule())
    assert shapes.has_bank and shapes.query_loader == 1
    assert shapes.num_classes["shape"] == 6 and len(shapes.class_names["shape"]) == 6
    triplets = check_evaluation_data(ShapesTripletDataModule(conditions=["color"]))
    assert triplets.conditions == ("color",) and "held-out" in triplets.phrasings["color"]
    assert EvaluationData(has_bank=False).query_loader == 0


class _Offers:
    def __init__(self, data):
        self.data = data

    def evaluation_data(self):
        return self.data


@pytest.mark.parametrize(
    "offer, message",
    [
        (object(), "object does not say what it offers for evaluation: give it evaluation_data"),
        (_Offers({"shape": 6}), "returned dict, not EvaluationData"),
        (_Offers(EvaluationData(num_classes={"shape": 0})), "'shape' has 0 classes"),
        (
            _Offers(EvaluationData(num_classes={"shape": 2}, class_names={"shape": ("a",)})),
            "1 class names for 'shape', which has 2 classes",
        ),
        (
            _Offers(EvaluationData(conditions=("color",), phrasings={"color": {"seen": ["x"]}})),
            "condition 'color' needs class names",
        ),
    ],
)
def test_a_data_module_that_offers_nothing_usable_is_one_clear_error(offer, message):
    with pytest.raises(DataError, match=message):
        check_evaluation_data(offer)
