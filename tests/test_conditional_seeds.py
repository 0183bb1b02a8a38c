"""benchmarks/conditional_seeds.py: one seed through the real CLI on a tiny shapes setting, and
the loop over configurations and seeds (one result file each, skipped when present) with
Student's t intervals."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location(
    "conditional_seeds", ROOT / "benchmarks" / "conditional_seeds.py"
)
seeds = importlib.util.module_from_spec(spec)
spec.loader.exec_module(seeds)

CONFIG = {
    "trainer": {
        "max_steps": 1, "enable_progress_bar": False, "enable_model_summary": False,
        "limit_val_batches": 0, "num_sanity_val_steps": 0,  # the benchmark at test only
        "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                   "init_args": {"save_dir": "runs"}},
        "callbacks": [{"class_path": "contrastive.evaluation.ConditionalEvaluation",
                       "init_args": {"eval_queries": 12}}],
    },
    "model": {
        "class_path": "contrastive.methods.Conditional",
        "init_args": {
            "backbone": "small_cnn", "backbone_kwargs": {"width": 4}, "embed_dim": 8,
            "conditioning_kwargs": {"hidden_dim": 16},
            "text_tower": {"class_path": "contrastive.text.OpenCLIPText", "init_args": {
                "model": "ViT-B-32", "width": 32, "layers": 1, "heads": 2,
                "context_length": 16, "embed_dim": 24}},
        },
    },
    "data": {
        "class_path": "contrastive.datamodules.ShapesTripletDataModule",
        "init_args": {"image_size": 16, "num_train": 16, "num_val": 16, "num_test": 24,
                      "num_bank": 16, "batch_size": 16, "eval_batch_size": 32,
                      "conditions": ["color", "shape"]},
    },
}  # fmt: skip


def test_the_interval_is_students_t():
    mean, half = seeds.interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    assert math.isnan(seeds.interval([0.5])[1])


def test_one_seed_fits_and_tests_through_the_cli(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    result = seeds.run_seed(str(config), "matched budget", 3, tmp_path / "seeds", [])
    assert result["seed"] == 3 and result["fit_seconds"] > 0 and result["test_seconds"] > 0
    key = "test/conditional/color/seen/{}/mAP"
    for scorer in ("conditioned", "image", "wrong condition", "probe"):
        assert 0 <= result[key.format(scorer)] <= 1
    # The matched-budget head ignores the text: under another condition's words it ranks the
    # same (up to the float sums of different batch sizes breaking near-ties).
    assert result[key.format("wrong condition")] == pytest.approx(
        result[key.format("conditioned")], abs=0.02
    )
    (ckpt,) = (tmp_path / "seeds" / "matched_budget" / "seed_3").glob("**/last.ckpt")
    hparams = torch.load(ckpt, weights_only=False)["hyper_parameters"]
    assert hparams["condition_on_text"] is False


def _fake_run(config, configuration, seed, out, extra):
    """Figures that follow the seed: conditioned 0.6 + 0.1 s, image 0.3, matched 0.35 + 0.1 s."""
    key = "test/conditional/letter/held-out/{}/mAP"
    if configuration == "conditioned":
        scores = {"conditioned": 0.6 + 0.1 * seed, "image": 0.3, "wrong condition": 0.31}
    else:
        scores = {"conditioned": 0.35 + 0.1 * seed, "image": 0.3}
    figures = {key.format(s): v for s, v in scores.items()}
    return {"seed": seed, "fit_seconds": 2.0, "test_seconds": 1.0, **figures}


def test_seeds_write_one_file_each_resume_and_print_intervals(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(seeds, "run_seed", _fake_run)
    out = tmp_path / "seeds"
    seeds.main(["--seeds", "0", "1", "2", "--out", str(out)])
    files = sorted(out.glob("*/seed_*.json"))
    assert [f"{p.parent.name}/{p.name}" for p in files] == [
        f"{c}/seed_{s}.json" for c in ("conditioned", "matched_budget") for s in range(3)
    ]
    table = capsys.readouterr().out
    half = 4.302653 * 0.1 / math.sqrt(3)  # t(0.975, 2) * stdev / sqrt(n) of 0.6, 0.7, 0.8
    rows = {line[20:44].strip(): line[44:].split() for line in table.splitlines()[2:-1]}
    assert rows["conditioned"] == ["0.700", "±", f"{half:.3f}", "+0.400", "±", f"{half:.3f}"]
    assert rows["matched budget"][:3] == ["0.450", "±", f"{half:.3f}"]
    assert rows["wrong condition"] == ["0.310", "±", "0.000", "+0.010", "±", "0.000"]
    assert "letter    held-out  conditioned" in table and "fit 2 s, test 1 s" in table
    mtimes = [p.stat().st_mtime_ns for p in files]
    monkeypatch.setattr(seeds, "run_seed", None)  # nothing may run again
    seeds.main(["--seeds", "0", "1", "2", "--out", str(out)])
    assert "conditioned seed 1: done already" in capsys.readouterr().out
    assert [p.stat().st_mtime_ns for p in files] == mtimes
