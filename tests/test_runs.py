"""``--ckpt_path last`` finds the newest run whatever the logger's folder layout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from test_cli import TINY

from contrastive.cli import main
from contrastive.runs import NoRunError, latest_run

# TINY's logger settings are TensorBoard's; these runs name their own logger.
DATA = [a for a in TINY if not a.startswith("--trainer.logger")]
CSV = [
    "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
    "--trainer.logger.save_dir=logs",
    "--trainer.logger.name=exp",
]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def fit(*args: str) -> None:
    main(["fit", "--model=SimCLR", *DATA, *args])


def step(path: Path) -> int:
    return torch.load(path, weights_only=True)["global_step"]


def test_the_csv_logger_run_is_resumed_and_logs_into_its_own_folder():
    fit(*CSV, "--trainer.max_steps=2")
    run = Path("logs/exp/version_0")
    assert step(run / "checkpoints/last.ckpt") == 2
    fit(*CSV, "--trainer.max_steps=4", "--ckpt_path=last",
        "--trainer.callbacks+=test_cli.RecordStart")  # fmt: skip
    assert Path("start_step.txt").read_text() == "2"
    assert step(run / "checkpoints/last.ckpt") == 4
    assert sorted(p.name for p in Path("logs/exp").iterdir()) == ["version_0"]
    assert (run / "metrics.csv").is_file() and (run / "config_1.yaml").is_file()


def _touch(path: Path, when: float) -> None:
    os.utime(path, (when, when))


def test_runs_named_without_version_n_the_newest_checkpoint_decides():
    for name in ("alpha", "beta"):
        fit(*CSV, f"--trainer.logger.version={name}", "--trainer.max_steps=1")
    alpha, beta = (Path(f"logs/exp/{n}/checkpoints") for n in ("alpha", "beta"))
    for folder, when in ((alpha, 2_000_000_000), (beta, 1_000_000_000)):  # alpha is newer
        for ckpt in folder.glob("*.ckpt"):
            _touch(ckpt, when)
    fit(*CSV, "--trainer.max_steps=2", "--ckpt_path=last")
    assert step(alpha / "last.ckpt") == 2 and step(beta / "last.ckpt") == 1
    assert (alpha.parent / "config_1.yaml").is_file()  # logged into alpha's folder
    assert sorted(p.name for p in Path("logs/exp").iterdir()) == ["alpha", "beta"]


def test_a_run_without_a_logger_resumes_from_the_root_checkpoints_folder():
    fit("--trainer.logger=false", "--trainer.max_steps=1")
    assert step(Path("checkpoints/last.ckpt")) == 1
    fit("--trainer.logger=false", "--trainer.max_steps=3", "--ckpt_path=last")
    assert step(Path("checkpoints/last.ckpt")) == 3


def test_a_checkpoint_dirpath_is_where_last_looks():
    fit("--checkpoint.dirpath=mine", "--trainer.max_steps=1")
    fit("--checkpoint.dirpath=mine", "--trainer.max_steps=2", "--ckpt_path=last")
    assert step(Path("mine/last.ckpt")) == 2


def _ckpt(folder: Path, when: float) -> None:
    folder.mkdir(parents=True)
    (folder / "last.ckpt").write_bytes(b"")
    _touch(folder / "last.ckpt", when)


def _logger(cls: str, **init) -> dict:
    return {"logger": {"class_path": f"lightning.pytorch.loggers.{cls}", "init_args": init}}


def test_wandb_and_mlflow_layouts_from_their_configuration(tmp_path):
    # Weights & Biases: <save_dir>/<project>/<run id>/checkpoints; another project is not looked at.
    _ckpt(tmp_path / "w/proj/run1/checkpoints", 1_000_000_000)
    _ckpt(tmp_path / "w/proj/run2/checkpoints", 1_500_000_000)
    _ckpt(tmp_path / "w/other/run3/checkpoints", 2_000_000_000)
    wandb = _logger("WandbLogger", save_dir=str(tmp_path / "w"), project="proj", version=None)
    assert latest_run(wandb) == (tmp_path / "w/proj/run2/checkpoints", "version", "run2")
    # MLflow: <save_dir>/<experiment id>/<run id>/checkpoints, continued by run_id.
    _ckpt(tmp_path / "mlruns/1/abc/checkpoints", 1_000_000_000)
    _ckpt(tmp_path / "mlruns/2/def/checkpoints", 2_000_000_000)
    mlflow = _logger("MLFlowLogger", save_dir=str(tmp_path / "mlruns"), run_id=None)
    assert latest_run(mlflow) == (tmp_path / "mlruns/2/def/checkpoints", "run_id", "def")


def test_a_folder_without_checkpoints_is_not_a_run(tmp_path):
    (tmp_path / "logs/exp/version_0/checkpoints").mkdir(parents=True)  # a run killed early
    _ckpt(tmp_path / "logs/exp/version_1/checkpoints", 1_000_000_000)
    (tmp_path / "logs/exp/version_2").mkdir()
    csv = _logger("CSVLogger", save_dir=str(tmp_path / "logs"), name="exp", version=None)
    assert latest_run(csv).checkpoints == tmp_path / "logs/exp/version_1/checkpoints"
    tensorboard = _logger("TensorBoardLogger", save_dir=str(tmp_path / "logs"), name="none")
    with pytest.raises(NoRunError, match="no earlier run with checkpoints under .*logs/none"):
        latest_run(tensorboard)


def test_no_earlier_run_without_a_logger_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        fit("--trainer.logger=false", "--trainer.max_steps=1", "--ckpt_path=last")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no earlier run with checkpoints in" in err
