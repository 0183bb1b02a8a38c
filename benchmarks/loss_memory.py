"""Peak memory and time of NT-Xent forward + backward: dense, tiled, and peers when installed.

Each (loss, N) runs in its own process so peaks do not mix; the peak is the process's
resident memory, sampled every millisecond, above its level once imports and inputs are made.
N images give 2N views of dimension d (float32), as in SimCLR. A configuration whose
estimated peak exceeds --max-gb is reported as skipped, not run. Peers (lightly's NTXentLoss,
open_clip's ClipLoss) are used when importable; they are never project dependencies.

    python benchmarks/loss_memory.py --sizes 1024 4096 16384 32768 --dim 128
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import threading
import time

import torch

LOSSES = ("dense", "tiled", "lightly NTXentLoss", "open_clip ClipLoss")


def _rss_gb() -> float:
    """Resident memory now (Linux /proc), in GiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**30


class _PeakSampler(threading.Thread):
    """Samples resident memory every millisecond until stopped; ``peak`` is the largest seen."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self._done = _rss_gb(), threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.001):
            self.peak = max(self.peak, _rss_gb())

    def stop(self) -> float:
        self._done.set()
        self.join()
        return max(self.peak, _rss_gb())


def estimate_gb(loss: str, n: int, dim: int) -> float:
    if loss == "tiled":
        return 4 * 2 * n * dim * 4 / 2**30 + 0.1  # inputs, normalised copies and grads
    views = n if loss == "open_clip ClipLoss" else 2 * n  # ClipLoss: (N, N) logits, twice
    return 5.5 * views * views * 4 / 2**30  # measured: dense N=16384 peaked at 5.25x the logits


def make_loss(loss: str, n: int, dim: int, tile: int, device: str | torch.device = "cpu"):
    """Seeded inputs ``z1, z2``: ``(N, d)`` float32 on ``device`` with gradients, and a function
    computing one of ``LOSSES`` of them (NT-Xent of the 2N views; ClipLoss of N pairs)."""
    from contrastive.losses import info_nce, info_nce_tiled

    torch.manual_seed(0)
    z1 = torch.randn(n, dim, device=device, requires_grad=True)
    z2 = torch.randn(n, dim, device=device, requires_grad=True)
    if loss in ("dense", "tiled"):
        ids = torch.arange(n, device=device).repeat(2)
        positions = torch.arange(2 * n, device=device)

        def compute():
            z = torch.cat([z1, z2])  # (2N, d)
            if loss == "dense":
                return info_nce(z, z, ids, ids, 0.1, positions)
            return info_nce_tiled(z, z, ids, ids, 0.1, positions, block_size=tile)

    elif loss == "lightly NTXentLoss":
        from lightly.loss import NTXentLoss

        criterion = NTXentLoss(temperature=0.1)

        def compute():
            return criterion(z1, z2)

    else:
        from open_clip.loss import ClipLoss

        criterion = ClipLoss()

        def compute():
            a = torch.nn.functional.normalize(z1, dim=1)
            b = torch.nn.functional.normalize(z2, dim=1)
            return criterion(a, b, logit_scale=torch.tensor(10.0, device=device))

    return z1, z2, compute


def run_one(loss: str, n: int, dim: int, tile: int) -> dict:
    z1, z2, compute = make_loss(loss, n, dim, tile)
    base = _rss_gb()  # after imports and inputs
    sampler = _PeakSampler()
    sampler.start()
    start = time.perf_counter()
    value = compute()
    value.backward()
    seconds = time.perf_counter() - start
    return {"peak_gb": sampler.stop() - base, "seconds": seconds, "loss": value.item()}


def available(loss: str) -> bool:
    module = {"lightly NTXentLoss": "lightly", "open_clip ClipLoss": "open_clip"}.get(loss)
    if module is None:
        return True
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 16384, 32768])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--max-gb", type=float, default=18.0)
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # internal: LOSS N
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), args.dim, args.tile)))
        return

    print(f"NT-Xent forward+backward, N images (2N views), d={args.dim}, float32, CPU")
    print(f"{'N':>6}  {'loss':<20}{'peak GB':>9}{'seconds':>9}{'loss value':>12}")
    for n in args.sizes:
        for loss in LOSSES:
            if not available(loss):
                print(f"{n:>6}  {loss:<20}  not installed")
                continue
            if estimate_gb(loss, n, args.dim) > args.max_gb:
                estimate = estimate_gb(loss, n, args.dim)
                print(f"{n:>6}  {loss:<20}  skipped: needs ~{estimate:.0f} GB")
                continue
            command = [sys.executable, __file__, "--one", loss, str(n), "--dim", str(args.dim)]
            command += ["--tile", str(args.tile)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{n:>6}  {loss:<20}  failed: {done.stderr.strip().splitlines()[-1]}")
                continue
            r = json.loads(done.stdout)
            print(f"{n:>6}  {loss:<20}{r['peak_gb']:>9.2f}{r['seconds']:>9.1f}{r['loss']:>12.4f}")


if __name__ == "__main__":
    main()
