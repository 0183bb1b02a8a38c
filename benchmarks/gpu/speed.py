"""Throughput of every image method in a real Lightning fit, with MFU.

Each method of ``contrastive.methods`` (``throughput_specs.IMAGE_METHODS``) as ``benchmarks/
throughput.py --device cuda`` builds it (``make_spec``): ResNet-50 at 224 px, batch 256, two
views, or multi-crop where the paper uses it (DINO 2x224 + 8x96, SwAV 2x224 + 6x96);
SimCLR's ImageNet view distribution; bf16-mixed and channels-last; SimCLR and BYOL with
lightly's (the papers') heads and one forward per view, the others with their own defaults.
Timed by ``throughput_ours.ours_lightning``: a ``lightning.Trainer`` fit over uint8 images
held in memory (loader workers pinning memory, views made on the device), from the first
batch ready to the last, after a warm-up fit (which compiles, for the compiled rows). Images
per second count source images (each with all its views). MFU:
``throughput_ours.training_flops`` (``FlopCounterMode`` on one step) times images per second,
against the device's bf16 dense peak (``throughput_specs.peak_flops``).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from throughput_ours import our_loader, ours_lightning, training_flops
from throughput_specs import IMAGE_METHODS, MULTI_CROP, Spec, make_images, make_spec

from contrastive.methods import smoke_kwargs
from gpu.common import FAIL, Budget, Row, cores, release, run_case

MAIN = ("simclr", "byol", "moco_v3")  # first, and the ones compiled
# --quick (the suite runs it on the CPU) runs these: multi-crop and momentum, labels.
QUICK = ("simclr", "dino", "supcon")


def method_order(quick: bool = False) -> list[str]:
    """The main three first, then the rest by name; ``quick``: ``QUICK`` only."""
    names = set(QUICK if quick else IMAGE_METHODS)
    return [m for m in MAIN if m in names] + sorted(names - set(MAIN))


def spec_for(method: str, device: torch.device, batch: int, quick: bool) -> Spec:
    """``make_spec``'s recipe; ``quick``: a width-4 CNN on 16 px images and tiny heads."""
    if not quick:
        return make_spec(method, device, batch)
    kwargs = smoke_kwargs(IMAGE_METHODS[method])
    kwargs["backbone_kwargs"] = {"width": 4}
    kwargs.update(make_spec(method, device, batch).method_kwargs)  # SupCon's label field
    return Spec(
        method, device, batch, backbone="small_cnn", small_stem=False, size=16, hidden=0,
        out=0, local_views=min(2, MULTI_CROP.get(method, 0)), local_size=8,
        method_kwargs=kwargs,
    )  # fmt: skip


def views_label(spec: Spec) -> str:
    local = f"+{spec.local_views}x{spec.local_size}" if spec.local_views else ""
    return f"2x{spec.size}{local}"


def measure(spec: Spec, bf16: bool, compiled: bool, steps: int) -> dict:
    """Images per second of ``steps`` training steps in a Lightning fit, and the warm-up's
    seconds (torch.compile's time, for a compiled model)."""
    workers = min(8, cores()) if spec.device.type == "cuda" else 0
    images = make_images(spec, min(steps + 1, 4) * spec.batch)
    loader = our_loader(spec, images, steps + 1, workers)
    config = ours_lightning(spec, loader, "b", bf16, True, compiled)
    start = time.perf_counter()
    config.warmup()
    warmup = time.perf_counter() - start
    seconds = config.times["e2e"](steps)
    return {"images_per_second": steps * spec.batch / seconds, "warmup_seconds": warmup}


def run(
    methods: list[str],
    device: torch.device,
    quick: bool,
    compiled: bool,
    steps: int,
    batch: int,
    peak: float | None,
    log: Path,
    flops: dict[str, float],
    budget: Budget,
) -> list[Row]:
    """One row per method. ``flops`` caches each method's count (the compiled rows reuse the
    eager rows')."""
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    precision = ("bf16-mixed" if bf16 else "fp32") + ", channels-last"
    rows = []
    for method in methods:
        spec = spec_for(method, device, batch, quick)
        case = f"{method} {views_label(spec)} {'compiled' if compiled else 'eager'}"
        if skipped := budget.spent("throughput", case):
            rows.append(skipped)
            continue
        if method not in flops:
            count, error = run_case(log, training_flops, spec)
            if error is None:
                flops[method] = count
        timing, error = run_case(log, measure, spec, bf16, compiled, steps)
        release(device)
        if error is not None:
            rows.append(Row("throughput", case, error, FAIL))
            continue
        rate = timing["images_per_second"]
        data = {
            "method": method,
            "views": views_label(spec),
            "backbone": spec.backbone,
            "batch": spec.batch,
            "precision": precision,
            "compiled": compiled,
            "steps": steps,
            "images_per_second": rate,
            "warmup_seconds": round(timing["warmup_seconds"], 1),
            "flops_per_image": flops.get(method),
        }
        result = f"{rate:,.0f} img/s"
        if flops.get(method):
            tflops = flops[method] * rate / 1e12
            data["tflops"] = tflops
            result += f", {tflops:.1f} TFLOP/s" if tflops >= 1 else f", {tflops * 1e3:.1f} GFLOP/s"
            if peak:
                data["mfu"] = tflops * 1e12 / peak
                result += f", MFU {data['mfu']:.1%}"
        if compiled:
            result += f" (compile and warm-up {timing['warmup_seconds']:.0f} s)"
        rows.append(Row("throughput", case, result, data=data))
    return rows
