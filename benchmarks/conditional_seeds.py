"""Seeds of the conditional benchmark: mean and 95% interval of every row, per configuration.

The head on fixed towers: the config's ``towers`` (fit once, with the towers' own config) stay
as they are; each seed varies the conditioning head's initialisation and the triplets drawn
(``seed_everything``: the torch seed the triplets' partners and phrasings follow). The held-out
glyphs and the benchmark's queries are the same for every seed. Two configurations:

- ``conditioned``: the config as it is;
- ``matched budget``: the same head on the same triplets with ``condition_on_text: false``
  (it never reads the condition): the unconditioned baseline with the same trainable
  parameters.

For each configuration and seed, ``contrastive fit`` then ``contrastive test`` (in this
process, through the CLI), and the test's figures are written to
``OUT/<configuration>/seed_<s>.json`` with the wall times; a seed whose file exists is skipped,
so a stopped run resumes where it stopped. Then one table: per condition, phrasing and row,
the mean mAP over the seeds and its 95% interval (Student's t, n - 1 degrees of freedom), and
the gain of the conditioned model over the unconditioned image embedding of the same towers.

    python benchmarks/conditional_seeds.py --config configs/fonts_conditional.yaml \\
        --seeds 0 1 2 --out runs/fonts_seeds
    python benchmarks/conditional_seeds.py ... --summary   # the table of the files there

Arguments after ``--`` go to both commands (``-- --trainer.max_epochs 2``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

from scipy import stats

CONFIGURATIONS = {
    "conditioned": [],
    "matched budget": ["--model.init_args.condition_on_text=false"],
}
# Rows of the table: (configuration, scorer in its results, the row's name).
ROWS = [
    ("conditioned", "conditioned", "conditioned"),
    ("conditioned", "image", "image (unconditioned)"),
    ("conditioned", "wrong condition", "wrong condition"),
    ("matched budget", "conditioned", "matched budget"),
    ("conditioned", "probe", "probe (upper bound)"),
    ("conditioned", "text", "text"),
    ("conditioned", "image+text", "image+text"),
]


def interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its ``level`` interval (Student's t; 0 for one value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    half = stats.t.ppf((1 + level) / 2, len(values) - 1) * statistics.stdev(values)
    return mean, half / math.sqrt(len(values))


def run_seed(config: str, configuration: str, seed: int, out: Path, extra: list[str]) -> dict:
    """Fit and test one seed of one configuration; its figures and wall times."""
    from contrastive.cli import ContrastiveCLI  # the runs need it, the summary does not

    work = out / configuration.replace(" ", "_") / f"seed_{seed}"
    args = [
        "--config", config, f"--seed_everything={seed}", *CONFIGURATIONS[configuration],
        f"--trainer.logger.init_args.save_dir={work}", *extra,
    ]  # fmt: skip
    start = time.perf_counter()
    fit = ContrastiveCLI(args=["fit", *args])
    fit_seconds = time.perf_counter() - start
    checkpoint = fit.trainer.checkpoint_callback.last_model_path
    start = time.perf_counter()
    test = ContrastiveCLI(args=["test", *args, f"--ckpt_path={checkpoint}"])
    test_seconds = time.perf_counter() - start
    figures = {k: float(v) for k, v in test.trainer.callback_metrics.items() if "/" in k}
    return {"seed": seed, "fit_seconds": fit_seconds, "test_seconds": test_seconds, **figures}


def load(out: Path) -> dict[str, list[dict]]:
    """``{configuration: [each seed's results]}`` of the files under ``out``."""
    return {
        name: [
            json.loads(p.read_text())
            for p in sorted((out / name.replace(" ", "_")).glob("seed_*.json"))
        ]
        for name in CONFIGURATIONS
    }


def summary(results: dict[str, list[dict]], metric: str = "mAP") -> str:
    """The table: a block per condition and phrasing, a line per row, ``mean ± half-width``."""
    conditioned = results.get("conditioned", [])
    if not conditioned:
        return "no results yet"
    prefix = "test/conditional/"
    groups = dict.fromkeys(
        tuple(k[len(prefix) :].split("/")[:2]) for k in conditioned[0] if k.startswith(prefix)
    )
    groups = {g: None for g in groups if len(g) == 2 and g[1] != "triplets"}
    seeds = {name: len(runs) for name, runs in results.items()}
    lines = [
        f"Conditional benchmark, {metric} (mean ± 95% interval over seeds: "
        + ", ".join(f"{n} {name}" for name, n in seeds.items())
        + ")",
        f"{'condition':<10}{'phrasing':<10}{'row':<24}{metric:>16}{'gain over image':>20}",
    ]
    for condition, phrasing in groups:
        key = f"{prefix}{condition}/{phrasing}/{{}}/{metric}"
        image = [r[key.format("image")] for r in conditioned]
        for i, (configuration, scorer, name) in enumerate(ROWS):
            runs = [r for r in results.get(configuration, []) if key.format(scorer) in r]
            if not runs:
                continue
            values = [r[key.format(scorer)] for r in runs]
            mean, half = interval(values)
            cell = f"{mean:.3f} ± {half:.3f}" if len(values) > 1 else f"{mean:.3f}"
            gain = ""
            if scorer != "image" and len(values) == len(image):
                g_mean, g_half = interval([v - b for v, b in zip(values, image, strict=True)])
                gain = f"{g_mean:+.3f} ± {g_half:.3f}" if len(values) > 1 else f"{g_mean:+.3f}"
            head = f"{condition:<10}{phrasing:<10}" if i == 0 else " " * 20
            lines.append(f"{head}{name:<24}{cell:>16}{gain:>20}")
    times = [
        f"{name}: fit {statistics.fmean(r['fit_seconds'] for r in runs):.0f} s, test "
        f"{statistics.fmean(r['test_seconds'] for r in runs):.0f} s"
        for name, runs in results.items()
        if runs
    ]
    lines.append("wall time per seed (mean): " + "; ".join(times))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/fonts_conditional.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/conditional_seeds"))
    parser.add_argument("--configurations", nargs="+", default=list(CONFIGURATIONS))
    parser.add_argument("--summary", action="store_true", help="only print the table")
    args, extra = parser.parse_known_args(argv)
    extra = [a for a in extra if a != "--"]
    unknown = sorted(set(args.configurations) - set(CONFIGURATIONS))
    if unknown:
        parser.error(f"unknown configurations {unknown}; known: {list(CONFIGURATIONS)}")
    for seed in [] if args.summary else args.seeds:  # seed by seed: both rows early
        for configuration in args.configurations:
            path = args.out / configuration.replace(" ", "_") / f"seed_{seed}.json"
            if path.exists():
                print(f"{configuration} seed {seed}: done already ({path})")
                continue
            result = run_seed(args.config, configuration, seed, args.out, extra)
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".json.partial")
            partial.write_text(json.dumps(result, indent=1))
            partial.replace(path)  # whole or absent: a stopped run leaves no half file
    print(summary(load(args.out)))


if __name__ == "__main__":
    main()
