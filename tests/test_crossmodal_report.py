"""Image-text evaluation through a real Trainer: zero-shot and retrieval at validation and test,
against random init, one table titled by what was measured."""

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger

from contrastive.datamodules import ImageTextDataModule, ShapesDataModule
from contrastive.datamodules.common import DataError
from contrastive.evaluation import CrossModalEvaluation, EmbeddingReport
from contrastive.methods import CLIP, SimCLR
from contrastive.text import OpenCLIPText


def _clip(**kwargs) -> CLIP:
    torch.manual_seed(0)
    text = OpenCLIPText(width=16, layers=1, heads=2, context_length=32, embed_dim=16)
    return CLIP(text_tower=text, embed_dim=16, backbone_kwargs={"width": 4}, **kwargs)


def _data(**kwargs) -> ShapesDataModule:
    args = dict(num_train=64, num_val=32, num_test=64, num_bank=64, batch_size=16)
    return ShapesDataModule(**{**args, **kwargs})


def _trainer(tmp_path, callbacks, **kwargs) -> Trainer:
    args = dict(
        logger=CSVLogger(tmp_path, name="run"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    return Trainer(**{**args, **kwargs})


def test_fit_and_test_report_zero_shot_and_retrieval_against_random_init(tmp_path, capsys):
    prompts = {"shape": ["a {}"], "color": ["a {} shape", "something {}"]}
    evaluation = CrossModalEvaluation(prompts=prompts, retrieval_chunk_size=5)
    report = EmbeddingReport(probe_max_iter=10)
    trainer = _trainer(tmp_path, [report, evaluation], max_steps=4, limit_val_batches=2)
    model = _clip()
    trainer.fit(model, _data(caption_dropout=0.3))
    val = trainer.callback_metrics
    assert {"val/zero_shot/shape", "val/zero_shot/color", "val/retrieval/i2t/R@5"} <= set(val)
    assert "val/zero_shot/size" not in val  # only the prompted attributes
    assert "val/alignment" not in val  # CLIP's augment makes no random views: not measured
    results = trainer.test(model, _data())[0]
    assert 0 <= results["test/zero_shot/shape"] <= 1
    assert results["test/retrieval/t2i/median_rank"] >= 1
    assert "test/random/retrieval/i2t/R@1" in results and "test/random/zero_shot/color" in results
    out = capsys.readouterr().out
    assert "Zero-shot classification (top-1 from class prompts) and image-text retrieval" in out
    assert "zero-shot shape" in out and "i2t R@5" in out and "random init" in out
    assert "test/zero_shot/shape" in (Path(trainer.logger.log_dir) / "metrics.csv").read_text()


def test_prompts_for_fields_the_data_has_no_names_for_are_skipped_with_a_note(tmp_path):
    evaluation = CrossModalEvaluation(prompts={"artist": ["a painting by {}"], "shape": ["a {}"]})
    trainer = _trainer(
        tmp_path, [evaluation], max_steps=1, val_check_interval=1, limit_val_batches=1
    )
    with pytest.warns(UserWarning, match=r"no class names for \['artist'\]"):
        trainer.fit(_clip(), _data())
    assert "val/zero_shot/shape" in trainer.callback_metrics


def test_captions_without_class_names_give_a_retrieval_table_only(tmp_path, capsys):
    from PIL import Image

    (tmp_path / "img").mkdir()
    rows = ["image,caption"]
    for i in range(12):
        Image.new("RGB", (20, 20), (20 * i, 200 - 10 * i, 90)).save(tmp_path / "img" / f"{i}.png")
        rows.append(f"img/{i}.png,a colour number {i}")
    (tmp_path / "pairs.csv").write_text("\n".join(rows))
    csv = str(tmp_path / "pairs.csv")
    data = ImageTextDataModule(train=csv, test=csv, image_size=32, batch_size=4, num_workers=0)
    trainer = _trainer(tmp_path, [EmbeddingReport(), CrossModalEvaluation()], max_steps=1)
    model = _clip()
    trainer.fit(model, data)
    results = trainer.test(model, data)[0]
    out = capsys.readouterr().out
    assert "Image-text retrieval, test split" in out and "zero-shot" not in out
    assert "test/alignment" not in results and "test/retrieval/i2t/R@1" in results


def test_a_method_without_two_towers_is_a_clear_error(tmp_path):
    trainer = _trainer(tmp_path, [CrossModalEvaluation()], max_steps=1)
    with pytest.raises(DataError, match="needs a method with encode_image and encode_text"):
        trainer.fit(SimCLR(backbone_kwargs={"width": 4}, projector_hidden_dim=16), _data())
