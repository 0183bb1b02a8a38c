"""The precision a run takes when it names none: the faster one for this model on this device.

The candidates are ``32-true`` and, where the hardware has bf16 arithmetic, ``bf16-mixed``: a
CUDA GPU that supports it, or a CPU with bf16 instructions (``avx512_bf16`` or ``amx_bf16`` in
``/proc/cpuinfo``; elsewhere bf16 is emulated, and slower). Which one is faster depends on the
model: on a CPU with ``avx512_bf16`` bf16 autocast made a ResNet-18 step faster and the shapes
configs' small CNN several times slower (BENCHMARKS.md). So with two candidates a few
forward-backward steps of the model's backbone are timed in each, on a batch of its training
views (synthetic images of the data's size), within a budget of about a second per candidate,
and the faster median wins. The result is cached per device and model signature in
``$XDG_CACHE_HOME/contrastive/precision.json`` (``~/.cache`` by default): a later run, or the
``test`` of the same model, takes it without measuring. A precision the user names is never
replaced (:class:`~contrastive.cli.ContrastiveCLI` calls this only when none is set).
"""

from __future__ import annotations

import copy
import json
import os
import platform
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from contrastive.files import atomic_writer

FLOAT32, BF16 = "32-true", "bf16-mixed"
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# Pixels per timed step: 256 images at 32 px, 5 at 224 px (a step of a ResNet-18 on a CPU in
# about 0.1-0.2 s), never more images than the data's batch.
TIMING_PIXELS = 256 * 32 * 32
WARMUP = 1  # untimed rounds first
ROUNDS = 5  # timed rounds at most
BUDGET_S = 2.0  # seconds of timed rounds, after which no new round starts
IMAGE_SIZE = 224  # the images' side when neither the data nor the weights say


@dataclass(frozen=True)
class Choice:
    """The precision chosen, and why."""

    precision: str
    seconds: dict[str, float] = field(default_factory=dict)  # median per step, by candidate
    source: str = "measured"  # "measured", "cached", "only candidate" or "not measured"

    def describe(self, device: str) -> str:
        """One line for the log: the choice, and the timings it was made from."""
        if not self.seconds:
            return f"precision: {self.precision} ({self.source} on {device})"
        times = ", ".join(f"{p} {1000 * s:.1f} ms" for p, s in self.seconds.items())
        return f"precision: {self.precision} ({self.source} on {device}: {times} per step)"


def cpu_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU has bf16 instructions (read from ``cpuinfo``; ``False`` without it)."""
    try:
        flags = Path(cpuinfo).read_text(errors="replace").split()
    except OSError:
        return False
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def candidates(device: torch.device) -> list[str]:
    """The precisions worth timing on ``device``: float32, and bf16 where it is native."""
    if device.type == "cuda":
        return [FLOAT32, BF16] if torch.cuda.is_bf16_supported() else [FLOAT32]
    if device.type == "cpu":
        return [FLOAT32, BF16] if cpu_bf16() else [FLOAT32]
    return [FLOAT32]


def device_for(accelerator: object) -> torch.device:
    """The device a run on ``accelerator`` (the Trainer's argument) computes on."""
    on_gpu = accelerator in (None, "auto", "gpu", "cuda")
    return torch.device("cuda" if on_gpu and torch.cuda.is_available() else "cpu")


def device_name(device: torch.device) -> str:
    """What a measurement depends on besides the model: the chip, the threads, torch."""
    if device.type == "cuda":
        chip = torch.cuda.get_device_name(device)
    else:
        chip = _cpu_model() or platform.processor() or "cpu"
        chip = f"{chip}, {torch.get_num_threads()} threads"
    return f"{device.type}: {chip}, torch {torch.__version__}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cache_file() -> Path:
    """``$XDG_CACHE_HOME/contrastive/precision.json``, ``~/.cache`` when the variable is unset."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "contrastive" / "precision.json"


def model_signature(model: nn.Module, views: Tensor) -> str:
    """What a measurement depends on in the model: the method, its backbone (name and
    arguments, weights aside), the views' shape and memory format, a frozen backbone."""
    hparams = getattr(model, "hparams", {})
    kwargs = {
        k: v
        for k, v in (hparams.get("backbone_kwargs") or {}).items()
        if k not in ("pretrained", "checkpoint")
    }
    frozen = not any(p.requires_grad for p in model.backbone.parameters())
    return json.dumps(
        [
            type(model).__qualname__,
            hparams.get("backbone"),
            kwargs,
            list(views.shape),
            bool(getattr(model, "channels_last", False)),
            frozen,
        ],
        default=repr,
    )


def time_steps(
    steps: dict[str, Callable[[], None]],
    sync: Callable[[], None],
    timer: Callable[[], float] = time.perf_counter,
    rounds: int = ROUNDS,
    budget_s: float = BUDGET_S,
) -> dict[str, float]:
    """The best seconds of each step over up to ``rounds`` rounds that run every step once,
    alternately, after :data:`WARMUP` rounds that are not timed; after two rounds, none starts
    once the timed rounds took ``budget_s`` seconds.

    Alternating rounds share whatever else the machine is doing between the steps; the best
    time is the one least disturbed by it (a busy shared CPU stretched single steps 100-fold).
    """
    for _ in range(WARMUP):  # allocation, kernel selection, the thread pool's start
        for step in steps.values():
            step()
            sync()
    times: dict[str, list[float]] = {name: [] for name in steps}
    spent = 0.0
    for done in range(rounds):
        if done >= 2 and spent >= budget_s:
            break
        for name, step in steps.items():
            start = timer()
            step()
            sync()
            times[name].append(timer() - start)
            spent += times[name][-1]
    return {name: min(t) for name, t in times.items()}


def measure(
    model: nn.Module,
    views: Tensor,
    precisions: list[str],
    timer: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """The best seconds of one forward-backward step of a copy of ``model.backbone`` on
    ``views`` in each precision (the model itself, its BatchNorm statistics included, is
    untouched)."""
    device = views.device
    backbone = copy.deepcopy(model.backbone).to(device).train()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step_in(precision: str) -> Callable[[], None]:
        bf16 = precision == BF16

        def step() -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext():
                features = backbone(views)  # (B, D)
            if features.requires_grad:  # a frozen backbone runs forward only
                features.float().square().mean().backward()
            backbone.zero_grad(set_to_none=True)

        return step

    return time_steps({p: step_in(p) for p in precisions}, sync, timer)


def training_views(model: nn.Module, image_size: int, batch_size: int, device) -> Tensor:
    """A batch of the model's training views, on ``device``: its ``augment`` (crop size
    included) of seeded uint8 images of the data's size, in its memory format."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(
        0, 256, (batch_size, 3, image_size, image_size), generator=generator, dtype=torch.uint8
    )
    augment = copy.deepcopy(model.augment).to(device)
    with torch.random.fork_rng(devices=[]):  # the run's random stream stays as seeded
        views = augment(images.to(device))
    if getattr(model, "channels_last", False):
        views = views.contiguous(memory_format=torch.channels_last)
    return views


def choose_precision(
    model: nn.Module,
    device: torch.device,
    image_size: int | None,
    batch_size: int,
    timer: Callable[[], float] = time.perf_counter,
) -> Choice:
    """The faster precision for ``model`` on ``device``: measured once, then cached.

    Args:
        model: a method with ``backbone`` and ``augment``.
        device: where the run computes.
        image_size: the side of the data's images; ``None``: :data:`IMAGE_SIZE`.
        batch_size: the data's batch size (at most :data:`TIMING_PIXELS` pixels are timed).
        timer: the clock (a fake one in tests).
    """
    options = candidates(device)
    if len(options) == 1:
        return Choice(options[0], source="the only candidate")
    size = image_size or IMAGE_SIZE
    images = max(2, min(batch_size, TIMING_PIXELS // size**2))
    views = training_views(model, size, images, device)
    key = f"{device_name(device)} | {model_signature(model, views)}"
    path = cache_file()
    cache = _read(path)
    if key in cache:
        entry = cache[key]
        return Choice(entry["precision"], dict(entry["seconds"]), "cached")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Processes started together (torchrun) would each time and could disagree: all take
        # the same rule instead.
        return Choice(BF16 if device.type == "cuda" else FLOAT32, source="not measured")
    seconds = measure(model, views, options, timer)
    precision = min(seconds, key=seconds.get)
    cache[key] = {"precision": precision, "seconds": seconds}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_writer(path) as f:
            f.write(json.dumps(cache, indent=1, sort_keys=True) + "\n")
    except OSError:
        pass  # a cache that cannot be written: measured again next time
    return Choice(precision, seconds, "measured")


def _read(path: Path) -> dict:
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or unreadable: measured again, then rewritten
        return {}
    if not isinstance(cache, dict):
        return {}
    return {
        k: v
        for k, v in cache.items()
        if isinstance(v, dict)
        and v.get("precision") in (FLOAT32, BF16)
        and isinstance(v.get("seconds"), dict)
    }
