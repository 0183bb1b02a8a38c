"""What the parts of gpu_check.py share: the table's rows, the time budget, quiet runs and the
device's description."""

from __future__ import annotations

import contextlib
import gc
import importlib.metadata
import logging
import os
import platform
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

OK, FAIL, SKIPPED = "ok", "FAIL", "skipped"


@dataclass
class Row:
    """One line of the table and one entry of the JSON.

    Attributes:
        part: ``smoke``, ``throughput``, ``pipeline``, ``negatives``, ``fashion`` or ``goal``.
        case: what was run (``configs/simclr.yaml``, ``dino 2x224+8x96 compiled``, ...).
        result: the figures in words, for the table.
        status: ``ok``, ``FAIL`` (with the error's first line as ``result``), ``skipped``
            (with the reason), or for a goal ``met`` / ``NOT met``.
        data: the figures, for the JSON.
    """

    part: str
    case: str
    result: str
    status: str = OK
    data: dict = field(default_factory=dict)

    def as_json(self) -> dict:
        return {"case": self.case, "status": self.status, "result": self.result, **self.data}


class Budget:
    """The seconds left until a deadline: parts size themselves to what remains, and no case
    starts once it has passed (a run ends at most one case past its budget, with its table and
    JSON, rather than being killed by the device's time limit)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def spent(self, part: str, case: str) -> Row | None:
        """A skipped row for ``case`` once the deadline has passed; ``None`` while time is left."""
        if self.left() > 0:
            return None
        return Row(part, case, f"budget spent ({self.seconds / 60:g} min)", SKIPPED)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device: torch.device) -> None:
    """Free what the last case left: Python garbage, then the CUDA cache."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@contextlib.contextmanager
def quiet(log: Path) -> Iterator[None]:
    """Send Python's stdout, stderr, warnings and Lightning's info lines to ``log``."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    with open(log, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for lg in loggers:
                lg.setLevel(logging.ERROR)
            try:
                yield
            finally:
                for lg, level in zip(loggers, levels, strict=True):
                    lg.setLevel(level)


@contextlib.contextmanager
def inside(folder: Path) -> Iterator[None]:
    """Run in ``folder`` (made if missing): the CLI writes ``runs/`` where it runs."""
    before = os.getcwd()
    folder.mkdir(parents=True, exist_ok=True)
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def first_line(error: BaseException, log: Path | None = None, offset: int = 0) -> str:
    """The first line of what went wrong: the exception's, or for a ``SystemExit`` (the CLI's
    parse errors and one-line ``error:`` messages) the first ``error:`` line that the case
    wrote to ``log`` (from byte ``offset``)."""
    if isinstance(error, SystemExit) and log is not None and log.is_file():
        with open(log, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("error:")]
        text = (errors or lines[-1:] or [f"exit status {error.code}"])[0]
    else:
        message = str(error).strip().splitlines()
        text = f"{type(error).__name__}: {message[0] if message else ''}"
    return text[:300]


def run_case(log: Path, function, *args, **kwargs) -> tuple[object, str | None]:
    """``function(*args, **kwargs)`` quietly: ``(its result, None)``, or ``(None, the first
    line of its error)``. A ``SystemExit(0)`` is a success."""
    offset = log.stat().st_size if log.is_file() else 0
    try:
        with quiet(log):
            return function(*args, **kwargs), None
    except SystemExit as error:
        if error.code in (0, None):
            return None, None
        return None, first_line(error, log, offset)
    except Exception as error:  # a failing case is a FAIL row, not the end of the check
        with open(log, "a") as f:
            import traceback

            traceback.print_exc(file=f)
        return None, first_line(error)


def cores() -> int:
    """The CPU cores this process may use."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def device_info(device: torch.device) -> dict:
    """The device, its driver and the software versions, for the JSON and the table's title."""
    info = {
        "device": str(device),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "lightning": _version("lightning"),
        "timm": _version("timm"),
        "kornia": _version("kornia"),
        "cpus": cores(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            name=props.name,
            memory_gib=round(props.total_memory / 2**30, 1),
            capability=f"{props.major}.{props.minor}",
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            driver=_nvidia_driver(),
        )
    else:
        info["name"] = _cpu_name()
    return info


def _nvidia_driver() -> str | None:
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout else None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def command_line() -> str:
    return " ".join([Path(sys.executable).name, *sys.argv])
