"""The embedding report through a real Trainer: kNN and geometry at validation, kNN and the
linear probe against random init at test, one table and a PNG, for any method's ``embed``."""

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger

from contrastive.augment import Augment, SimCLRAugment
from contrastive.backbones import register_backbone
from contrastive.datamodules import ShapesDataModule
from contrastive.evaluation import EmbeddingReport
from contrastive.methods import BYOL, ContrastiveMethod, SimCLR


def _data(**kwargs) -> ShapesDataModule:
    args = dict(num_train=64, num_val=32, num_test=40, num_bank=64, batch_size=16)
    return ShapesDataModule(**{**args, **kwargs})


def _simclr(**kwargs) -> SimCLR:
    torch.manual_seed(0)
    kwargs = {"augment": SimCLRAugment(crop_scale=(0.5, 1.0)), **kwargs}
    return SimCLR(backbone_kwargs={"width": 4}, projector_hidden_dim=16, **kwargs)


def _trainer(tmp_path, report: EmbeddingReport | None = None, **kwargs) -> Trainer:
    args = dict(
        logger=CSVLogger(tmp_path, name="run"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[report or EmbeddingReport(probe_max_iter=20)],
    )
    return Trainer(**{**args, **kwargs})


def test_validation_logs_knn_per_attribute_and_the_geometry(tmp_path):
    data = _data()
    trainer = _trainer(tmp_path, max_steps=1, val_check_interval=1)
    trainer.fit(_simclr(), data)
    logged = trainer.callback_metrics
    for name in data.attributes:
        assert 0.0 <= logged[f"val/knn/{name}"] <= 1.0
        assert f"val/linear/{name}" not in logged  # the offline probe runs at test
    for name in ("alignment", "uniformity", "rankme", "centred_rankme", "embedding_std"):
        assert torch.isfinite(logged[f"val/{name}"]), name
    # RankMe as published reads the common mean of post-ReLU features; the centred form not.
    assert logged["val/centred_rankme"] > logged["val/rankme"]
    metrics = (Path(trainer.logger.log_dir) / "metrics.csv").read_text()
    assert "val/knn/shape" in metrics  # the CSV logger gets them


def test_test_prints_one_table_of_knn_and_linear_against_random_init_and_saves_a_png(
    tmp_path, capsys
):
    data = _data()
    trainer = _trainer(tmp_path, max_steps=2, limit_val_batches=0)
    model = _simclr()
    trainer.fit(model, data)
    results = trainer.test(model, data)[0]
    out = capsys.readouterr().out
    assert out.count("What the embedding knows") == 1 and "Test metric" not in out
    header = next(line for line in out.splitlines() if line.startswith("attribute"))
    assert (
        header.split()
        == (
            "attribute classes chance kNN random kNN trained gain linear random linear trained gain"
        ).split()
    )
    for name in data.attributes:
        for key in ("knn", "linear", "random/knn", "random/linear"):
            assert 0.0 <= results[f"test/{key}/{name}"] <= 1.0
    # "chance" is the majority-class rate of the query split, not 1 / classes.
    data.setup("test")
    shapes = torch.tensor([data._datasets["test"][i]["labels"]["shape"] for i in range(40)])
    majority = torch.bincount(shapes).max().item() / 40
    assert results["test/chance/shape"] == pytest.approx(majority)
    row = next(line for line in out.splitlines() if line.startswith("shape"))
    assert row.split()[2] == f"{majority:.3f}"
    png = Path(trainer.logger.log_dir) / "test_report.png"
    assert png.is_file() and png.stat().st_size > 1000


def test_a_one_image_query_split_skips_what_needs_two_with_a_note(tmp_path):
    trainer = _trainer(tmp_path, max_steps=1, val_check_interval=1)
    with pytest.warns(UserWarning, match="1 query image; uniformity needs 2 or more"):
        trainer.fit(_simclr(), _data(num_val=1))
    logged = trainer.callback_metrics
    assert "val/knn/shape" in logged and "val/rankme" in logged
    assert "val/uniformity" not in logged and "val/embedding_std" not in logged


def test_without_random_views_alignment_is_not_measured(tmp_path):
    trainer = _trainer(tmp_path, max_steps=1, val_check_interval=1)
    trainer.fit(_simclr(augment=Augment()), _data())  # normalisation only: two equal views
    assert "val/alignment" not in trainer.callback_metrics
    assert "val/uniformity" in trainer.callback_metrics


def test_any_method_is_judged_through_embed_alone(tmp_path):
    class Minimal(ContrastiveMethod):  # no evaluation code at all
        def training_loss(self, batch):
            first, second = batch["views"]
            return (self.backbone(first) - self.backbone(second)).pow(2).mean()

    trainer = _trainer(tmp_path, max_steps=1, val_check_interval=1)
    trainer.fit(Minimal(backbone_kwargs={"width": 4}), _data())
    assert "val/knn/shape" in trainer.callback_metrics


@register_backbone("test_collapsed")
def _collapsed(pretrained: bool = False, **kwargs) -> torch.nn.Module:
    """Every image to the same point: the failure the collapse warning exists for."""

    class Collapsed(torch.nn.Module):
        num_features = 16

        def __init__(self) -> None:
            super().__init__()
            self.bias = torch.nn.Parameter(torch.ones(16))

        def forward(self, x):
            return self.bias.expand(len(x), -1) + 0 * x.mean()

    return Collapsed()


@pytest.mark.parametrize("backbone, collapsed", [("test_collapsed", True), ("small_cnn", False)])
def test_a_collapsed_embedding_is_flagged_and_a_healthy_one_is_not(
    backbone, collapsed, recwarn, tmp_path
):
    kwargs = {} if collapsed else {"backbone_kwargs": {"width": 8}}
    model = BYOL(backbone=backbone, projector_hidden_dim=16, predictor_hidden_dim=16, **kwargs)
    trainer = _trainer(tmp_path, max_steps=1, val_check_interval=1)
    trainer.fit(model, _data())
    warned = [w for w in recwarn if "embedding collapse" in str(w.message)]
    assert bool(warned) == collapsed
    assert (trainer.callback_metrics["val/centred_rankme"] < 2) == collapsed


def test_a_run_whose_config_names_no_callbacks_gets_the_report(tmp_path, monkeypatch, capsys):
    import yaml

    from contrastive.cli import main

    monkeypatch.chdir(tmp_path)
    tiny = [
        "--data.num_train=32",
        "--data.num_test=16",
        "--data.num_bank=32",
        "--data.batch_size=16",
    ]
    main(
        [
            "fit",
            "--model=SimCLR",
            *tiny,
            "--model.backbone_kwargs={width: 4}",
            "--trainer.max_steps=1",
        ]
    )
    saved = yaml.safe_load(Path("runs/contrastive/version_0/config.yaml").read_text())
    names = [c["class_path"] for c in saved["trainer"]["callbacks"]]
    assert names == [
        "contrastive.evaluation.EmbeddingReport",
        "contrastive.evaluation.EmbeddingWriter",
    ]
    main(
        ["test", "--model=SimCLR", *tiny, "--model.backbone_kwargs={width: 4}", "--ckpt_path=last"]
    )
    assert "What the embedding knows" in capsys.readouterr().out
