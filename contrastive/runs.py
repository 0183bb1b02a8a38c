"""Where a run's checkpoints are, whatever logs it: what ``--ckpt_path last`` continues.

Lightning writes a run's checkpoints to ``<save_dir>/<name>/<version>/checkpoints`` of its first
logger, to ``<default_root_dir>/checkpoints`` without a logger, or to ``--checkpoint.dirpath``
when that is set. Each logger names ``<name>`` and ``<version>`` in its own way
(:data:`LOGGER_RUNS`): TensorBoard and CSV ``version_N``, Weights & Biases a run id, MLflow an
experiment and a run id. :func:`latest_run` finds, from a run's configuration alone (before
any logger exists, so nothing is created on a tracking server), the folder with the newest
checkpoint, and how to tell the logger to continue that run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

#: ``<name>`` and the run a logger logs into, by logger class: the init argument naming
#: ``<name>`` (``None``: not known from the configuration, any folder) with its default, and
#: the init argument that makes the logger continue an existing run. A logger class not
#: listed: any ``<name>``, and its ``version`` argument when it has one.
LOGGER_RUNS: dict[str, tuple[str | None, str | None, str]] = {
    "TensorBoardLogger": ("name", "lightning_logs", "version"),
    "CSVLogger": ("name", "lightning_logs", "version"),
    "WandbLogger": ("project", os.environ.get("WANDB_PROJECT", "lightning_logs"), "version"),
    "MLFlowLogger": (None, None, "run_id"),  # <name> is an experiment id
}


class LatestRun(NamedTuple):
    """The newest run that has a checkpoint."""

    checkpoints: Path  # its checkpoints folder
    logger_key: str | None  # the logger's init argument that continues it (None: no logger)
    logger_value: str | None  # and its value: the run's folder name


class NoRunError(ValueError):
    """No earlier run with a checkpoint; the message is one line naming where it looked."""


def latest_run(trainer: Any, checkpoint_dirpath: str | None = None) -> LatestRun:
    """The run ``--ckpt_path last`` continues: the one whose checkpoint was written last.

    Args:
        trainer: the run's ``trainer`` configuration (a jsonargparse namespace or a dict):
            its ``logger`` (``False``/``None``: none, ``True``: Lightning's default, a
            ``class_path``/``init_args`` entry, or a list whose first one decides) and
            ``default_root_dir``.
        checkpoint_dirpath: ``--checkpoint.dirpath``; every run then writes there.

    Raises:
        NoRunError: no folder of this configuration's runs holds a checkpoint.
    """
    root = Path(_get(trainer, "default_root_dir") or os.getcwd())
    if checkpoint_dirpath:
        return _only(Path(checkpoint_dirpath))
    logger = _get(trainer, "logger")
    if isinstance(logger, (list, tuple)):
        logger = logger[0] if logger else None
    if logger is None or logger is False:
        return _only(root / "checkpoints")
    if logger is True:  # Lightning's default logger, which the configuration cannot steer
        cls, init = "TensorBoardLogger", {"save_dir": str(root), "name": "lightning_logs"}
    else:
        cls, init = str(_get(logger, "class_path")).rpartition(".")[2], _get(logger, "init_args")
    name_key, name_default, run_key = LOGGER_RUNS.get(cls, (None, None, "version"))
    if logger is True or _get(init, run_key, _MISSING) is _MISSING:
        run_key = None  # the logger cannot be told which run to continue
    save_dir = Path(_get(init, "save_dir") or root)
    name = (_get(init, name_key) or name_default) if name_key else None
    pattern = f"{name}/*/checkpoints" if name is not None else "*/*/checkpoints"
    folders = [f for f in save_dir.glob(pattern) if _newest(f) is not None]
    if not folders:
        where = save_dir / (name if name is not None else "*")
        raise NoRunError(f"--ckpt_path last: no earlier run with checkpoints under {where}")
    newest = max(folders, key=_newest)
    return LatestRun(newest, run_key, newest.parent.name if run_key else None)


_MISSING = object()


def _only(folder: Path) -> LatestRun:
    if _newest(folder) is None:
        raise NoRunError(f"--ckpt_path last: no earlier run with checkpoints in {folder}")
    return LatestRun(folder, None, None)


def _newest(folder: Path) -> float | None:
    """The modification time of the newest checkpoint in ``folder``; ``None``: none there."""
    times = [p.stat().st_mtime for p in folder.glob("*.ckpt") if p.is_file()]
    return max(times) if times else None


def _get(value: Any, key: str | None, default: Any = None) -> Any:
    if value is None or key is None:
        return default
    if isinstance(value, dict):
        return value.get(key, default)
    return getattr(value, key, default)
