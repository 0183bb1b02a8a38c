"""The GPU path in one command (issue #21): smoke, throughput, data pipeline, many negatives and
a real training run; prints one table, writes a JSON, exits 1 if any case failed.

    python benchmarks/gpu_check.py --fashion-mnist data/fashion-mnist --out gpu_check.json
    python benchmarks/gpu_check.py --device cpu --quick      # every part, tiny (the suite runs it)

Parts (``--parts``, in this order; each in ``benchmarks/gpu/``):

- ``smoke``: a few steps of the real ``contrastive fit`` and ``test`` (``contrastive.cli.main``)
  per case, bf16-mixed: every image method's shipped config, CLIP with its text tower (and the
  gradient cache and queues), Conditional, SimCLR's queue, gradient cache, tiled loss and
  multi-crop, and JPEGs decoded on the device. An error is a FAIL row with its first line.
- ``throughput``: every image method of ``contrastive.methods``, ResNet-50 at 224 px, batch
  256, two views (multi-crop for DINO and SwAV), bf16-mixed, channels-last, in a Lightning fit;
  images per second and MFU (``FlopCounterMode`` FLOPs against ``--peak-tflops`` or the bf16
  peak read from the device name). Then SimCLR, BYOL and MoCo v3 with ``torch.compile``, each
  while the budget allows.
- ``pipeline``: ``ImageFolderDataModule`` on generated JPEGs (256-1024 px), a worker per core,
  and with ``decode_on_device``, against the model-only rate (goal: at least 90%).
- ``negatives``: the tiled loss at N = 16,384 to 131,072 (d = 512) against the dense loss and
  open_clip's ``ClipLoss``: peak memory and time (goals: within 2x of the inputs' size, and
  within 1.5x of the dense loss's time where it fits).
- ``fashion``: SimCLR and BYOL on Fashion-MNIST, each for what is left of the budget up to
  ``--fashion-seconds`` (Lightning's ``max_time``), then kNN and the linear probe against the
  raw pixels (kNN 0.862, linear 0.848; goal: linear probe at least 0.90).

Time (an estimate: nothing here has run on a GPU yet). The default run is held to
``--budget-minutes`` (8): no case starts once the budget is spent (its row says so), so the run
ends at most one case past it, with its table and JSON. On an H100/H200 class machine with 16
cores we expect smoke to take about 2 minutes (19 cases, each a few seconds of start-up: 1.6
minutes on a 2-core CPU at the configs' sizes), throughput about 2 (11 methods: a FLOP count,
a warm-up and 10 timed steps of ResNet-50 at batch 256 each), pipeline about 1 (two decoders,
three passes over 16,384 JPEGs each) and negatives under 1. A compiled row runs only while
more than 90 s would remain beyond the Fashion-MNIST part's minimum (two fits of 60 s and their
probes), so likely none by default; the Fashion-MNIST fits share what is left (some 45 s of
training each), each at most ``--fashion-seconds``. Their full 3 minutes each: ``--parts
fashion`` as a command of its own (about 7 minutes); the compiled rows: ``--parts throughput``
(about 6). ``--quick`` shrinks everything (tiny images and models, 2 steps, N = 1,024, a handful
of JPEGs, 6 Fashion-MNIST steps and a small probe bank) and leaves ``torch.compile`` out: under
a minute on a 2-core CPU.

The JSON (``--out``; the log of every case beside it, ``.log``)::

    command, started (ISO time), seconds, quick, budget_seconds, peak_tflops, failures
    device: device, name, memory_gib, capability, driver, cuda, cudnn, python, torch,
            torchvision, lightning, timm, kornia, cpus
    rows: one per table line: part, case, status ("ok", "FAIL", "skipped", or a goal's
          "met" / "NOT met"), result (the table's words), and the part's figures:
      smoke:      seconds
      throughput: method, views ("2x224+8x96"), backbone, batch, precision, compiled, steps,
                  images_per_second (source images, all their views), warmup_seconds (the
                  compile's, when compiled), flops_per_image, tflops, mfu (0-1)
      pipeline:   the folder's unique, files, mean_kib, seconds; per decoder
                  decode_on_device, workers, image_size, batch, loader_images_per_second,
                  fit_clock_images_per_second, e2e_images_per_second (the smaller two),
                  e2e_over_model_only
      negatives:  n, dim, loss, inputs_gb, peak_gb, seconds, loss_value, peak_over_inputs
      fashion:    method, seconds (the fit's limit), seconds_per_step (calibrated),
                  planned_epochs (max_epochs), steps, epochs (steps over an epoch's),
                  fit_seconds, knn, linear (top-1), raw_knn, raw_linear
      goal:       the ratio or rate held against the goal
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # a bare checkout on a GPU machine: the package is not installed
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from gpu import negatives, pipeline, smoke, speed  # noqa: E402
from gpu.common import FAIL, SKIPPED, Budget, Row, command_line, device_info  # noqa: E402
from throughput_specs import peak_flops  # noqa: E402

PARTS = ("smoke", "throughput", "pipeline", "negatives", "fashion")
COMPILE_SECONDS = 90  # a compiled row: compiling ResNet-50's step, then timing it
FASHION_MINIMUM = 2 * (60 + 30)  # two fits of 60 s, each with its probes
SIMCLR_GOAL = 2500  # two-view SimCLR images/s, ResNet-50 at 224 px, one H100/H200 class GPU


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--quick", action="store_true", help="every part, tiny")
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated, from these")
    parser.add_argument("--out", type=Path, help="the JSON (the cases' log beside it, .log)")
    parser.add_argument("--budget-minutes", type=float, default=8.0)
    parser.add_argument("--peak-tflops", type=float, help="the device's bf16 dense peak")
    parser.add_argument("--batch-size", type=int, help="throughput and pipeline (default 256)")
    parser.add_argument("--steps", type=int, help="timed steps per throughput row (default 10)")
    parser.add_argument("--sizes", type=int, nargs="+", help="negatives: N (images)")
    parser.add_argument("--tile", type=int, help="negatives: the tiled loss's tile (4096)")
    parser.add_argument("--fashion-mnist", type=Path, help="folder of the four IDX .gz files")
    parser.add_argument("--fashion-seconds", type=float, default=180.0, help="per method, most")
    args = parser.parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if unknown := set(args.parts) - set(PARTS):
        parser.error(f"unknown parts {sorted(unknown)}; expected from {', '.join(PARTS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here (--device cpu --quick runs on the CPU)")
    quick = dict(batch_size=8, steps=2, sizes=[1024], tile=256)
    full = dict(batch_size=256, steps=10, sizes=[16384, 32768, 65536, 131072], tile=4096)
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if "fashion" in args.parts and args.fashion_mnist is None:
        parser.error("the fashion part needs --fashion-mnist DIR (or leave it out of --parts)")
    return args


def table(rows: list[Row], title: str) -> str:
    width = max([len(r.case) for r in rows] + [20])
    lines = [title, f"{'part':<11}{'status':<9}{'case':<{width + 2}}result"]
    for r in rows:
        lines.append(f"{r.part:<11}{r.status:<9}{r.case:<{width + 2}}{r.result}")
    return "\n".join(lines)


def simclr_goal(rows: list[Row]) -> list[Row]:
    rates = [r.data["images_per_second"] for r in rows
             if r.part == "throughput" and r.data.get("method") == "simclr"]  # fmt: skip
    if not rates:
        return []
    best = max(rates)
    case = f"SimCLR at least {SIMCLR_GOAL:,} img/s (ResNet-50, 224 px, two views)"
    text = f"{best:,.0f} img/s ({best / SIMCLR_GOAL:.0%} of the goal)"
    status = "met" if best >= SIMCLR_GOAL else "NOT met"
    return [Row("goal", case, text, status, {"images_per_second": best})]


def progress(message: str) -> None:
    print(f"[gpu_check] {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace, workdir: Path, log: Path) -> list[Row]:
    device = torch.device(args.device)
    budget = Budget(args.budget_minutes * 60)
    peak = peak_flops(device, args.peak_tflops)
    rows: list[Row] = []
    flops: dict[str, float] = {}
    measure = dict(device=device, quick=args.quick, steps=args.steps, batch=args.batch_size,
                   peak=peak, log=log, flops=flops, budget=budget)  # fmt: skip
    if "pipeline" in args.parts:  # first: its writer processes fork before CUDA starts
        progress("pipeline: writing the JPEGs")
        jpegs, written = pipeline.prepare(workdir, args.batch_size, args.quick)
    if "smoke" in args.parts:
        progress("smoke: fit and test per case")
        rows += smoke.run(device, args.quick, workdir, log, budget)
    if "throughput" in args.parts:
        progress("throughput: every image method, eager")
        rows += speed.run(speed.method_order(args.quick), compiled=False, **measure)
    if "pipeline" in args.parts:
        progress("pipeline: JPEGs, loader and fit")
        simclr = speed.spec_for("simclr", device, args.batch_size, args.quick)
        model = [
            r.data["images_per_second"]
            for r in rows
            if r.part == "throughput" and r.data.get("method") == "simclr"
        ]
        if not model:
            rows += speed.run(["simclr"], compiled=False, **measure)
            model = [rows[-1].data.get("images_per_second")]
        rows += [written, *pipeline.run(jpegs, simclr, model[0], log, budget)]
    if "negatives" in args.parts:
        progress("negatives: the tiled loss against the dense loss and ClipLoss")
        rows += negatives.run(args.sizes, 512, args.tile, device, budget)
    if "throughput" in args.parts:
        reserve = FASHION_MINIMUM if "fashion" in args.parts else 0
        for method in speed.MAIN:
            if args.quick or budget.left() - reserve < COMPILE_SECONDS:
                why = "--quick" if args.quick else f"budget: {budget.left():.0f} s left"
                rows.append(Row("throughput", f"{method} compiled", why, SKIPPED))
                continue
            progress(f"throughput: {method} with torch.compile")
            rows += speed.run([method], compiled=True, **measure)
    rows += simclr_goal(rows)
    if "fashion" in args.parts:
        from gpu import fashion

        progress("fashion: SimCLR and BYOL on Fashion-MNIST, then kNN and linear probes")
        rows += fashion.run(args.fashion_mnist, device, args.quick, budget, args.fashion_seconds,
                            workdir, log)  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    started = datetime.datetime.now().astimezone()
    start = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    log = args.out.with_suffix(".log") if args.out else workdir / "gpu_check.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    try:
        rows = run(args, workdir, log)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    device = torch.device(args.device)
    info = device_info(device)
    failures = sum(r.status == FAIL for r in rows)
    seconds = time.perf_counter() - start
    title = (
        f"GPU check: {info['name']}"
        + (
            f", driver {info.get('driver')}, CUDA {info.get('cuda')}"
            if device.type == "cuda"
            else ""
        )
        + f"; torch {info['torch']}; {seconds / 60:.1f} min"
        + ("; --quick: smoke-sized, no figure to record" if args.quick else "")
        + f"\n{command_line()}"
    )
    print(table(rows, title))
    print(f"{failures} failed" if failures else "no failures")
    if args.out:
        report = {
            "command": command_line(),
            "started": started.isoformat(timespec="seconds"),
            "seconds": round(seconds, 1),
            "quick": args.quick,
            "budget_seconds": args.budget_minutes * 60,
            "peak_tflops": (peak_flops(device, args.peak_tflops) or 0) / 1e12 or None,
            "failures": failures,
            "device": info,
            "rows": [{"part": r.part, **r.as_json()} for r in rows],
        }  # fmt: skip
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
