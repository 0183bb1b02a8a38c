"""Writing checkpoints so that a kill at any moment leaves a loadable one, and ``last`` is last.

- :class:`AtomicCheckpointIO` writes each checkpoint to a temporary file in its own folder,
  flushes it to disk (fsync) and renames it over the old one, whatever ``$TMPDIR`` is, so a
  file is either the old checkpoint or the new one, never a part. It reads through
  :func:`~contrastive.checkpoints.read_checkpoint` (data only, one-line errors).
- :class:`Checkpoints` (the CLI's ``--checkpoint``) is Lightning's ``ModelCheckpoint`` that also
  removes the temporary files of a killed run at the next start, writes ``last.ckpt`` at the end
  of every fit and when a run is stopped by SIGTERM (a cluster's pre-emption) or Ctrl-C (which
  finishes the step first; a second Ctrl-C aborts at once).
- :func:`resume_checkpoint` is ``--ckpt_path last``: ``last.ckpt`` if it loads, else the newest
  step checkpoint that does. :func:`good_checkpoint` names the newest step file at or before a
  step, for the non-finite guard's message.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from contrastive.checkpoints import CheckpointError, read_checkpoint
from contrastive.files import atomic_writer, remove_partial_files

_STEP = re.compile(r"step=(\d+)")


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temporary file beside the destination, fsync, rename over it.

    Written with :func:`contrastive.files.atomic_writer`: a reader sees the old file or the
    new one; a kill leaves at most a ``.*.part`` file, which :class:`Checkpoints` removes at
    the next start. Loading reads tensors and plain values
    only, whatever ``weights_only`` Lightning asks for.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or not _is_local_file_protocol(str(path)):
            super().save_checkpoint(checkpoint, path, storage_options)  # remote: fsspec's way
            return
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_writer(path, binary=True) as f:
            torch.save(checkpoint, f)

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None):
        if not _is_local_file_protocol(str(path)):
            return super().load_checkpoint(path, map_location, weights_only=True)
        return read_checkpoint(path, "--ckpt_path")


def step_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of the checkpoints in ``folder`` named with ``step=N``, newest first."""
    found = []
    for path in Path(folder).glob("*.ckpt"):
        match = _STEP.search(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found, key=lambda item: (item[0], item[1].stat().st_mtime), reverse=True)


def good_checkpoint(trainer: Trainer, step: int) -> str:
    """The newest step checkpoint of this run at or before ``step``, or ``"none yet"``."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            for saved, path in step_checkpoints(Path(callback.dirpath)):
                if saved <= step:
                    return str(path)
    return "none yet"


def resume_checkpoint(folder: Path) -> tuple[Path, int, str | None]:
    """What ``--ckpt_path last`` resumes in a run's ``checkpoints`` folder: the newest state
    that loads.

    That is ``last.ckpt``, unless a step checkpoint is newer (a run killed between writing the
    step file and ``last.ckpt``) or ``last.ckpt`` does not load; then the newest step
    checkpoint that loads.

    Returns:
        ``(path, step, note)``; ``note`` says, in one line, why it is not ``last.ckpt``.

    Raises:
        CheckpointError: nothing in the folder loads.
    """
    last, last_step = folder / "last.ckpt", -1
    problem = f"{last} is missing"
    if last.is_file():
        try:
            last_step = int(read_checkpoint(last, "--ckpt_path last")["global_step"])
            problem = None
        except (CheckpointError, KeyError, TypeError, ValueError) as err:
            problem = f"{last} does not load ({err})"
    for named, path in step_checkpoints(folder):
        if named <= last_step:
            break
        try:
            step = int(read_checkpoint(path, "--ckpt_path last")["global_step"])
        except (CheckpointError, KeyError, TypeError, ValueError):
            continue
        why = problem or f"{path.name} is newer than {last} (step {last_step})"
        return path, step, f"{why}; using {path.name}, the newest checkpoint that loads"
    if problem is None:
        return last, last_step, None
    raise CheckpointError(f"--ckpt_path last: {problem}, and no step checkpoint in {folder} loads")


class Checkpoints(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint``, written so that ``last.ckpt`` is the last state.

    Besides every ``every_n_train_steps``: at the end of each fit, and when the run is stopped
    by SIGTERM or Ctrl-C (turned into SIGTERM: the step in progress ends first, as under
    Lightning's own SIGTERM handling, so the saved state is whole). Temporary files of a run
    killed while writing (``.*.part``) are removed when a fit starts in the folder.
    """

    _previous_sigint: Any = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if (
            stage == "fit"
            and trainer.is_global_zero
            and self.dirpath
            and os.path.isdir(self.dirpath)
        ):
            removed = remove_partial_files(self.dirpath)
            if removed:
                rank_zero_info(
                    f"removed {removed} unfinished checkpoint file(s) of a killed run "
                    f"from {self.dirpath}"
                )

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if threading.current_thread() is threading.main_thread():
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                self._previous_sigint = signal.signal(signal.SIGINT, self._on_ctrl_c)

    def _on_ctrl_c(self, signum: int, frame: Any) -> None:
        self._restore_sigint()  # a second Ctrl-C raises KeyboardInterrupt at once
        print(
            "\nCtrl-C: stopping after this step and writing last.ckpt (Ctrl-C again to abort)",
            file=sys.stderr,
        )
        signal.raise_signal(signal.SIGTERM)  # Lightning's SIGTERM path: stop at the step's end

    def _restore_sigint(self) -> None:
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._restore_sigint()
        self._save_last_if_behind(trainer)

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        self._restore_sigint()
        super().on_exception(trainer, pl_module, exception)
        if isinstance(exception, SIGTERMException) and self._save_last_if_behind(trainer):
            rank_zero_info(
                f"stopped at step {trainer.global_step}; wrote {self.last_model_path} "
                "(continue with --ckpt_path last)"
            )

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._restore_sigint()
        super().teardown(trainer, pl_module, stage)

    def _save_last_if_behind(self, trainer: Trainer) -> bool:
        """Write ``last.ckpt`` unless a checkpoint of this very step was written already."""
        if (
            not self.save_last
            or self._should_skip_saving_checkpoint_anytime(trainer)
            or self._last_global_step_saved == trainer.global_step
        ):
            return False
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        return True

    @staticmethod
    def _should_skip_saving_checkpoint_anytime(trainer: Trainer) -> bool:
        return bool(trainer.fast_dev_run) or trainer.sanity_checking
