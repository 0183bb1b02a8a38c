"""Cost of the finite-weights check after each optimizer step, on the quickstart's step.

The quickstart's SimCLR (``configs/simclr.yaml``: small CNN of width 16, channels-last,
projector 512 -> 128, AdamW) on a batch of 128 uint8 images and their views at 32 px: a full
step (views made, forward, backward, AdamW) with and without
:func:`contrastive.optim.weights_finite` of the updated parameters, alternating round
by round; prints the medians, the ratio, and the check alone.

    python benchmarks/finite_check.py --rounds 20
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from contrastive.augment import SimCLRAugment
from contrastive.methods import SimCLR
from contrastive.optim import weights_finite


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    device = torch.device(args.device)
    model = SimCLR(
        backbone_kwargs={"width": 16},
        channels_last=True,
        temperature=0.2,
        projector_hidden_dim=512,
        projector_dim=128,
        augment=SimCLRAugment(crop_scale=(0.8, 1.0), color_jitter=0.0, grayscale=0.0),
    ).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.005, weight_decay=1e-4)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    shape = (args.batch, 3, 32, 32)
    batch = {k: torch.randint(0, 256, shape, dtype=torch.uint8, device=device) for k in "iv"}
    batch = {"image": batch["i"], "view": batch["v"]}

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step(check: bool) -> float:
        sync()
        start = time.perf_counter()
        loss = model.training_loss(dict(batch, views=model.make_views(batch)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if check:
            assert weights_finite(params)  # one host sync, as in training
        sync()
        return time.perf_counter() - start

    for check in (False, True):  # warm-up
        step(check)
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.rounds):
        for check in (False, True):
            times[check].append(step(check))
    checks = []
    for _ in range(100):
        sync()
        start = time.perf_counter()
        weights_finite(params)
        checks.append(time.perf_counter() - start)

    without, with_check = (statistics.median(times[c]) for c in (False, True))
    size = sum(p.numel() for p in params)
    print(
        f"SimCLR quickstart step on {device.type}, batch {args.batch} x 2 views, 32 px, "
        f"{torch.get_num_threads()} threads; {len(params)} tensors, {size:,} parameters; "
        f"{args.rounds} rounds, alternating"
    )
    print(f"without the check  {1e3 * without:8.2f} ms (median)")
    print(f"with the check     {1e3 * with_check:8.2f} ms (median)")
    print(f"ratio              {with_check / without:8.4f}")
    print(f"the check alone    {1e6 * statistics.median(checks):8.1f} us (median of 100)")


if __name__ == "__main__":
    main()
