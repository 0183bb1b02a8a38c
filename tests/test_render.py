"""Report rendering: the tables show what was measured and nothing else; the charts are PNGs."""

import math

import numpy as np
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger
from PIL import Image

from contrastive.evaluation.render import (
    FieldRow,
    conditional_table,
    crossmodal_table,
    embedding_chart,
    embedding_table,
    save_image,
    scatter_chart,
)

ROWS = [
    FieldRow("shape", 6, 0.25, knn=0.75, knn_random=0.2, linear=0.9, linear_random=0.3),
    FieldRow("color", 8, 0.125, knn=0.15, knn_random=0.75, linear=0.5, linear_random=0.95),
]


def test_the_embedding_table_has_knn_and_linear_trained_and_random_with_their_gains():
    table = embedding_table(ROWS, k=20, queries=2048, bank=4096).splitlines()
    assert "kNN top-1 (k=20) and linear probe" in table[0] and "2048 queries, bank 4096" in table[0]
    header = (
        "attribute classes chance kNN random kNN trained gain linear random linear trained gain"
    )
    assert table[1].split() == header.split()
    shape = "shape 6 0.250 0.200 0.750 +0.550 0.300 0.900 +0.600"
    assert table[2].split() == shape.split()
    assert table[3].split()[-1] == "-0.450"


def test_columns_that_were_not_measured_are_left_out():
    nan = math.nan
    rows = [FieldRow("class", 10, 0.1, knn=0.5)]
    table = embedding_table(rows, k=20, queries=10, bank=20).splitlines()
    assert "linear" not in "\n".join(table) and "random" not in table[1]
    assert table[2].split() == ["class", "10", "0.100", "0.500"]
    chart = embedding_chart([FieldRow("class", 10, 0.1, nan, nan, 0.5, nan)], "a title")
    assert chart.ndim == 3 and chart.shape[2] == 3 and chart.dtype == np.uint8


def test_the_image_text_table_is_titled_by_what_was_measured():
    retrieval_only = {"retrieval/i2t/R@1": 0.5, "retrieval/t2i/R@1": 0.4}
    table = crossmodal_table(retrieval_only, {}, {})
    assert table.splitlines()[0] == "Image-text retrieval, test split"
    assert "zero-shot" not in table and "alignment" not in table
    both = crossmodal_table(
        {"zero_shot/shape": 0.6, **retrieval_only}, {"zero_shot/shape": 0.2}, {"shape": 6}
    )
    assert both.splitlines()[0].startswith("Zero-shot classification") and "retrieval" in both
    assert both.splitlines()[2].split() == [
        "zero-shot",
        "shape",
        "0.167",
        "0.200",
        "0.600",
        "+0.400",
    ]


def test_the_conditional_table_has_a_block_per_condition_then_the_means():
    results = {
        ("color", "seen", "conditioned"): {"R@1": 1.0, "R@5": 1.0, "mAP": 0.9, "triplet": 1.0},
        ("color", "seen", "image"): {"R@1": 0.5, "R@5": 0.8, "mAP": 0.4, "triplet": 0.7},
        ("artist", "triplets", "text"): {"triplet": 0.5},
    }
    table = conditional_table(results, gallery=60, queries=20).splitlines()
    assert table[0] == "Conditional retrieval (gallery 60, 20 queries) and triplet accuracy"
    assert (
        table[2].split()[:3] == ["color", "seen", "conditioned"]
        and table[2].split()[-1] == "+0.500"
    )
    assert table[4].split() == ["artist", "triplets", "text", "-", "-", "-", "0.500", "-"]
    assert table[5].startswith("mean")


def test_images_are_saved_without_overwriting_and_a_scatter_has_a_panel_per_field(tmp_path):
    trainer = Trainer(logger=CSVLogger(tmp_path), enable_progress_bar=False)
    points = np.random.default_rng(0).normal(size=(30, 2))
    chart = scatter_chart(points, {"a": np.arange(30) % 3, "b": np.arange(30) % 2}, "pca")
    first = save_image(trainer, tmp_path / "out", "chart", chart, "val/chart")
    second = save_image(trainer, tmp_path / "out", "chart", chart, "val/chart")
    assert (first.name, second.name) == ("chart.png", "chart_1.png")
    assert Image.open(first).size == (chart.shape[1], chart.shape[0])
