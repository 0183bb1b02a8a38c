"""Peak memory of a SimCLR step with gradient caching, against plain small and large batches.

SimCLR with the registry's ResNet-18 (small stem) on 32 px images, CPU, float32: one training
step (loss and backward) of an effective batch of B images in chunks of C, against a plain
batch of C and a plain batch of B. Each configuration runs in its own process so peaks do not
mix; the peak is the process's resident memory, sampled every millisecond, above its level once
the model and the views are made (as in loss_memory.py). A configuration whose estimated peak
exceeds --max-gb is reported as skipped, not run.

The gradient check runs the chunked and the plain large batch again with every BatchNorm
replaced by GroupNorm (which does not mix the batch, so chunks change nothing) and compares
the loss and every parameter's gradient.

    python benchmarks/gradcache.py --batch 2048 --chunk 128
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
from loss_memory import _PeakSampler, _rss_gb
from torch import nn

GB_PER_IMAGE = 0.009  # measured: plain batches of 128 and 2048 peaked at 1.37 and 18.25 GB


def _group_norm(model: nn.Module) -> nn.Module:
    """``model`` with every BatchNorm replaced by a GroupNorm of 32 groups (or fewer)."""
    for name, child in model.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            channels = child.num_features
            groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)
            setattr(model, name, nn.GroupNorm(groups, channels, affine=child.affine))
        else:
            _group_norm(child)
    return model


def run_one(batch: int, chunk: int | None, norm: str, grads_path: str | None) -> dict:
    from contrastive.methods import SimCLR

    torch.manual_seed(0)
    model = SimCLR(backbone="resnet18", backbone_kwargs={"small_stem": True}, chunk_size=chunk)
    if norm == "group":
        model = _group_norm(model)
    g = torch.Generator().manual_seed(1)
    views = [torch.rand(batch, 3, 32, 32, generator=g) for _ in range(2)]  # augmented views
    base = _rss_gb()  # after imports, the model and the views
    sampler = _PeakSampler()
    sampler.start()
    start = time.perf_counter()
    loss = model.training_loss({"views": views})
    loss.backward()
    seconds = time.perf_counter() - start
    peak = sampler.stop() - base
    if grads_path:
        torch.save({n: p.grad for n, p in model.named_parameters()}, grads_path)
    return {"peak_gb": peak, "seconds": seconds, "loss": float(loss)}


def _run(batch: int, chunk: int | None, norm: str, args, grads_path: str = "") -> dict | str:
    """One configuration in its own process: its results, or why there are none."""
    estimate = GB_PER_IMAGE * (chunk or batch) + 0.2
    if estimate > args.max_gb:
        return f"skipped: needs ~{estimate:.0f} GB"
    command = [sys.executable, __file__, "--one", str(batch), str(chunk or 0), norm]
    command += ["--grads", grads_path, "--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return f"failed: {(done.stderr.strip().splitlines() or ['killed'])[-1]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def _gradient_errors(path: str, reference_path: str) -> tuple[float, float]:
    """The largest ``|g - g_ref|`` of any parameter relative to that tensor's ``max |g_ref|``,
    and ``||g - g_ref|| / ||g_ref||`` over all parameters together."""
    grads, reference = torch.load(path), torch.load(reference_path)
    worst = max(float((grads[n] - r).abs().max() / r.abs().max()) for n, r in reference.items())
    difference = sum(float((grads[n] - r).square().sum()) for n, r in reference.items())
    norm = sum(float(r.square().sum()) for r in reference.values())
    return worst, (difference / norm) ** 0.5


def _row(name: str, r: dict | str, ratio: str = "") -> str:
    if isinstance(r, str):
        return f"{name:<40}  {r}"
    return f"{name:<40}{r['peak_gb']:>9.2f}{ratio:>15}{r['seconds']:>9.1f}{r['loss']:>9.4f}"


def table(args) -> None:
    """Peak memory of the plain small batch, the plain large batch and the chunked one."""
    b, c = args.batch, args.chunk
    rows = [(f"plain, batch {c}", c, None), (f"plain, batch {b}", b, None)]
    rows.append((f"gradient cache, {b} in chunks of {c}", b, c))
    small = None
    for name, batch, chunk in rows:
        r = _run(batch, chunk, "batch", args)
        if isinstance(r, dict):
            small = small or r["peak_gb"]
        print(_row(name, r, f"{r['peak_gb'] / small:.2f}x" if isinstance(r, dict) else ""))


def gradient_check(args) -> None:
    """The chunked and the plain large batch with GroupNorm: the same loss and gradients."""
    b, c = args.check_batch or args.batch, args.chunk
    print(f"\nGradient check, every BatchNorm replaced by GroupNorm, batch {b}")
    with tempfile.TemporaryDirectory() as tmp:
        paths = {chunk: os.path.join(tmp, f"{chunk}.pt") for chunk in (None, c)}
        results = {chunk: _run(b, chunk, "group", args, paths[chunk]) for chunk in paths}
        print(_row(f"plain, batch {b}", results[None]))
        print(_row(f"gradient cache, {b} in chunks of {c}", results[c]))
        if all(isinstance(r, dict) for r in results.values()):
            worst, overall = _gradient_errors(paths[c], paths[None])
            print(f"gradient difference: at most {worst:.1e} of a tensor's largest entry; "
                  f"{overall:.1e} of the gradient's norm")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2048, help="effective batch, images")
    parser.add_argument("--chunk", type=int, default=128, help="images per chunk")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-gb", type=float, default=20.0)
    parser.add_argument("--check-batch", type=int, help="the gradient check's batch (--batch)")
    parser.add_argument("--skip-table", action="store_true")
    parser.add_argument("--skip-gradient-check", action="store_true")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # internal: B C NORM
    parser.add_argument("--grads", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        batch, chunk, norm = int(args.one[0]), int(args.one[1]) or None, args.one[2]
        print(json.dumps(run_one(batch, chunk, norm, args.grads or None)))
        return
    print(f"SimCLR step (loss + backward), ResNet-18 small stem, 32 px, float32, CPU, "
          f"{args.threads} threads")  # fmt: skip
    print(f"{'configuration':<40}{'peak GB':>9}{'vs plain ' + str(args.chunk):>15}", end="")
    print(f"{'seconds':>9}{'loss':>9}")
    if not args.skip_table:
        table(args)
    if not args.skip_gradient_check:
        gradient_check(args)


if __name__ == "__main__":
    main()
