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

``--dataset shapes`` runs the configs as shipped (8 epochs of 8192 images on the small CNN).
``--dataset fashion_mnist`` trains on Fashion-MNIST through ``VisionSetDataModule`` (when the data
module offers it) with crops and flips at 28 px and an epoch budget per method (``--epochs``).
``--quick`` shrinks any run to a few steps (a smoke test of the runner; its results go to
``<out>-quick``). ``pixels`` is a reference row: kNN on the raw pixels of the same bank and queries.
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
# Real images: the shapes generator's views do not exist, the views are crops and flips.
DATASETS = {
    "shapes": [],
    "fashion_mnist": [
        "--data=VisionSetDataModule",
        "--data.name=fashion_mnist",
        "--data.root=data",
        "--data.batch_size=128",
        "--data.num_workers=2",
        "--model.augment.init_args.crop_scale=[0.3, 1.0]",
        "--model.augment.init_args.size=28",
        "--model.label=class",
    ],
}
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


def _args_for(method: str, dataset: str, epochs: int | None, quick: bool) -> list[str]:
    config = REPO / "configs" / f"{method}.yaml"
    args = [f"--config={config}", *DATASETS[dataset]]
    if method != "supcon":  # the label flag is SupCon's
        args = [a for a in args if not a.startswith("--model.label")]
    if epochs is not None:
        args.append(f"--trainer.max_epochs={epochs}")
    return args + (QUICK if quick else [])


def run_method(method: str, dataset: str, out: Path, epochs: int | None, quick: bool) -> dict:
    """Train and test one method; the result dict written to its JSON file."""
    run_root = out / dataset / "runs"
    common = _args_for(method, dataset, epochs, quick)
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
    return {
        "method": method,
        "dataset": dataset,
        "command": command,
        "test_command": ["contrastive", "test", *common, *logger, f"--ckpt_path={checkpoint}"],
        "metrics": metrics,
        "seconds_per_epoch": sum(timer.seconds) / max(len(timer.seconds), 1),
        "images_per_second": timer.images / max(sum(timer.seconds), 1e-9),
        "fit_seconds": fit_seconds,
        "epochs": len(timer.seconds),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def run_pixels(dataset: str, quick: bool) -> dict:
    """kNN on raw pixels (flattened, standardised per pixel with the bank's mean and std, as
    benchmarks/fashion_mnist_pixels.py does) of the data module's bank and queries."""
    from contrastive.evaluation.knn import KNNAccuracy

    args = _args_for("simclr", dataset, None, quick)
    cli = ContrastiveCLI(args=args, run=False)
    data = cli.datamodule
    data.setup("test")
    names = list(data.num_classes)
    knn = KNNAccuracy(list(data.num_classes.values()))
    bank, query = data.test_dataloader()
    rows = {}
    for name, loader in (("bank", bank), ("query", query)):
        batches = list(loader)
        pixels = torch.cat([b["image"].flatten(1).float() / 255 for b in batches])  # (N, C*H*W)
        labels = torch.cat([torch.stack([b["labels"][a] for a in names], 1) for b in batches])
        rows[name] = pixels, labels  # (N, A) labels
    mean, std = rows["bank"][0].mean(dim=0), rows["bank"][0].std(dim=0)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    knn.update_bank((rows["bank"][0] - mean) / std, rows["bank"][1])
    knn.update((rows["query"][0] - mean) / std, rows["query"][1])
    accuracy = knn.compute().reshape(-1)
    metrics = {f"test/knn/{a}": float(v) for a, v in zip(names, accuracy, strict=True)}
    command = [
        "python",
        "benchmarks/compare_methods.py",
        "--dataset",
        dataset,
        "--methods",
        "pixels",
    ]
    return {"method": "pixels", "dataset": dataset, "command": command, "metrics": metrics}


def table(out: Path, dataset: str) -> str:
    """The markdown table of the results present: kNN per attribute (trained, and random init),
    the other test metrics logged, seconds per epoch and images per second."""
    results = [json.loads(p.read_text()) for p in sorted((out / dataset).glob("*.json"))]
    if not results:
        return f"no results under {out / dataset}"
    keys = [k for r in results for k in r["metrics"]]  # in the order the data names them
    attributes = list(dict.fromkeys(k.split("/")[-1] for k in keys if "/knn/" in k))
    extra = sorted(
        {k for k in keys if "/knn/" not in k and not k.startswith(("test/random/", "test/chance/"))}
    )
    header = ["method", *[f"kNN {a}" for a in attributes], *extra, "s/epoch", "img/s"]
    rows = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for r in results:
        m = r["metrics"]
        knn = [
            f"{m[f'test/knn/{a}']:.3f}" + (
                f" ({m[f'test/random/knn/{a}']:.3f})" if f"test/random/knn/{a}" in m else ""
            ) if f"test/knn/{a}" in m else ""
            for a in attributes
        ]  # fmt: skip
        others = [f"{m[k]:.3f}" if k in m else "" for k in extra]
        speed = [
            f"{r[k]:.1f}" if k in r else "" for k in ("seconds_per_epoch", "images_per_second")
        ]
        rows.append("| " + " | ".join([r["method"], *knn, *others, *speed]) + " |")
    return "\n".join(rows) + "\n\nkNN: trained (random init). Commands: the JSON files."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="shapes")
    parser.add_argument("--methods", nargs="+", default=[*METHODS, "pixels"])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "methods")
    parser.add_argument("--epochs", type=int, help="override every config's max_epochs")
    parser.add_argument("--quick", action="store_true", help="a few steps per run (smoke test)")
    parser.add_argument("--table", action="store_true", help="print the table of the results")
    args = parser.parse_args()
    out = args.out.with_name(args.out.name + "-quick") if args.quick else args.out
    if args.dataset != "shapes" and not args.table:
        from contrastive.datamodules.vision_sets import SPECS

        if args.dataset not in SPECS:
            parser.error(f"VisionSetDataModule does not offer {args.dataset} yet")
    if args.table:
        print(table(out, args.dataset))
        return
    unknown = set(args.methods) - {*METHODS, "pixels"}
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {[*METHODS, 'pixels']}")
    for method in args.methods:
        path = out / args.dataset / f"{method}.json"
        if path.exists():
            print(f"{path}: present, skipped")
            continue
        torch.manual_seed(0)
        if method == "pixels":
            result = run_pixels(args.dataset, args.quick)
        else:
            result = run_method(method, args.dataset, out, args.epochs, args.quick)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".tmp").write_text(json.dumps(result, indent=1))
        path.with_suffix(".tmp").replace(path)  # whole files only: a stopped run leaves none
        print(f"{path}: written")


if __name__ == "__main__":
    main()
