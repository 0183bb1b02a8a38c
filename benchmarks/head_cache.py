"""The conditioning head's epoch on frozen towers: fresh glyph jitters and the tower run on every
image, against a fixed number of jitters per glyph with the tower's features remembered
(``--data.jitters``, ``--model.image_cache_size``).

Both built from one config (the fonts head's by default, random towers: the time is the same),
each with its own loader workers, model and optimizer; their epochs alternate, so the machine's
load falls on both alike. The first epoch fills the caches (the glyph renders in the workers,
the features in the model); the table gives each epoch's seconds and the ratio, and the median
of the epochs after the first.

    python benchmarks/head_cache.py --epochs 4
    python benchmarks/head_cache.py --epochs 4 -- --data.init_args.batch_size=64

Arguments after ``--`` go to both (any of the config's settings).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from unittest import mock

import torch

from contrastive.cli import ContrastiveCLI

SETTINGS = {
    "fresh jitters, no cache": ["--model.init_args.image_cache_size=0"],
    "2 jitters, cached": [
        "--model.init_args.image_cache_size=100000",
        "--data.init_args.jitters=2",
    ],
}


def build(config: str, extra: list[str]):
    """The config's model and training loader (random towers), and an optimizer of the head."""
    args = ["--config", config, "--model.init_args.towers=null", *extra]
    with mock.patch.object(sys, "argv", sys.argv[:1]):  # this script's own flags are not its
        cli = ContrastiveCLI(args=args, run=False)
    model, data = cli.model, cli.datamodule
    data.setup("fit")
    head = [p for p in model.parameters() if p.requires_grad]
    return model.train(), data.train_dataloader(), torch.optim.AdamW(head, lr=1e-3)


def epoch(model, loader, optimizer) -> float:
    """One pass over ``loader``, loading and stepping; its wall seconds."""
    start = time.perf_counter()
    for batch in loader:
        batch["views"] = model.make_views(batch)
        loss = model.training_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/fonts_conditional.yaml")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("overrides", nargs="*", help="after --: settings for both")
    args = parser.parse_args(argv)

    runs = {name: build(args.config, [*args.overrides, *extra]) for name, extra in SETTINGS.items()}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.epochs):
        for name, run in runs.items():
            times[name].append(epoch(*run))
    fresh, cached = times.values()
    print(f"{'epoch':<8}" + "".join(f"{name:>26}" for name in runs) + f"{'ratio':>8}")
    for i, (a, b) in enumerate(zip(fresh, cached, strict=True), start=1):
        print(f"{i:<8}{a:>25.1f}s{b:>25.1f}s{a / b:>7.2f}x")
    if args.epochs > 1:
        a, b = statistics.median(fresh[1:]), statistics.median(cached[1:])
        print(f"{'median 2+':<8}{a:>24.1f}s{b:>25.1f}s{a / b:>7.2f}x")


if __name__ == "__main__":
    main()
