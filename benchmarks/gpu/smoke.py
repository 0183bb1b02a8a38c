"""Correctness smoke: a few steps of the real ``contrastive fit`` (and ``test``) per case.

Each case runs ``contrastive.cli.main`` in this process (one CUDA context for all), on the
device with bf16-mixed on a GPU (float32 on the CPU), the loaders' workers pinning memory:
every image method's shipped config, CLIP with its text tower (and with the gradient cache
and queues), Conditional (random towers), SimCLR with a queue, the gradient cache, the tiled
loss and multi-crop, and an image folder of JPEGs decoded on the device. The shapes data is
shrunk to 48 training images (3 steps of 16) and one epoch, validated (the kNN monitor), then
tested from ``last.ckpt`` (trained against random init; once per config: its variants are
fitted only). Any error (a device mismatch, pinned memory, a dtype) makes the case a FAIL row
with the error's first line.

Left out: ``byol_nga`` (the NGA images), ``fonts_*`` (font files), ``lit_minilm`` and
``conditional`` (the all-MiniLM-L6-v2 weights, 88 MB): data and weights that do not travel to a
GPU machine. Their methods run here from the other configs.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from decode import write_jpegs
from throughput_specs import IMAGE_METHODS

from contrastive.cli import main
from gpu.common import FAIL, OK, Budget, Row, inside, release, run_case

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SHAPES = [  # shrunk data: 3 training steps, a small kNN bank and query set
    "--data.num_train=48",
    "--data.num_val=32",
    "--data.num_test=32",
    "--data.num_bank=64",
    "--data.batch_size=16",
    "--data.eval_batch_size=32",
]
# Run in --quick mode (on the CPU: the suite runs it); the other cases are only parsed there.
# (multi-crop and a momentum encoder; the device-decode path). test_cli.py runs every config.
QUICK_RUNS = ("dino", "simclr, JPEGs decoded on the device")
MULTI_CROP = [
    "--model.augment=contrastive.augment.MultiCropAugment",
    "--model.augment.init_args.num_local=2",
    "--model.augment.init_args.local_size=16",
]


def cases(jpegs: Path) -> list[tuple[str, str, list[str]]]:
    """``(name, config, extra flags)`` of every case."""
    image_folder = [
        "--data=ImageFolderDataModule",
        f"--data.root={jpegs}",
        "--data.labelled=false",
        "--data.image_size=32",
        "--data.val_fraction=0.25",
        "--data.batch_size=8",
        "--data.eval_batch_size=8",
        "--data.num_bank=16",
        "--data.decode_on_device=true",
    ]
    triplets = ["--model.towers=null", *SHAPES]
    return [
        *[(name, f"{name}.yaml", SHAPES) for name in sorted(IMAGE_METHODS)],
        ("clip, text tower", "clip.yaml", SHAPES),
        ("clip, gradient cache, queues", "clip.yaml",
         [*SHAPES, "--model.chunk_size=8", "--model.queue_size=64"]),
        ("conditional, random towers", "conditional_clip.yaml", triplets),
        ("simclr, queue", "simclr.yaml", [*SHAPES, "--model.queue_size=64"]),
        ("simclr, gradient cache", "simclr.yaml", [*SHAPES, "--model.chunk_size=8"]),
        ("simclr, tiled loss", "simclr.yaml", [*SHAPES, "--model.tiled=true",
                                               "--model.tile_size=8"]),
        ("simclr, multi-crop", "simclr.yaml", [*SHAPES, *MULTI_CROP]),
        ("simclr, JPEGs decoded on the device", "simclr.yaml", image_folder),
    ]  # fmt: skip


def _common(device: torch.device, quick: bool) -> list[str]:
    """Flags of every case: the device, its precision, workers pinning memory on a GPU."""
    gpu = device.type == "cuda"
    return [
        f"--trainer.accelerator={'gpu' if gpu else 'cpu'}",
        "--trainer.devices=1",
        f"--trainer.precision={'bf16-mixed' if gpu else '32-true'}",
        "--trainer.max_epochs=1",
        "--trainer.check_val_every_n_epoch=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.logger.init_args.save_dir=runs",
        f"--data.num_workers={2 if gpu else 0}",
        *(["--model.backbone_kwargs={width: 4}"] if quick else []),
    ]


def run(device: torch.device, quick: bool, workdir: Path, log: Path, budget: Budget) -> list[Row]:
    """Every case, ``fit`` then ``test``; one row each. ``quick``: the ``QUICK_RUNS`` cases,
    the others parsed only (``--print_config``: their flags still checked)."""
    jpegs = workdir / "jpegs"
    write_jpegs(jpegs, 24, sides=(48, 96))
    rows, configs_tested = [], set()
    for name, config, extra in cases(jpegs):
        args = [f"--config={CONFIGS / config}", *extra, *_common(device, quick)]
        start = time.perf_counter()
        case = f"{name} (configs/{config})"
        if skipped := budget.spent("smoke", case):
            rows.append(skipped)
            continue
        if quick and name not in QUICK_RUNS:
            _, error = run_case(log, main, ["fit", *args, "--print_config"])
            result = "parsed (--quick runs it on a GPU only)" if error is None else error
            rows.append(Row("smoke", case, result, FAIL if error else OK))
            continue
        with inside(workdir / name.replace(", ", "_").replace(" ", "_")):
            _, error = run_case(log, main, ["fit", *args])
            tested = error is None and config not in configs_tested  # once per config
            configs_tested.add(config)
            if tested:
                _, error = run_case(log, main, ["test", *args, "--ckpt_path=last"])
            if error is None and not list(Path("runs").glob("*/version_0/checkpoints/last.ckpt")):
                error = "fit wrote no checkpoints/last.ckpt"
        seconds = time.perf_counter() - start
        if error is not None:
            rows.append(Row("smoke", case, error, FAIL, {"seconds": round(seconds, 1)}))
        else:
            result = f"fit 1 epoch + validate{' + test' if tested else ''}, {seconds:.1f} s"
            rows.append(Row("smoke", case, result, data={"seconds": round(seconds, 1)}))
        release(device)
    return rows
