"""``contrastive probe``: kNN and the linear probe of any checkpoint on any data module."""

from pathlib import Path

import pytest

from contrastive.cli import main
from tests.test_prediction_writer import TINY

DATA = [
    "--data.num_train=32",
    "--data.num_test=24",
    "--data.num_bank=32",
    "--data.batch_size=16",
    "--data.eval_batch_size=16",
]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def test_the_probe_command_reports_knn_and_linear_against_random_init(capsys):
    main(["fit", *TINY, "--trainer.max_steps=1", "--trainer.limit_val_batches=0"])
    ckpt = "runs/simclr/version_0/checkpoints/last.ckpt"
    capsys.readouterr()
    main(["probe", "--ckpt", ckpt, *DATA, "--report.probe_max_iter=10", "--out=probe"])
    out = capsys.readouterr().out
    assert out.count("What the embedding knows") == 1 and "(24 queries, bank 32)" in out
    assert "linear trained" in out and "kNN random" in out
    assert Path("probe/test_report.png").is_file()


@pytest.mark.parametrize(
    "args, message, status",
    [
        (["--ckpt", "nope.ckpt", *DATA], "nope.ckpt", 1),
        (["--ckpt", "x", "--data.batch_size=0"], "batch_size", 1),
        (["--ckpt", "x", "--report.probe_max_itr=3"], "did you mean --report.probe_max_iter", 2),
        (["--ckpt", "x", "--data.batch-size=0"], "batch_size must be >= 1", 1),  # one spelling
    ],
)
def test_mistakes_are_one_line(args, message, status, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["probe", *args])
    assert exit_info.value.code == status
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err and "Traceback" not in err
