"""Checkpoints survive any kill, ``last`` is the last state, and the good checkpoint is good.

Kills are real (``SIGKILL`` to a process writing checkpoints, with ``$TMPDIR`` on a tmpfs, as
in the report where Lightning's copy from ``$TMPDIR`` left a 0-byte ``last.ckpt``); SIGTERM and
Ctrl-C go to a real ``contrastive fit`` process.
"""

from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from test_cli import TINY

from contrastive.checkpoint_io import AtomicCheckpointIO, resume_checkpoint
from contrastive.cli import main
from contrastive.files import remove_partial_files
from contrastive.methods import SimCLR

TESTS = Path(__file__).parent
RUN = Path("runs/contrastive/version_0/checkpoints")


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.fixture()
def tmpfs_tmpdir():
    """A ``$TMPDIR`` on /dev/shm (a tmpfs: another filesystem than the run folder)."""
    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm")
    folder = Path(tempfile.mkdtemp(dir="/dev/shm"))
    yield folder
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()


def _writer(folder: Path, start: int, tmpdir: Path, weights: torch.Tensor) -> None:
    """Forked child: write step and ``last`` checkpoints, as ModelCheckpoint does, forever.

    The weights are filled through numpy: a forked child must not enter the parent's OpenMP
    thread pool (it would wait forever on threads that were not forked).
    """
    try:
        os.environ["TMPDIR"] = str(tmpdir)
        tempfile.tempdir = None
        io = AtomicCheckpointIO()
        for step in range(start, start + 10**6):
            weights.numpy().fill(step)
            state = {"global_step": step, "state_dict": {"w": weights}}
            io.save_checkpoint(state, folder / f"epoch=0-step={step}.ckpt")
            io.save_checkpoint(state, folder / "last.ckpt")
    finally:
        os._exit(0)


def test_kill_9_at_random_moments_of_checkpoint_writes_always_leaves_a_loadable_one(
    tmp_path, tmpfs_tmpdir
):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    rng = random.Random(0)
    step, partial_seen = 0, 0
    weights = torch.zeros(2**21)  # 8 MB
    for _ in range(10):
        removed = remove_partial_files(folder)  # what the next start does
        partial_seen += removed
        assert not list(folder.glob(".*.part"))
        pid = os.fork()
        if pid == 0:
            _writer(folder, step + 1, tmpfs_tmpdir, weights)
        while not (folder / f"epoch=0-step={step + 1}.ckpt").exists():
            assert os.waitpid(pid, os.WNOHANG) == (0, 0), "the writer died"
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        path, resumed, _ = resume_checkpoint(folder)  # what --ckpt_path last resumes
        state = torch.load(path, weights_only=True)
        assert state["global_step"] == resumed > step  # progress, from a whole file
        assert bool((state["state_dict"]["w"] == resumed).all())  # not torn
        step = resumed
    partial_seen += remove_partial_files(folder)
    assert partial_seen >= 1  # some kills did land in the middle of a write
    assert not list(tmpfs_tmpdir.iterdir())  # nothing written to, or leaked in, $TMPDIR


class RecordStep(Callback):
    """Writes the global step after each training batch to ``step.txt`` (atomically)."""

    def on_train_batch_end(self, trainer, *args) -> None:
        Path("step.tmp").write_text(str(trainer.global_step))
        os.replace("step.tmp", "step.txt")


def _start_fit(tmp_path: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    path = os.pathsep.join([str(TESTS.parent), str(TESTS)])
    return subprocess.Popen(
        [sys.executable, "-c", "from contrastive.cli import main; main()", "fit",
         "--model=SimCLR", *TINY, "--trainer.max_steps=100000",
         f"--trainer.callbacks+={__name__}.RecordStep", *args],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": path, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # A SIGINT the parent ignores (a background job) would be ignored by the child too.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip


def _wait_for_step(tmp_path: Path, proc: subprocess.Popen, step: int) -> None:
    deadline = time.monotonic() + 600  # a guard against a hung child, not a timing test
    while not (
        (tmp_path / "step.txt").exists() and int((tmp_path / "step.txt").read_text()) >= step
    ):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_fit_killed_while_writing_resumes_from_a_loadable_checkpoint(tmp_path, tmpfs_tmpdir):
    proc = _start_fit(
        tmp_path, "--checkpoint.every_n_train_steps=1", env={"TMPDIR": str(tmpfs_tmpdir)}
    )
    _wait_for_step(tmp_path, proc, 3)
    time.sleep(random.Random(1).uniform(0.0, 0.2))
    proc.kill()
    proc.wait()
    main(["fit", "--model=SimCLR", *TINY, "--checkpoint.every_n_train_steps=1",
          f"--trainer.callbacks+={__name__}.RecordStep", "--ckpt_path=last",
          f"--trainer.max_steps={int(Path('step.txt').read_text()) + 2}"])  # fmt: skip
    assert not list(RUN.glob(".*.part"))  # the killed run's partial file is gone
    assert not list(tmpfs_tmpdir.iterdir())


@pytest.mark.parametrize("sig, said", [(signal.SIGTERM, ""), (signal.SIGINT, "Ctrl-C")])
def test_sigterm_and_ctrl_c_end_the_step_and_write_last(sig, said, tmp_path):
    proc = _start_fit(tmp_path, "--checkpoint.every_n_train_steps=1000")
    _wait_for_step(tmp_path, proc, 2)
    proc.send_signal(sig)
    assert proc.wait() == 143
    stopped_at = int(Path("step.txt").read_text())
    state = torch.load(RUN / "last.ckpt", weights_only=True)
    assert state["global_step"] == stopped_at >= 2
    assert said in proc.stderr.read()


def test_last_is_written_at_the_end_of_every_fit(capsys):
    """5 steps with a checkpoint every 2: ``last`` is step 5, not 4, and test says so."""
    run = ["--model=SimCLR", *TINY, "--checkpoint.every_n_train_steps=2"]
    main(["fit", *run, "--trainer.max_steps=5"])
    assert torch.load(RUN / "last.ckpt", weights_only=True)["global_step"] == 5
    capsys.readouterr()
    main(["test", *run, "--ckpt_path=last"])
    assert f"loading {RUN / 'last.ckpt'} (step 5)" in capsys.readouterr().err


def test_ckpt_path_last_falls_back_to_the_newest_step_checkpoint_that_loads(capsys):
    run = ["--model=SimCLR", *TINY, "--checkpoint.every_n_train_steps=2"]
    main(["fit", *run, "--trainer.max_steps=5"])
    (RUN / "last.ckpt").write_bytes((RUN / "last.ckpt").read_bytes()[:1000])  # torn
    (RUN / "epoch=0-step=4.ckpt").write_bytes(b"")  # empty
    capsys.readouterr()
    main(["test", *run, "--ckpt_path=last"])
    err = capsys.readouterr().err
    assert "last.ckpt does not load" in err and "using epoch=0-step=2.ckpt" in err
    assert f"loading {RUN / 'epoch=0-step=2.ckpt'} (step 2)" in err


# ---- a non-finite loss or update ------------------------------------------------------------


class NaNAtStep(SimCLR):
    """SimCLR whose loss turns NaN at a chosen step."""

    def __init__(self, nan_step: int = 2, **kwargs) -> None:
        super().__init__(**kwargs)
        self.nan_step = nan_step

    def training_loss(self, batch: dict) -> torch.Tensor:
        loss = super().training_loss(batch)
        return loss * float("nan") if self.global_step == self.nan_step else loss


class BlowUpAtStep(SimCLR):
    """SimCLR whose loss is scaled by 1e30 at step ``blow_at`` (a class attribute, so that a
    resumed run can turn it off): with SGD the update leaves finite losses and huge weights."""

    blow_at: int | None = None

    def training_loss(self, batch: dict) -> torch.Tensor:
        loss = super().training_loss(batch)
        return loss * 1e30 if self.global_step == type(self).blow_at else loss


class RecordLoss(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, *args) -> None:
        with open("losses.txt", "a") as f:
            f.write(f"{trainer.global_step - 1} {float(outputs['loss'])}\n")


def _stopped(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code == 1
    return capsys.readouterr().err.strip().splitlines()[-1]


def _every_checkpoint_is_finite() -> list[int]:
    steps = []
    for path in RUN.glob("*.ckpt"):
        state = torch.load(path, weights_only=True)
        weights = [v for v in state["state_dict"].values() if v.is_floating_point()]
        assert all(v.abs().max() < 1e10 for v in weights), path  # finite, and not 1e30
        steps.append(state["global_step"])
    return steps


def test_a_nan_loss_names_a_fixed_step_checkpoint(capsys):
    err = _stopped(capsys, "fit", f"--model={__name__}.NaNAtStep", "--model.nan_step=3", *TINY,
                   "--checkpoint.every_n_train_steps=1", "--trainer.max_steps=6")  # fmt: skip
    assert "loss is nan at step 3" in err and "last.ckpt" not in err
    assert err.endswith(f"last good checkpoint: {RUN / 'epoch=0-step=2.ckpt'}")
    assert max(_every_checkpoint_is_finite()) == 3  # step 3's weights: written, finite


def test_an_update_to_huge_weights_is_never_checkpointed_and_the_named_file_resumes(
    capsys, monkeypatch
):
    monkeypatch.setattr(BlowUpAtStep, "blow_at", 3)
    run = [f"--model={__name__}.BlowUpAtStep", *TINY, "--model.optimizer=torch.optim.SGD",
           "--model.optimizer.lr=0.1", "--checkpoint.every_n_train_steps=1"]  # fmt: skip
    err = _stopped(capsys, "fit", *run, "--trainer.max_steps=6")
    assert "weights are not finite after the update of step 3" in err
    named = RUN / "epoch=0-step=3.ckpt"
    assert err.endswith(f"last good checkpoint: {named}")
    assert max(_every_checkpoint_is_finite()) == 3  # nothing from the bad update
    monkeypatch.setattr(BlowUpAtStep, "blow_at", None)
    main(["fit", *run, f"--ckpt_path={named}", "--trainer.max_steps=5",
          f"--trainer.callbacks+={__name__}.RecordLoss"])  # fmt: skip
    losses = [line.split() for line in Path("losses.txt").read_text().splitlines()]
    assert [int(s) for s, _ in losses] == [3, 4]  # resumed at the named step
    assert all(math.isfinite(float(v)) for _, v in losses)


def test_a_huge_learning_rate_stops_at_the_first_update_and_writes_nothing(capsys):
    """The report's case: AdamW at lr 1e30 gives finite losses and weights near 1e30."""
    err = _stopped(capsys, "fit", "--model=SimCLR", *TINY, "--model.optimizer.lr=1e30",
                   "--checkpoint.every_n_train_steps=1", "--trainer.max_steps=4")  # fmt: skip
    assert "weights are not finite after the update of step 0" in err
    assert err.endswith("last good checkpoint: none yet")
    assert not list(RUN.glob("*.ckpt"))
