"""``contrastive test ... --data GeneCISDataModule`` end to end through ``contrastive.cli.main``:
a Conditional checkpoint (all four scorers) and a CLIP config with no checkpoint (the three
baselines), on GeneCIS-format fixtures with a record skipped."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import yaml

from contrastive.cli import main
from contrastive.evaluation import GeneCISEvaluation
from contrastive.evaluation.genecis_benchmark import gallery_scores, target_ranks
from contrastive.methods import Conditional
from contrastive.text import OpenCLIPText
from tests.test_genecis_benchmark import redness  # noqa: F401 (a fixture)

TEXT = {
    "class_path": "contrastive.text.OpenCLIPText",
    "init_args": {"model": "ViT-B-32", "width": 32, "layers": 1, "heads": 2,
                  "context_length": 16, "embed_dim": 24},
}  # fmt: skip
CALLBACKS = [  # a config's usual callbacks: the others stay quiet on GeneCIS data
    {"class_path": "contrastive.evaluation.EmbeddingReport"},
    {"class_path": "contrastive.evaluation.GeneCISEvaluation"},
]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a run with no logger saves its config in the working folder


def _config(tmp_path, method: str, **init_args) -> str:
    config = {
        "seed_everything": 0,
        "trainer": {"logger": False, "enable_progress_bar": False, "callbacks": CALLBACKS},
        "model": {
            "class_path": f"contrastive.methods.{method}",
            "init_args": {
                "backbone": "small_cnn",
                "backbone_kwargs": {"width": 4},
                "text_tower": TEXT,
                **init_args,
            },
        },  # fmt: skip
    }
    path = tmp_path / f"{method}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _data_args(data) -> list[str]:
    return [
        "--data=GeneCISDataModule", "--data.task=focus_object", "--data.image_size=16",
        f"--data.annotations={data.annotations[0]}", f"--data.images={data.images[0]}",
    ]  # fmt: skip


def _rows(out: str) -> dict[str, list[float]]:
    head, *lines = out[out.index("GeneCIS (Vaze") :].splitlines()[3:8]
    rows = {}
    for line in [head, *lines]:
        if line.split() and line.split()[0] in ("conditioned", "image", "text", "image+text"):
            rows[line.split()[0]] = [float(v) for v in line.split()[1:]]
    return rows


def test_a_conditional_checkpoint_prints_all_four_scorers(redness, tmp_path, capsys):  # noqa: F811
    config = _config(tmp_path, "Conditional", embed_dim=8, conditioning_kwargs={"hidden_dim": 16})
    model = Conditional(
        text_tower=OpenCLIPText(**TEXT["init_args"]), backbone="small_cnn",
        backbone_kwargs={"width": 4}, embed_dim=8, conditioning_kwargs={"hidden_dim": 16},
    )  # fmt: skip
    trainer = L.Trainer(logger=False, enable_progress_bar=False, callbacks=[GeneCISEvaluation()])
    trainer.test(model, redness)
    ckpt = tmp_path / "conditional.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=False)  # the test's own file
    del saved["hyper_parameters"]  # built in Python: the config says what the model is
    torch.save(saved, ckpt)
    capsys.readouterr()
    main(["test", "--config", config, "--ckpt_path", str(ckpt), *_data_args(redness)])
    out = capsys.readouterr().out
    rows = _rows(out)
    assert list(rows) == ["conditioned", "image", "text", "image+text"]
    assert "records scored: focus_object 1 of 2 (1 skipped" in out
    batch = next(iter(redness.test_dataloader()))  # the one record scored, by hand
    with torch.no_grad():
        scores = gallery_scores(model.eval(), batch["image"], batch["text"], batch["gallery"],
                                batch["gallery_mask"])  # fmt: skip
    for scorer, s in scores.items():
        rank = target_ranks(s).item()
        assert rows[scorer] == [float(rank < k) for k in (1, 2, 3)], scorer


def test_a_clip_config_with_no_checkpoint_prints_the_baselines(redness, tmp_path, capsys):  # noqa: F811
    config = _config(tmp_path, "CLIP", embed_dim=16)
    main(["test", "--config", config, *_data_args(redness)])
    rows = _rows(capsys.readouterr().out)
    assert list(rows) == ["image", "text", "image+text"]
    assert all(len(v) == 3 and all(0 <= x <= 1 for x in v) for v in rows.values())


def test_a_method_without_text_is_one_clear_line(redness, tmp_path, capsys):  # noqa: F811
    with pytest.raises(SystemExit):
        main(["test", "--model=SimCLR", "--trainer.logger=false",
              "--trainer.callbacks+=GeneCISEvaluation", *_data_args(redness)])  # fmt: skip
    assert "SimCLR has no encode_image and encode_text" in capsys.readouterr().err
