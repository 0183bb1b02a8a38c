"""Many negatives on a GPU: the tiled loss against the dense one and open_clip's ClipLoss.

The losses are ``benchmarks/loss_memory.py``'s (``make_loss``): NT-Xent of N images (2N views
of dimension d, float32) dense (``info_nce``) and tiled (``info_nce_tiled``, tiles of
``tile`` rows and columns), and open_clip's ``ClipLoss`` of N pairs (its (N, N) logits both
ways), forward and backward once each after a small warm-up. On a GPU the peak is
``torch.cuda.max_memory_allocated`` above what the inputs already took; a case that runs out
of memory is reported as not fitting. On the CPU (``--quick``) the peak is the process's
resident memory, sampled (``loss_memory.run_one``).

Goals (issue #21): the tiled loss's peak within 2x of the inputs' own size (``2 N d`` floats)
at every N, so linear in N; and its time within 1.5x of the dense loss's at the largest N
where the dense loss fits.
"""

from __future__ import annotations

import time

import torch
from loss_memory import available, make_loss, run_one

from gpu.common import FAIL, OK, SKIPPED, Budget, Row, release, sync

LOSSES = ("dense", "tiled", "open_clip ClipLoss")


def _measure_cuda(loss: str, n: int, dim: int, tile: int, device: torch.device) -> dict:
    release(device)
    torch.cuda.reset_peak_memory_stats(device)
    z1, z2, compute = make_loss(loss, n, dim, tile, device)
    sync(device)
    base = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    value = compute()
    value.backward()
    sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) - base
    return {"peak_gb": peak / 2**30, "seconds": seconds, "loss": value.item()}


def measure(loss: str, n: int, dim: int, tile: int, device: torch.device) -> dict:
    """``{"peak_gb", "seconds", "loss"}`` of one forward and backward, or ``{"error"}``."""
    try:
        if device.type == "cuda":
            return _measure_cuda(loss, n, dim, tile, device)
        return run_one(loss, n, dim, tile)
    except torch.cuda.OutOfMemoryError:
        return {"error": "does not fit: out of memory"}
    finally:
        release(device)


def run(sizes: list[int], dim: int, tile: int, device: torch.device, budget: Budget) -> list[Row]:
    """One row per (N, loss), then the two goals."""
    losses = [loss for loss in LOSSES if available(loss)]
    rows = [
        Row("negatives", loss, "not installed", SKIPPED) for loss in LOSSES if loss not in losses
    ]
    for loss in losses if budget.left() > 0 else ():  # warm-up: kernels, cuBLAS
        measure(loss, min(sizes), dim, tile, device)
    results = {}
    for n in sizes:
        inputs_gb = 2 * n * dim * 4 / 2**30
        for loss in losses:
            case = f"N={n:,} d={dim} {loss}"
            if skipped := budget.spent("negatives", case):
                rows.append(skipped)
                continue
            r = results[n, loss] = measure(loss, n, dim, tile, device)
            data = {"n": n, "dim": dim, "loss": loss, "inputs_gb": round(inputs_gb, 4)}
            if "error" in r:
                rows.append(Row("negatives", case, r["error"], SKIPPED, data))
                continue
            data.update(peak_gb=round(r["peak_gb"], 4), seconds=round(r["seconds"], 3))
            data.update(loss_value=round(r["loss"], 5), peak_over_inputs=r["peak_gb"] / inputs_gb)
            result = (
                f"peak {r['peak_gb']:.2f} GB ({r['peak_gb'] / inputs_gb:.1f}x inputs), "
                f"{r['seconds']:.2f} s, loss {r['loss']:.4f}"
            )
            rows.append(Row("negatives", case, result, OK, data))
    for (n, loss), r in results.items():  # the same loss value whatever the form
        dense = results.get((n, "dense"), {})
        if loss == "tiled" and "loss" in r and "loss" in dense:
            if abs(r["loss"] - dense["loss"]) > 1e-3 * max(1.0, abs(dense["loss"])):
                rows.append(Row("negatives", f"N={n:,} tiled = dense",
                                f"{r['loss']} against {dense['loss']}", FAIL))  # fmt: skip
    return rows + goals(sizes, dim, results)


def goals(sizes: list[int], dim: int, results: dict) -> list[Row]:
    """The memory and time goals, met or not, read off the results."""
    rows = []
    ratios = {
        n: results[n, "tiled"]["peak_gb"] / (2 * n * dim * 4 / 2**30)
        for n in sizes
        if "peak_gb" in results.get((n, "tiled"), {})
    }
    if ratios:
        worst = max(ratios.values())
        met = worst <= 2.0
        text = ", ".join(f"{ratio:.1f}x at N={n:,}" for n, ratio in ratios.items())
        rows.append(Row("goal", "tiled loss peak within 2x of its inputs", text,
                        "met" if met else "NOT met", {"peak_over_inputs": ratios}))  # fmt: skip
    fits = [n for n in sizes if "seconds" in results.get((n, "dense"), {})]
    if fits and "seconds" in results.get((fits[-1], "tiled"), {}):
        n = fits[-1]
        ratio = results[n, "tiled"]["seconds"] / results[n, "dense"]["seconds"]
        text = f"{ratio:.2f}x at N={n:,}, the largest N the dense loss fits"
        status = "met" if ratio <= 1.5 else "NOT met"
        data = {"tiled_over_dense": ratio, "n": n}
        rows.append(Row("goal", "tiled loss time within 1.5x of dense", text, status, data))
    return rows
