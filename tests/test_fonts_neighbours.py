"""benchmarks/fonts_neighbours.py on a Conditional checkpoint of the DejaVu glyphs written by
``contrastive fit``: the picture is drawn, and its rows are the embeddings' own rankings."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from contrastive.checkpoints import load_method
from contrastive.cli import main
from tests.test_genecis_report import TEXT

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location(
    "fonts_neighbours", ROOT / "benchmarks" / "fonts_neighbours.py"
)
script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(script)


def test_the_picture_shows_each_rows_own_nearest_glyphs(fonts, tmp_path, capsys):  # noqa: F811
    config = {
        "trainer": {"max_steps": 1, "enable_progress_bar": False, "callbacks": [],
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(tmp_path / "runs")}}},
        "model": {"class_path": "contrastive.methods.Conditional", "init_args": {
            "backbone": "small_cnn", "backbone_kwargs": {"width": 4}, "embed_dim": 8,
            "conditioning_kwargs": {"hidden_dim": 16}, "text_tower": TEXT}},
        "data": {"class_path": "contrastive.datamodules.FontTripletDataModule", "init_args": {
            "fonts": str(fonts), "image_size": 24, "num_train": 32, "num_bank": 16,
            "batch_size": 16, "eval_batch_size": 32}},
    }  # fmt: skip
    path = tmp_path / "fonts.yaml"
    path.write_text(yaml.safe_dump(config))
    main(["fit", "--config", str(path)])
    (ckpt,) = (tmp_path / "runs").glob("**/checkpoints/last.ckpt")
    out = tmp_path / "neighbours.png"
    script.main(["--ckpt", str(ckpt), "--out", str(out), "--query", "3", "--k", "4"])
    assert Image.open(out).size[0] > 400 and "query 3 (" in capsys.readouterr().out
    model, _ = load_method(ckpt)
    images = torch.randint(0, 256, (10, 3, 24, 24), dtype=torch.uint8)
    found = script.neighbours(model, images, ["same letter"], query=3, k=4)
    assert list(found) == ["unconditioned", "same letter"]
    with torch.no_grad():
        z = model.condition(images, "same letter")
        scores = (z @ z[3]).index_fill(0, torch.tensor([3]), -2.0)
        expected = scores.topk(4).indices
        plain = F.normalize(model.embed(images), dim=-1)
        expected_plain = (plain @ plain[3]).index_fill(0, torch.tensor([3]), -2.0).topk(4).indices
    assert found["same letter"].tolist() == expected.tolist() and 3 not in expected.tolist()
    assert found["unconditioned"].tolist() == expected_plain.tolist()
