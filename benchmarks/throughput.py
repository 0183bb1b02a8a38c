"""Training throughput of our methods: SimCLR and BYOL against a plain loop and lightly, and more.

Images per second of a full training step (two augmented views per image, forward, backward,
optimizer step, BYOL's EMA) on uint8 images held in memory, for three implementations:

- ``lightning``: our ``SimCLR`` / ``BYOL`` LightningModule driven by ``lightning.Trainer.fit``;
- ``plain``: a plain PyTorch loop over the same modules (model, augmentation, loss, optimizer):
  the gap to ``lightning`` is Lightning's overhead;
- ``lightly``: lightly's documented recipe (its transforms on PIL images in DataLoader workers,
  its heads and losses, a torchvision ResNet adapted the same way) in a plain loop.

Each implementation is also timed in parts: the data pipeline alone (loader and augmentation,
no model) and the model step alone (on views made once). Every other image method of
``contrastive.methods`` (``--methods moco_v3,dino,...``) gets the Lightning rows alone, with its
own heads (the papers' ImageNet defaults) and multi-crop where its paper uses it (DINO: 2 global
and 8 local views, SwAV: 2 and 6). Two settings: (a) equal settings,
everything float32; (b) our defaults (bf16-mixed autocast and channels-last where the device
has bf16, else float32 channels-last) against lightly's documented defaults (float32).
Configurations run round-robin, ``--repeats`` times each; the table gives medians.

CPU: ResNet-18 with the 32 px stem, 32 px images. ``--device cuda``: ResNet-50 at 224 px, plus
torch.compile variants, and MFU: the FLOPs of one training step counted by
``torch.utils.flop_counter.FlopCounterMode`` (forward, backward and any momentum encoder's
forward; elementwise work is not counted) against the GPU's bf16 dense peak
(``throughput_specs.PEAK_TFLOPS``, read from the device name; ``--peak-tflops`` overrides).
lightly is never a project dependency: install it in a benchmark venv
(benchmarks/requirements-peers.txt). The parts: ``throughput_specs.py`` (what is trained),
``throughput_ours.py`` (our rows, their clocks, the FLOP count), ``throughput_lightly.py``.

    /tmp/benchvenv/bin/python benchmarks/throughput.py           # both methods, batch 256
    /tmp/benchvenv/bin/python benchmarks/throughput.py --quick   # smoke run, a few minutes
    python benchmarks/throughput.py --quick --skip-lightly       # without lightly
    /tmp/benchvenv/bin/python benchmarks/throughput.py --device cuda --steps 20
    python benchmarks/throughput.py --device cuda --skip-lightly --methods simclr,dino,swav
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import warnings

import torch
from throughput_lightly import lightly_available, lightly_loop
from throughput_ours import Config, our_loader, ours_lightning, ours_plain, training_flops
from throughput_specs import IMAGE_METHODS, Spec, make_images, make_spec, peak_flops

STEP_TIMES = ("pipeline", "model", "e2e")
ROW_SETTINGS = ("a", "b", "b-compile")  # rows are named IMPLEMENTATION-SETTING: plain-b-compile


# ---- settings, the run, the table ---------------------------------------------------------


def device_has_bf16(device: torch.device) -> bool:
    """Fast bf16 on this device: CUDA's check, or the CPU's avx512_bf16 / amx_bf16 flags."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def build_configs(
    spec: Spec, args: argparse.Namespace, bf16: bool, with_lightly: bool
) -> list[Config]:
    """Every row for one method: ours in settings (a) and (b) (and compiled), and lightly.

    The plain loop and lightly exist for SimCLR and BYOL; other methods get the Lightning rows.
    """
    batches = args.steps + 1  # n + 1 ready batches time n steps
    images = make_images(spec, min(batches, 4) * spec.batch)
    ours_workers = args.workers if spec.device.type == "cuda" else 0  # views are made in-process
    loader = our_loader(spec, images, batches, ours_workers)
    wanted = set(args.only) if args.only else None
    settings = [("a", False, False, False), ("b", bf16, True, False)]
    if args.compile:
        settings.append(("b", bf16, True, True))
    configs = []
    for setting, use_bf16, channels_last, compiled in settings:
        for factory, name in ((ours_lightning, "lightning"), (ours_plain, "plain")):
            if name == "plain" and spec.method not in ("simclr", "byol"):
                continue
            full = f"{name}-{setting}" + ("-compile" if compiled else "")
            if wanted is None or full in wanted:
                configs.append(factory(spec, loader, setting, use_bf16, channels_last, compiled))
    with_lightly = with_lightly and spec.method in ("simclr", "byol")
    if with_lightly and (wanted is None or "lightly" in wanted):
        configs.append(lightly_loop(spec, images, batches, args.workers))
    flops = training_flops(spec)
    for config in configs:
        config.flops_per_image = flops
    return configs


def measure(configs: list[Config], steps: int, repeats: int) -> None:
    """Warm every configuration up, then time each kind of each, round-robin, ``repeats`` times."""
    for config in configs:
        config.warmup()
    for _ in range(repeats):
        for config in configs:
            for kind in STEP_TIMES:
                if kind in config.times:
                    config.seconds.setdefault(kind, []).append(config.times[kind](steps))


def _rate(config: Config | None, kind: str, images: int) -> float | None:
    """Median images/s of one kind of timing; ``images`` per timed run."""
    seconds = None if config is None else config.seconds.get(kind)
    return images / statistics.median(seconds) if seconds else None


def _cell(value: float | None, fmt: str, suffix: str = "") -> str:
    return "-" if value is None else format(value, fmt) + suffix


def _rate_cell(value: float | None) -> str:
    return _cell(value, ".1f" if value is not None and value < 100 else ".0f")


def table(spec: Spec, configs: list[Config], steps: int, peak: float | None, note: str) -> str:
    """The rows of one method, then the goals of issue #7 read off them.

    Columns: images/s of the data pipeline alone, the model step alone and end to end (e2e);
    ``pipe %`` and ``model %``: the time of that part alone as a share of the e2e time (they
    add up to more than 100% where loader workers overlap the model); ``vs lightly``: e2e
    against lightly's; ``vs plain``: how much slower Lightning is than the plain loop.
    """
    images = steps * spec.batch
    by_name = {c.name: c for c in configs}
    lightly = _rate(by_name.get("lightly"), "e2e", images)
    head = (
        f"{'setting':<8}{'implementation':<30}{'precision':<26}{'pipeline':>9}{'model':>8}"
        f"{'e2e':>8}{'pipe %':>8}{'model %':>8}{'vs lightly':>11}{'vs plain':>9}"
    )
    lines = [head + (f"{'TFLOP/s':>9}{'MFU':>7}" if peak else "")]
    for config in configs:
        pipe, model, e2e = (_rate(config, kind, images) for kind in STEP_TIMES)
        shares = [None if part is None else 100 * e2e / part for part in (pipe, model)]
        versus = None if lightly is None else e2e / lightly
        plain = _rate(by_name.get(config.name.replace("lightning", "plain")), "e2e", images)
        overhead = None  # % slower than the plain loop
        if config.name.startswith("lightning") and plain is not None:
            overhead = 100 * (plain / e2e - 1)
        line = (
            f"{config.setting:<8}{config.label:<30}{config.precision:<26}"
            f"{_rate_cell(pipe):>9}{_rate_cell(model):>8}{_rate_cell(e2e):>8}"
            f"{_cell(shares[0], '.0f'):>8}{_cell(shares[1], '.0f'):>8}"
            f"{_cell(versus, '.2f', 'x'):>11}{_cell(overhead, '+.1f', '%'):>9}"
        )
        if peak:
            tflops = config.flops_per_image * e2e / 1e12
            line += f"{tflops:>9.1f}{100 * tflops * 1e12 / peak:>6.1f}%"
        lines.append(line)
    if "lightly" not in by_name:
        lines.append(f"{'a+b':<8}{'lightly':<30}{note}")
    goals = []
    for name, goal in (("lightning-a", 1.0), ("lightning-b", 2.0), ("lightning-b-compile", 2.0)):
        e2e = _rate(by_name.get(name), "e2e", images)
        if e2e is not None and lightly is not None:
            met = "met" if e2e / lightly >= goal else "NOT met"
            goals.append(f"{name} {e2e / lightly:.2f}x lightly (goal {goal:.1f}x: {met})")
    for name in ("lightning-a", "lightning-b", "lightning-b-compile"):
        e2e = _rate(by_name.get(name), "e2e", images)
        plain = _rate(by_name.get(name.replace("lightning", "plain")), "e2e", images)
        if e2e is not None and plain is not None:
            overhead = 100 * (plain / e2e - 1)
            met = "met" if overhead <= 3.0 else "NOT met"
            goals.append(f"{name} overhead {overhead:+.1f}% (goal <= 3%: {met})")
    return "\n".join(lines + (["goals: " + "; ".join(goals)] if goals else []))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--methods",
        default="simclr,byol",
        help=f"comma-separated, from: {', '.join(sorted(IMAGE_METHODS))}",
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, help="images per batch (default 256)")
    parser.add_argument(
        "--steps", type=int, help="timed steps per repetition (default: 2 on cpu, 20 on cuda)"
    )
    parser.add_argument("--repeats", type=int, help="round-robin repetitions (default 3)")
    parser.add_argument("--quick", action="store_true", help="smoke run: batch 16, 2 steps, 2x")
    parser.add_argument("--skip-lightly", action="store_true", help="leave lightly's rows out")
    parser.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="lightly's loader workers (its examples use 8; default: that, at most the cores)",
    )
    parser.add_argument("--bf16", choices=["auto", "on", "off"], default="auto")
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="add torch.compile rows to setting (b) (default: on for cuda, off for cpu)",
    )
    parser.add_argument("--peak-tflops", type=float, help="the device's bf16 peak, for MFU")
    parser.add_argument("--only", nargs="+", help="rows to run: lightning-a plain-b lightly ...")
    args = parser.parse_args(argv)
    quick = dict(batch_size=16, steps=2, repeats=2) if args.quick else {}
    # A CPU step at batch 256 takes tens of seconds: two of them average out well enough.
    steps = 2 if args.device == "cpu" else 20
    for key, full in dict(batch_size=256, steps=steps, repeats=3).items():
        if getattr(args, key) is None:
            setattr(args, key, quick.get(key, full))
    if args.steps < 1 or args.repeats < 1 or args.batch_size < 2:
        parser.error("need --steps >= 1, --repeats >= 1 and --batch-size >= 2 (BatchNorm)")
    rows = {f"{impl}-{setting}" for impl in ("lightning", "plain") for setting in ROW_SETTINGS}
    if args.only and (unknown := set(args.only) - rows - {"lightly"}):
        parser.error(f"unknown rows {sorted(unknown)}; expected from {sorted(rows | {'lightly'})}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if unknown := set(methods) - set(IMAGE_METHODS):
        parser.error(f"unknown methods {sorted(unknown)}; expected from {sorted(IMAGE_METHODS)}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here")
    if args.compile is None:
        args.compile = device.type == "cuda"
    bf16 = device_has_bf16(device) if args.bf16 == "auto" else args.bf16 == "on"
    with_lightly = not args.skip_lightly and lightly_available()
    if not args.skip_lightly and not with_lightly:
        parser.error(
            "lightly is not importable: run in the benchmark venv (BENCHMARKS.md, "
            "benchmarks/requirements-peers.txt) or pass --skip-lightly"
        )
    note = "skipped (--skip-lightly)" if args.skip_lightly else "not selected (--only)"
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*to_tensor.*deprecated.*")

    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name(device)}"
    else:
        where = f"cpu, {torch.get_num_threads()} threads, bf16 {'yes' if bf16 else 'no'}"
    peak = peak_flops(device, args.peak_tflops)
    for method in methods:
        spec = make_spec(method, device, args.batch_size)
        configs = build_configs(spec, args, bf16, with_lightly)
        measure(configs, args.steps, args.repeats)
        stem = " (32 px stem)" if spec.small_stem else ""
        views = f"2 + {spec.local_views} local" if spec.local_views else "2"
        print(
            f"\n{method} training throughput, images/s ({views} views each): "
            f"{spec.backbone}{stem}, {spec.size} px, batch {spec.batch}; {where}; "
            f"torch {torch.__version__}; lightly loader workers {args.workers}\n"
            f"medians of {args.repeats} round-robin repeats of {args.steps} steps"
            + (f"; MFU against {peak / 1e12:.0f} TFLOP/s bf16 dense" if peak else "")
        )
        print(table(spec, configs, args.steps, peak, note))


if __name__ == "__main__":
    main()
