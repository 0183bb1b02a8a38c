"""The data pipeline against the model: an image folder of JPEGs feeding SimCLR.

A folder of photo-like JPEGs (``decode.write_jpegs``: sides of 256-1024 px, quality 90) is
written in parallel: ``unique`` distinct files, hard-linked up to 4 training batches per
loader worker, so that every worker decodes several batches of an epoch. Then, with
``ImageFolderDataModule`` (``image_size`` 224, batch 256, one worker per core):

- *loader*: images per second of a whole pass of its train loader, each batch moved to the
  device by the data module's own hook (decoded there with ``decode_on_device``), timed on
  the second pass (the workers started by the first);
- *fit*: SimCLR as the throughput part builds it (ResNet-50, bf16-mixed, channels-last) in a
  Lightning fit of one epoch over the folder, timed from the first batch ready to the last
  step (``throughput_ours._BatchClock``), capped by the loader's own rate: the workers deliver
  their batches in bursts (each worker one batch of 256 at a time), which a clock from the
  first batch overstates when the loader is the bottleneck;
- against *model-only*: the same fit from uint8 images held in memory (the throughput
  part's SimCLR row). Goal: end to end at least 90% of it.

Both decoders are measured: in the workers (torchvision's libjpeg-turbo) and on the device
(``decode_on_device``: nvJPEG on a GPU, batched).
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import time
from pathlib import Path

import torch
from decode import write_jpegs
from lightning.pytorch import Trainer
from throughput_ours import _BatchClock, build_method
from throughput_specs import Spec

from contrastive.datamodules import ImageFolderDataModule
from gpu.common import FAIL, OK, Budget, Row, cores, release, run_case, sync


def _write_part(args: tuple) -> int:
    return write_jpegs(*args)


def write_folder(root: Path, unique: int, total: int, sides: tuple[int, int]) -> dict:
    """``unique`` JPEGs written by a process per core, then hard links (copies where links
    fail) up to ``total`` files. Returns what was written."""
    start = time.perf_counter()
    processes = cores()
    parts = [(root / "unique" / f"part_{k}", unique // processes + (k < unique % processes), k,
              sides) for k in range(processes)]  # fmt: skip
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        size = sum(pool.map(_write_part, [p for p in parts if p[1] > 0]))
    files = sorted((root / "unique").rglob("*.jpg"))
    for i in range(total - len(files)):
        source = files[i % len(files)]
        target = root / f"copy_{i // len(files)}" / source.relative_to(root / "unique")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
    return {"unique": len(files), "files": max(total, len(files)),
            "mean_kib": round(size / len(files) / 1024, 1),
            "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip


def make_data(root: Path, spec: Spec, workers: int, on_device: bool) -> ImageFolderDataModule:
    data = ImageFolderDataModule(
        root, labelled=False, val_fraction=0.0, image_size=spec.size, batch_size=spec.batch,
        num_bank=1, num_workers=workers, decode_on_device=on_device,
    )  # fmt: skip
    data.setup("fit")
    return data


def loader_rate(root: Path, spec: Spec, workers: int, on_device: bool) -> float:
    """Images per second of the second whole pass of the train loader, on the device."""
    data, device = make_data(root, spec, workers, on_device), spec.device
    loader = data.train_dataloader()
    for _ in range(2):
        start, seen = time.perf_counter(), 0
        for batch in loader:
            batch = data.transfer_batch_to_device(batch, device, 0)
            seen += len(batch["image"])
        sync(device)
        seconds = time.perf_counter() - start
    del loader  # its persistent workers end
    return seen / seconds


def fit_rate(root: Path, spec: Spec, workers: int, on_device: bool, bf16: bool) -> float:
    """Images per second of SimCLR's fit over the folder: one epoch, first batch to last."""
    data = make_data(root, spec, workers, on_device)
    model = build_method(spec, channels_last=True)
    clock = _BatchClock(spec.device)
    trainer = Trainer(
        accelerator="gpu" if spec.device.type == "cuda" else "cpu", devices=1,
        precision="bf16-mixed" if bf16 else "32-true", max_epochs=1, limit_val_batches=0,
        num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[clock],
    )  # fmt: skip
    trainer.fit(model, datamodule=data)
    return (trainer.num_training_batches - 1) * spec.batch / clock.clock.seconds


def prepare(workdir: Path, batch: int, quick: bool) -> tuple[Path, Row]:
    """The JPEG folder, written first (its writers are forked before CUDA starts): 4 batches
    per loader worker, a worker per core."""
    root = workdir / "pipeline_jpegs"
    unique, sides = (16, (48, 96)) if quick else (1024, (256, 1024))
    written = write_folder(root, unique, 4 * cores() * batch, sides)
    row = Row("pipeline", f"{written['files']:,} JPEGs ({written['unique']:,} distinct)",
              f"{sides[0]}-{sides[1]} px a side, {written['mean_kib']:.0f} KiB on average, "
              f"written in {written['seconds']:.0f} s", data=written)  # fmt: skip
    return root, row


def run(root: Path, spec: Spec, model_rate: float | None, log: Path, budget: Budget) -> list[Row]:
    """The loader and fit rates of both decoders over the folder ``root`` against
    ``model_rate`` (the model-only images per second of ``spec``), then the goal."""
    device = spec.device
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    workers = cores()
    rows = []
    if model_rate is None and budget.left() > 0:
        rows.append(Row("pipeline", "model-only", "no throughput row for simclr", FAIL))
    best = None
    for on_device in (False, True):
        where = "decoded on the device" if on_device else f"decoded by {workers} workers"
        if skipped := budget.spent("pipeline", f"simclr fit, JPEGs {where}"):
            rows.append(skipped)
            continue
        loader, error = run_case(log, loader_rate, root, spec, workers, on_device)
        release(device)
        if error is None:
            fit, error = run_case(log, fit_rate, root, spec, workers, on_device, bf16)
            release(device)
        if error is not None:
            rows.append(Row("pipeline", f"simclr fit, JPEGs {where}", error, FAIL))
            continue
        e2e = min(fit, loader)
        figures = {"decode_on_device": on_device, "workers": workers, "image_size": spec.size,
                "batch": spec.batch, "loader_images_per_second": round(loader, 1),
                "fit_clock_images_per_second": round(fit, 1),
                "e2e_images_per_second": round(e2e, 1)}  # fmt: skip
        share = ""
        if model_rate:
            figures["e2e_over_model_only"] = round(e2e / model_rate, 4)
            share = f", {e2e / model_rate:.0%} of model-only {model_rate:,.0f}"
            best = max(best or 0.0, e2e / model_rate)
        rows.append(Row("pipeline", f"simclr fit, JPEGs {where}",
                        f"loader {loader:,.0f} img/s; end to end {e2e:,.0f} img/s{share}",
                        OK, figures))  # fmt: skip
    if best is not None:
        rows.append(Row("goal", "end to end at least 90% of model-only",
                        f"{best:.0%} (the faster decoder)", "met" if best >= 0.9 else "NOT met",
                        {"e2e_over_model_only": best}))  # fmt: skip
    return rows
