"""The Python API runs the commands' own code: ``fit`` gives the run the command gives,
``load``/``embed``/``similar`` the command's results; a checkpoint of a method built in Python
loads in every command, through the safe loader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from test_cli import TINY
from test_methods import _tiny_data

import contrastive
from contrastive.checkpoints import CheckpointError, UntrustedModuleError
from contrastive.cli import RunError, main
from contrastive.evaluation.probe import main as probe_main
from contrastive.methods import CLIP, SimCLR
from contrastive.runs import NoRunError
from contrastive.text import OpenCLIPText

CONFIG = Path(__file__).parents[1] / "configs/simclr.yaml"
DATA = {"num_train": 64, "num_val": 32, "num_test": 32, "num_bank": 64, "batch_size": 16}
TRAINER = {"max_steps": 2, "max_epochs": 1, "enable_progress_bar": False}


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def _config(run: Path) -> dict:
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["trainer"]["logger"]["init_args"].pop("version")
    return config


def test_fit_is_the_command_and_returns_its_run(capsys):
    run = contrastive.fit(
        CONFIG, trainer=TRAINER, data={**DATA, "eval_batch_size": 32}, model={"temperature": 0.2}
    )
    assert run.folder == Path("runs/simclr/version_0")
    assert run.checkpoint == run.folder / "checkpoints/last.ckpt" and run.checkpoint.is_file()
    assert run.encoder == run.folder / "encoder" and (run.encoder / "config.json").is_file()
    assert set(run.metrics) >= {"train/loss"} and np.isfinite(run.metrics["train/loss"])
    # The same keys typed on the command line make the same run.
    main(["fit", f"--config={CONFIG}", "--trainer.max_steps=2", "--trainer.max_epochs=1",
          "--trainer.enable_progress_bar=false", *[f"--data.{k}={v}" for k, v in DATA.items()],
          "--data.eval_batch_size=32", "--model.temperature=0.2"])  # fmt: skip
    assert _config(run.folder) == _config(Path("runs/simclr/version_1"))
    assert _config(run.folder)["model"]["init_args"]["temperature"] == 0.2


def test_load_embed_and_similar_give_what_the_commands_give(capsys):
    run = contrastive.fit(
        model="SimCLR", data=DATA, trainer={**TRAINER, "logger": False, "limit_val_batches": 0}
    )
    assert run.folder.resolve() == Path.cwd()  # no logger: the root folder
    assert run.checkpoint.resolve() == Path.cwd() / "checkpoints/last.ckpt"
    main(["embed", "--ckpt", str(run.checkpoint), "--images", "shapes:6", "--out", "cli.npy"])
    emb = contrastive.embed(run.checkpoint, "shapes:6", batch_size=4, no_progress=True)
    assert emb.ids == [json.loads(ln) for ln in Path("cli.ids.jsonl").read_text().splitlines()]
    np.testing.assert_allclose(emb.z.numpy(), np.load("cli.npy"), rtol=1e-5, atol=1e-6)
    written = contrastive.embed(run.checkpoint, "shapes:6", out="api.npy", no_progress=True)
    np.testing.assert_array_equal(np.load("api.npy"), written.z.numpy())

    model = contrastive.load(run.checkpoint)
    assert not model.training and isinstance(model, SimCLR)
    from contrastive.collection import image_source

    source = image_source("shapes:6", 32)
    images = torch.stack([source.read(i, None) for i in range(6)])  # (6, 3, 32, 32) uint8
    with torch.inference_mode():
        torch.testing.assert_close(model.embed(images), emb.z, rtol=1e-5, atol=1e-5)

    capsys.readouterr()
    main(["similar", "--ckpt", str(run.checkpoint), "--images", "shapes:6", "--top", "3",
          "--out", "cli.png"])  # fmt: skip
    table = capsys.readouterr().out
    rows = contrastive.similar(run.checkpoint, "shapes:6", out="api.png", top=3)
    assert [(r["id_a"], r["id_b"]) for r in rows] == [
        tuple(line.split("\t")[2:]) for line in table.splitlines()[1:]
    ]
    assert Path("api.png").read_bytes() == Path("cli.png").read_bytes()


def test_mistakes_are_the_commands_one_line_errors():
    with pytest.raises(RunError, match="did you mean temperature"):
        contrastive.fit(CONFIG, model={"temperatur": 0.2})
    with pytest.raises(RunError, match="--trainer.max_epoch: no such option; did you mean "):
        contrastive.fit(CONFIG, trainer={"max_epoch": 1})
    with pytest.raises(NoRunError, match="--ckpt_path last: no earlier run"):
        contrastive.fit(CONFIG, ckpt_path="last")
    with pytest.raises(TypeError, match="unexpected option 'batchsize'.*batch_size"):
        contrastive.embed("x.ckpt", "shapes:2", batchsize=2)
    with pytest.raises(ValueError, match="--batch_size: invalid int value: 'x'"):
        contrastive.embed("x.ckpt", "shapes:2", batch_size="x")
    with pytest.raises(CheckpointError, match="no checkpoint file at x.ckpt"):
        contrastive.load("x.ckpt")


# ---- methods built in Python ----------------------------------------------------------------


class MyMethod(SimCLR):
    """A user's method built in Python, in a module outside contrastive (this test file)."""


def _train_in_python(model, tmp_path: Path) -> Path:
    """Lightning's own loop, no CLI: a checkpoint whose hyper-parameters are plain values."""
    trainer = Trainer(
        max_steps=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, default_root_dir=tmp_path,
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)],
    )  # fmt: skip
    trainer.fit(model, _tiny_data(shared_factors=["shape"]))
    return tmp_path / "ckpt/last.ckpt"


def _images() -> torch.Tensor:
    from contrastive.collection import image_source

    source = image_source("shapes:4", 32)
    return torch.stack([source.read(i, None) for i in range(4)])  # (4, 3, 32, 32) uint8


def test_a_method_built_in_python_loads_in_every_command(tmp_path, capsys):
    model = SimCLR(backbone_kwargs={"width": 4}, projector_hidden_dim=16)
    ckpt = _train_in_python(model, tmp_path)
    assert "_class_path" in torch.load(ckpt, weights_only=True)["hyper_parameters"]
    expected = model.eval().embed(_images()).detach()

    main(["embed", "--ckpt", str(ckpt), "--images", "shapes:4", "--out", "e.npy"])
    np.testing.assert_allclose(np.load("e.npy"), expected.numpy(), rtol=1e-5, atol=1e-5)
    main(["similar", "--ckpt", str(ckpt), "--images", "shapes:4", "--top", "2", "--out", "s.png"])
    main(["export", "--ckpt", str(ckpt), "--out", "enc"])
    with torch.inference_mode():
        features = contrastive.load_encoder("enc").embed(_images())
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)
    capsys.readouterr()
    tiny = [a for a in TINY if not a.startswith("--model")]
    main(["test", f"--ckpt_path={ckpt}", *tiny])  # the method the checkpoint names
    assert "What the embedding knows" in capsys.readouterr().out
    # The config's method is wider (width 16, projector 2048): the checkpoint's own
    # hyper-parameters rebuild it, as for a checkpoint of `contrastive fit`.
    main(["test", f"--config={CONFIG}", f"--ckpt_path={ckpt}", *tiny])
    assert "What the embedding knows" in capsys.readouterr().out
    # Plain Lightning still loads it.
    loaded = SimCLR.load_from_checkpoint(ckpt, weights_only=True).eval()
    torch.testing.assert_close(loaded.embed(_images()), expected)


def test_a_python_built_method_from_outside_contrastive_still_needs_trust(tmp_path):
    ckpt = _train_in_python(MyMethod(backbone_kwargs={"width": 4}, projector_hidden_dim=16),
                            tmp_path)  # fmt: skip
    with pytest.raises(UntrustedModuleError, match="test_api.MyMethod.*--trust_module test_api"):
        contrastive.load(ckpt)
    assert type(contrastive.load(ckpt, trust_module=["test_api"])).__name__ == "MyMethod"


def test_a_method_defined_in_a_script_is_refused_with_how_to_fix_it(tmp_path):
    ckpt = _train_in_python(SimCLR(backbone_kwargs={"width": 4}, projector_hidden_dim=16),
                            tmp_path)  # fmt: skip
    state = torch.load(ckpt, weights_only=True)
    state["hyper_parameters"]["_class_path"] = "__main__.MyMethod"
    torch.save(state, tmp_path / "script.ckpt")
    with pytest.raises(CheckpointError, match="defined in the script.*module \\(my_methods.py\\)"):
        contrastive.load(tmp_path / "script.ckpt")


def test_a_clip_built_in_python_keeps_its_text_tower_config(tmp_path, capsys):
    text = OpenCLIPText(width=16, layers=1, heads=2, context_length=16, embed_dim=8)
    model = CLIP(text_tower=text, embed_dim=8, backbone_kwargs={"width": 4})
    ckpt = _train_in_python(model, tmp_path)
    saved = torch.load(ckpt, weights_only=True)["hyper_parameters"]["text_tower"]
    assert saved["class_path"] == "contrastive.text.OpenCLIPText"
    assert saved["init_args"]["width"] == 16
    loaded = contrastive.load(ckpt)
    tokens = loaded.tokenizer(["a red circle"])
    torch.testing.assert_close(loaded.text_tower(tokens), model.text_tower.eval()(tokens))
    main(["embed", "--ckpt", str(ckpt), "--images", "shapes:2", "--out", "e.npy"])
    assert np.load("e.npy").shape == (2, 32)


def test_probe_is_the_command_and_returns_its_figures(tmp_path, capsys):
    ckpt = _train_in_python(SimCLR(backbone_kwargs={"width": 4}, projector_hidden_dim=16),
                            tmp_path)  # fmt: skip
    data = {"num_test": 24, "num_bank": 32, "eval_batch_size": 16}
    typed = probe_main(["--ckpt", str(ckpt), *[f"--data.{k}={v}" for k, v in data.items()],
                        "--report.probe_max_iter=10", "--out=cli"])  # fmt: skip
    figures = contrastive.probe(ckpt, data=data, report={"probe_max_iter": 10}, out="api")
    assert figures == typed and {"test/knn/shape", "test/linear/shape"} <= set(figures)
    assert Path("api/test_report.png").is_file()
    assert capsys.readouterr().out.count("What the embedding knows") == 2
    with pytest.raises(ValueError, match="did you mean --report.probe_max_iter"):
        contrastive.probe(ckpt, report={"probe_max_itr": 3})
    with pytest.raises(ValueError, match="nope.ckpt"):
        contrastive.probe("nope.ckpt", data=data)
