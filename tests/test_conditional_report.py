"""The conditional benchmark through a real Trainer: on the shapes triplets' labelled queries,
and triplet accuracy per condition on a manifest, with Conditional's own functions."""

import json
import math

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from PIL import Image

from contrastive.datamodules import TripletManifestDataModule
from contrastive.datamodules.shape_triplets import ShapesTripletDataModule
from contrastive.evaluation import ConditionalEvaluation, EmbeddingReport
from contrastive.evaluation.conditional_benchmark import TripletAccuracy, triplet_correct
from tests.test_conditional import batch, model


def _trainer(tmp_path, **kwargs) -> L.Trainer:
    return L.Trainer(
        logger=CSVLogger(tmp_path, name="run"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def test_triplet_accuracy_counts_per_condition_and_scorer():
    m = model().eval()
    b = batch()
    conditions = ["color", "shape", "color", "color", "shape", "color"]
    metric = TripletAccuracy(["color", "shape"])
    with torch.no_grad():
        metric.update(triplet_correct(m, b), conditions, b["has_negative"])
    # Rows with a negative: the 4 color rows (both shape rows have none), once per scorer.
    assert metric.total.tolist() == [[4.0] * 4, [0.0] * 4]
    # The conditioned scorer: does the positive beat the negative under the anchor's text?
    z = [m.condition(b[k], b["text"]) for k in ("image", "view", "negative")]
    wins = ((z[0] * z[1]).sum(-1) > (z[0] * z[2]).sum(-1)) & b["has_negative"]
    color = torch.tensor([c == "color" for c in conditions])
    assert metric.correct[0, 0].item() == (wins & color).sum().item()


def test_shapes_fit_validates_and_reports_the_benchmark(tmp_path, capsys):
    m = model(optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))
    data = ShapesTripletDataModule(
        image_size=16, num_train=64, num_val=48, num_test=48, num_bank=32, batch_size=16,
        eval_batch_size=32, conditions=["color", "shape"],
    )  # fmt: skip
    callbacks = [EmbeddingReport(probe_max_iter=10), ConditionalEvaluation(eval_queries=32)]
    trainer = _trainer(tmp_path, max_steps=4, callbacks=callbacks)  # one epoch: validated
    trainer.fit(m, data)
    assert "val/conditional/color/seen/conditioned/mAP" in trainer.callback_metrics
    before = {k: v.clone() for k, v in m.backbone.state_dict().items()}
    trainer.test(m, data)
    out = capsys.readouterr().out
    assert "Conditional retrieval (gallery 48, 32 queries)" in out
    for row in ("color       seen", "color       held-out", "shape       seen", "mean"):
        assert row in out
    metrics = trainer.callback_metrics
    assert 0 <= metrics["test/conditional/color/held-out/conditioned/mAP"] <= 1
    assert all(torch.equal(before[k], v) for k, v in m.backbone.state_dict().items())
    assert not math.isnan(metrics["test/conditional/shape/seen/image+text/triplet"])


def test_a_manifest_trains_and_reports_triplet_accuracy_per_condition(tmp_path, capsys):
    (tmp_path / "img").mkdir()
    for i in range(8):
        Image.new("RGB", (20, 20), (30 * i, 200 - 20 * i, 90)).save(tmp_path / "img" / f"{i}.png")
    rows = [
        {
            "image_a": f"img/{i}.png",
            "image_b": f"img/{(i + 1) % 8}.png",
            "negative": f"img/{(i + 4) % 8}.png",
            "text": "same color" if i % 2 else "same artist",
            "condition": "color" if i % 2 else "artist",
        }
        for i in range(8)
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    data = TripletManifestDataModule(
        str(tmp_path / "m.jsonl"), val_manifest=str(tmp_path / "m.jsonl"), image_size=16,
        batch_size=4, eval_batch_size=8,
    )  # fmt: skip
    m = model(optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))
    trainer = _trainer(tmp_path, max_steps=2, callbacks=[ConditionalEvaluation()])
    trainer.fit(m, data)
    trainer.test(m, data)
    out = capsys.readouterr().out
    assert "artist      triplets" in out and "color       triplets" in out
    for scorer in ("conditioned", "image", "text", "image+text"):
        value = trainer.callback_metrics[f"test/conditional/color/triplets/{scorer}/triplet"]
        assert value in (0.0, 0.25, 0.5, 0.75, 1.0)  # 4 color triplets


def test_a_method_that_does_not_condition_is_a_clear_error(tmp_path):
    from contrastive.datamodules.common import DataError
    from contrastive.methods import SimCLR

    data = ShapesTripletDataModule(image_size=16, num_train=32, batch_size=16)
    trainer = _trainer(tmp_path, max_steps=1, callbacks=[ConditionalEvaluation()])
    with pytest.raises(DataError, match="needs a text-conditioned method"):
        trainer.fit(SimCLR(backbone_kwargs={"width": 4}), data)
