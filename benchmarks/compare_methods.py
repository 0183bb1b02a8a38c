"""Every image method on one backbone, one data set and one budget: the comparison tables.

For each method and data set this trains the method's shipped config (``configs/<method>.yaml``,
with the data set's overrides), tests it, and writes one result file,
``<out>/<dataset>/<method>.json``: the test metrics the method logs (kNN per attribute, against
the same backbone at random init; the linear probe and RankMe where the evaluation logs them),
seconds per training epoch (validation excluded), images per second, and the command that made
it. A result file that exists is skipped, so the whole table (hours on 2 CPU cores) is resumed
by running the same command again, and can span sessions; commit each result as it lands.
``--table`` prints the markdown table of the results present.

    python benchmarks/compare_methods.py --dataset shapes                  # every method
    python benchmarks/compare_methods.py --dataset shapes --methods simclr dino
    python benchmarks/compare_methods.py --dataset fashion_mnist --methods vicreg
    python benchmarks/compare_methods.py --dataset shapes --table
    python benchmarks/compare_methods.py --dataset fashion_mnist --methods simclr --out /tmp/w32 \
        '--model.init_args.backbone_kwargs={width: 32}'    # a recipe change, over every run

``--dataset shapes`` runs the configs as shipped (8 epochs of 8192 images on the small CNN).
``--dataset fashion_mnist`` trains each method's config with ``benchmarks/fashion_cpu.yaml`` laid
over it (Fashion-MNIST through ``VisionSetDataModule``; crops, flips and brightness/contrast as the
views) for the same wall-clock budget, ``--minutes`` (20 by default; on shapes too when given,
with another ``--out``): the first steps are timed, ``trainer.max_epochs`` is set to the epochs
that fit (so that the schedule ends with the run) and ``trainer.max_time`` stops it. ``--quick``
shrinks any run to a few steps (a smoke test of the runner; its results go to ``<out>-quick``).
Two reference rows: ``pixels``, kNN and the linear probe on the raw pixels of the same bank and
queries (``benchmarks/fashion_mnist_pixels.py``), and ``supervised``: SupCon with the data's class
labels, the same backbone and budget (the random-init row of every method is in its own result,
``test/random/...``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from contrastive.cli import ContrastiveCLI  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the benchmarks' own modules

from fashion_mnist_pixels import raw_pixel_results  # noqa: E402
from gpu.fashion import calibrate, fit_budget  # noqa: E402

METHODS = (
    "simclr",
    "supcon",
    "byol",
    "moco_v2",
    "moco_v3",
    "dino",
    "swav",
    "vicreg",
    "barlow_twins",
    "simsiam",
    "nnclr",
)
# Real images: the shapes generator's views do not exist, the views are crops and flips; each
# method trains for the same wall-clock budget (shapes: the configs' epochs as shipped).
DATASETS = {
    "shapes": [],
    "fashion_mnist": [f"--config={HERE / 'fashion_cpu.yaml'}"],
}
BUDGETED = {"fashion_mnist": 20.0}  # minutes, unless --minutes says otherwise
LABEL = {"shapes": "shape", "fashion_mnist": "class"}  # SupCon's and the supervised row's
CALIBRATION_STEPS = 20
QUICK = [
    "--trainer.max_steps=3",
    "--trainer.limit_val_batches=0",
    "--trainer.limit_test_batches=2",
    "--data.num_bank=64",
]


class EpochTimer(Callback):
    """Wall seconds of each training epoch, validation excluded, and the images it trained on."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.images = 0
        self._start: float | None = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if isinstance(batch, dict) and "image" in batch:
            self.images += len(batch["image"])

    def _stop(self) -> None:
        if self._start is not None:
            self.seconds.append(time.perf_counter() - self._start)
            self._start = None

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.training:  # validation inside a training epoch: the epoch's compute ends
            self._stop()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._stop()


def _args_for(method: str, dataset: str, quick: bool) -> list[str]:
    config = REPO / "configs" / f"{'supcon' if method == 'supervised' else method}.yaml"
    args = [f"--config={config}", *DATASETS[dataset]]
    if method in ("supcon", "supervised"):
        args.append(f"--model.label={LABEL[dataset]}")
    if method == "supervised":  # the same run, its logs under their own name
        args.append("--trainer.logger.init_args.name=supervised")
    return args + (QUICK if quick else [])


def _budget(args: list[str], minutes: float, quick: bool) -> list[str]:
    """The flags that fit the fit of ``args`` into ``minutes`` of wall clock: its first steps
    timed (benchmarks/gpu/fashion.py's calibration), the epochs that fit, and the stop."""
    step, per_epoch = calibrate(args, torch.device("cpu"), 3 if quick else CALIBRATION_STEPS)
    epochs, limit = fit_budget(minutes * 60, step, per_epoch, quick)
    return [f"--trainer.max_epochs={epochs}", f"--trainer.max_time={limit}"]


def run_method(method: str, dataset: str, out: Path, args) -> dict:
    """Train and test one method; the result dict written to its JSON file."""
    run_root = out / dataset / "runs"
    common = _args_for(method, dataset, args.quick) + args.overrides
    if args.epochs is not None:
        common.append(f"--trainer.max_epochs={args.epochs}")
    elif args.minutes is not None:
        common += _budget(common, args.minutes, args.quick)
    logger = [f"--trainer.logger.init_args.save_dir={run_root}"]
    timer = EpochTimer()
    command = ["contrastive", "fit", *common, *logger]
    fit = ContrastiveCLI(args=[*common, *logger], run=False)
    fit.trainer.callbacks.append(timer)
    start = time.perf_counter()
    fit.trainer.fit(fit.model, fit.datamodule)
    fit_seconds = time.perf_counter() - start
    checkpoint = fit.trainer.checkpoint_callback.last_model_path
    test = ContrastiveCLI(args=["test", *common, *logger, f"--ckpt_path={checkpoint}"])
    metrics = {
        k: float(v) for k, v in test.trainer.callback_metrics.items() if k.startswith("test")
    }
    test_command = ["contrastive", "test", *common, *logger, f"--ckpt_path={checkpoint}"]
    return {
        "method": method,
        "dataset": dataset,
        "command": [a.replace(f"{REPO}/", "") for a in command],  # from the repository's root
        "test_command": [a.replace(f"{REPO}/", "") for a in test_command],
        "metrics": metrics,
        "seconds_per_epoch": sum(timer.seconds) / max(len(timer.seconds), 1),
        "images_per_second": timer.images / max(sum(timer.seconds), 1e-9),
        "fit_seconds": fit_seconds,
        "epochs": len(timer.seconds),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def run_pixels(dataset: str, quick: bool, overrides: list[str]) -> dict:
    """The evaluation layer's kNN and linear probe on the raw pixels (standardised with the
    bank's statistics) of the data module's bank and queries."""
    cli = ContrastiveCLI(args=_args_for("simclr", dataset, quick) + overrides, run=False)
    metrics = {k: float(v) for k, v in raw_pixel_results(cli.datamodule).items()}
    command = ["python", "benchmarks/compare_methods.py", "--dataset", dataset, "--methods"]
    return {"method": "pixels", "dataset": dataset, "command": [*command, "pixels"],
            "metrics": metrics}  # fmt: skip


def _cell(metrics: dict, kind: str, attribute: str) -> str:
    """``kNN / linear`` of one attribute under ``kind`` (``test`` or ``test/random``)."""
    found = [metrics.get(f"{kind}/{probe}/{attribute}") for probe in ("knn", "linear")]
    return " / ".join("" if v is None else f"{v:.3f}" for v in found)


def table(out: Path, dataset: str) -> str:
    """The markdown table of the results present: kNN / linear probe per attribute, RankMe,
    epochs trained, seconds per epoch and images per second per method; then the reference
    rows: the same backbone at random init (from the first result, the same for every method:
    one architecture, one seed) and the raw pixels."""
    results = [json.loads(p.read_text()) for p in sorted((out / dataset).glob("*.json"))]
    if not results:
        return f"no results under {out / dataset}"
    keys = [k for r in results for k in r["metrics"]]  # in the order the data names them
    attributes = list(dict.fromkeys(k.split("/")[-1] for k in keys if "/knn/" in k))
    header = ["method", *attributes, "RankMe (centred)", "epochs", "s/epoch", "img/s"]
    rows = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    no_figures = " |" * (len(header) - len(attributes))  # a reference row's empty columns
    order = {m: i for i, m in enumerate([*METHODS, "supervised", "pixels"])}
    trained = sorted((r for r in results if "epochs" in r), key=lambda r: order[r["method"]])
    for r in trained:
        m = r["metrics"]
        rankme = " ".join(
            f"{m[k]:.1f}" if i == 0 else f"({m[k]:.1f})"
            for i, k in enumerate(("test/rankme", "test/centred_rankme"))
            if k in m
        )  # as published (centred: what the collapse warning reads)
        speed = [str(r["epochs"]), f"{r['seconds_per_epoch']:.1f}", f"{r['images_per_second']:.0f}"]
        cells = [_cell(m, "test", a) for a in attributes]
        rows.append("| " + " | ".join([r["method"], *cells, rankme, *speed]) + " |")
    if trained:
        cells = [_cell(trained[0]["metrics"], "test/random", a) for a in attributes]
        rows.append("| random init | " + " | ".join(cells) + no_figures)
    for r in results:
        if r["method"] == "pixels":
            cells = [_cell(r["metrics"], "test", a) for a in attributes]
            rows.append("| raw pixels | " + " | ".join(cells) + no_figures)
    return (
        "\n".join(rows) + "\n\nEach cell: kNN / linear probe, test split. Commands: the JSON files."
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="shapes")
    rows = [*METHODS, "supervised", "pixels"]
    parser.add_argument("--methods", nargs="+", help="rows to run (default: every one)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "methods")
    parser.add_argument("--epochs", type=int, help="override every config's max_epochs")
    parser.add_argument("--minutes", type=float, help="wall-clock budget of each fit")
    parser.add_argument("--quick", action="store_true", help="a few steps per run (smoke test)")
    parser.add_argument("--table", action="store_true", help="print the table of the results")
    args, args.overrides = parser.parse_known_args(argv)
    if any(not a.startswith(("--model.", "--trainer.", "--data.")) for a in args.overrides):
        parser.error(f"unrecognised arguments: {' '.join(args.overrides)}")
    out = args.out.with_name(args.out.name + "-quick") if args.quick else args.out
    if args.dataset != "shapes" and not args.table:
        from contrastive.datamodules.vision_sets import SPECS

        if args.dataset not in SPECS:
            parser.error(f"VisionSetDataModule does not offer {args.dataset} yet")
    if args.table:
        print(table(out, args.dataset))
        return
    if args.minutes is None:
        args.minutes = BUDGETED.get(args.dataset)
    if args.methods is None:  # one labelled row: SupCon's on shapes, `supervised` (SupCon) else
        labelled = [m for m in rows if m != "supcon"] if args.dataset in BUDGETED else None
        args.methods = labelled or [*METHODS, "pixels"]
    unknown = set(args.methods) - set(rows)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {rows}")
    for method in args.methods:
        path = out / args.dataset / f"{method}.json"
        if path.exists():
            print(f"{path}: present, skipped")
            continue
        torch.manual_seed(0)
        if method == "pixels":
            result = run_pixels(args.dataset, args.quick, args.overrides)
        else:
            result = run_method(method, args.dataset, out, args)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".tmp").write_text(json.dumps(result, indent=1))
        path.with_suffix(".tmp").replace(path)  # whole files only: a stopped run leaves none
        print(f"{path}: written")


if __name__ == "__main__":
    main()
