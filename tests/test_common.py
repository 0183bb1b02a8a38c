import pickle

import torch

from contrastive.datamodules.common import Collate, Skipped, SkipReport


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
