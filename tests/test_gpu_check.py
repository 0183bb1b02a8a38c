"""benchmarks/gpu_check.py on the CPU: ``--device cpu --quick`` runs every part, so the script a
GPU run depends on cannot rot here; a failing case is a FAIL row and exit status 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_vision_sets import write_fake_fashion_mnist
from torch.utils.flop_counter import FlopCounterMode

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


pytestmark = pytest.mark.usefixtures("benchmarks_in_tmp")


def test_the_quick_check_runs_every_part_and_writes_its_figures(tmp_path, capsys):
    import gpu_check
    from gpu import fashion, smoke, speed

    out = tmp_path / "check.json"
    fashion_mnist = tmp_path / "fashion-mnist"  # 10 batches of 16, limited to QUICK_STEPS
    write_fake_fashion_mnist(fashion_mnist, gzipped=True, train=160, test=40)
    args = ["--device", "cpu", "--quick", "--fashion-mnist", str(fashion_mnist)]
    assert gpu_check.main([*args, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert printed.startswith("GPU check: ") and "no failures" in printed
    assert report["failures"] == 0 and report["quick"] and report["device"]["device"] == "cpu"
    rows = report["rows"]
    assert all(r["case"] in printed and r["result"] in printed for r in rows)  # one table
    by_part: dict[str, list[dict]] = {}
    for r in rows:
        by_part.setdefault(r["part"], []).append(r)

    cases = [f"{name} (configs/{config})" for name, config, _ in smoke.cases(tmp_path)]
    assert [r["case"] for r in by_part["smoke"]] == cases
    ran = [r for r in by_part["smoke"] if r["result"].startswith("fit")]
    assert len(ran) == len(smoke.QUICK_RUNS) and all(r["seconds"] > 0 for r in ran)

    eager = [r for r in by_part["throughput"] if r["status"] == "ok"]
    assert [r["method"] for r in eager] == speed.method_order(quick=True)
    for r in eager:
        assert r["images_per_second"] > 0 and r["flops_per_image"] > 0 and not r["compiled"]
        assert r["tflops"] == pytest.approx(r["flops_per_image"] * r["images_per_second"] / 1e12)
    assert {r["views"] for r in eager} == {"2x16", "2x16+2x8"}  # DINO's multi-crop
    skipped = [r["case"] for r in by_part["throughput"] if r["status"] == "skipped"]
    assert skipped == [f"{m} compiled" for m in speed.MAIN]  # --quick leaves compile out

    folder, *fits = by_part["pipeline"]
    assert folder["files"] == 4 * report["device"]["cpus"] * 8  # 4 batches of 8 per worker
    assert [f["decode_on_device"] for f in fits] == [False, True]
    for f in fits:
        assert f["e2e_images_per_second"] == min(
            f["loader_images_per_second"], f["fit_clock_images_per_second"]
        )
        assert f["e2e_over_model_only"] > 0

    negatives = {r["loss"]: r for r in by_part["negatives"]}
    assert set(negatives) >= {"dense", "tiled"}
    assert negatives["tiled"]["loss_value"] == pytest.approx(negatives["dense"]["loss_value"])
    goals = {r["case"] for r in by_part["goal"]}
    assert any("tiled loss peak" in g for g in goals) and any("90%" in g for g in goals)
    assert any(g.startswith("SimCLR at least") for g in goals)

    trained = by_part["fashion"]
    assert [r["method"] for r in trained] == ["simclr", "byol"]
    for r in trained:  # one epoch of QUICK_STEPS steps, then contrastive probe's figures
        assert r["status"] == "ok" and r["steps"] == fashion.QUICK_STEPS
        assert r["epochs"] == pytest.approx(fashion.QUICK_STEPS / 10)
        assert 0 <= r["knn"] <= 1 and 0 <= r["linear"] <= 1
    (goal,) = [r for r in by_part["goal"] if "Fashion-MNIST" in r["case"]]
    assert goal["linear"] == max(r["linear"] for r in trained)
    assert Path(out.with_suffix(".log")).is_file()


def test_no_case_starts_once_the_budget_is_spent(tmp_path):
    import gpu_check

    fashion_mnist = tmp_path / "fashion-mnist"
    write_fake_fashion_mnist(fashion_mnist, gzipped=True, train=32, test=8)
    out = tmp_path / "check.json"
    args = ["--device", "cpu", "--quick", "--budget-minutes", "0", "--out", str(out)]
    assert gpu_check.main([*args, "--fashion-mnist", str(fashion_mnist)]) == 0
    rows = json.loads(out.read_text())["rows"]
    folder, *cases = [r for r in rows if r["part"] == "pipeline"]
    assert folder["status"] == "ok"  # written before any case
    compiled = [r for r in rows if r["case"].endswith(" compiled")]
    assert compiled and all(r["result"] == "--quick" for r in compiled)
    spent = [r for r in rows if r is not folder and r not in compiled]
    assert {r["part"] for r in spent} == {"smoke", "throughput", "pipeline", "negatives", "fashion"}
    assert all(r["status"] == "skipped" and r["result"] == "budget spent (0 min)" for r in spent)


def test_a_failing_case_is_a_fail_row_with_its_first_line_and_exit_status_1(
    tmp_path, monkeypatch, capsys
):
    import gpu_check
    from gpu import smoke

    bad = [
        ("misspelt flag", "simclr.yaml", [*smoke.SHAPES, "--model.temperatur=0.1"]),
        ("bad value", "simclr.yaml", [*smoke.SHAPES, "--model.temperature=-1"]),
    ]
    monkeypatch.setattr(smoke, "cases", lambda jpegs: bad)
    monkeypatch.setattr(smoke, "QUICK_RUNS", ("bad value",))
    out = tmp_path / "check.json"
    args = ["--device", "cpu", "--quick", "--parts", "smoke", "--out", str(out)]
    assert gpu_check.main(args) == 1
    rows = json.loads(out.read_text())["rows"]
    assert [r["status"] for r in rows] == ["FAIL", "FAIL"]
    assert "temperatur" in rows[0]["result"]  # parsed only (--quick), and refused
    assert "temperature must be > 0" in rows[1]["result"]
    assert all("\n" not in r["result"] for r in rows)
    assert "2 failed" in capsys.readouterr().out


def test_the_peak_is_read_from_the_device_name_most_specific_first(monkeypatch):
    from throughput_specs import peak_flops

    cuda = torch.device("cuda")
    for name, tflops in [
        ("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756), ("NVIDIA H200", 989),
        ("NVIDIA A100-SXM4-80GB", 312), ("NVIDIA A10", 125), ("NVIDIA L4", 121),
        ("NVIDIA L40S", 362),
    ]:  # fmt: skip
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device, n=name: n)
        assert peak_flops(cuda, None) == tflops * 1e12, name
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "Some Future GPU")
    assert peak_flops(cuda, None) is None
    assert peak_flops(cuda, 500.0) == 500e12  # --peak-tflops wins
    assert peak_flops(torch.device("cpu"), None) is None


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_training_flops_count_the_backward_and_the_momentum_encoder(method):
    from gpu.speed import spec_for
    from throughput_ours import FLOP_BATCH, build_method, training_flops

    spec = spec_for(method, torch.device("cpu"), 8, quick=True)
    model = build_method(spec, channels_last=False)
    views = torch.rand(2 * FLOP_BATCH, 3, spec.size, spec.size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():  # one forward of everything trained, both views
        z = model.projector(model.backbone(views))
        if method == "byol":
            model.predictor(z)
    forward = counter.get_total_flops() / FLOP_BATCH
    counted = training_flops(spec)
    if method == "simclr":  # forward, and backward's two products (none for the input's grad)
        assert 2.5 * forward < counted <= 3 * forward * 1.01
    else:  # the target's forward (backbone and projector) comes on top
        assert 3 * forward < counted <= 4 * forward * 1.01


def test_the_commands_in_the_readme_and_benchmarks_parse():
    import shlex

    import gpu_check

    root = BENCHMARKS.parent
    text = (root / "README.md").read_text() + (root / "BENCHMARKS.md").read_text()
    commands = [line for line in text.splitlines() if "benchmarks/gpu_check.py --" in line]
    assert len(commands) >= 3
    for line in commands:
        words = shlex.split(line.split("#")[0])
        args = words[words.index(next(w for w in words if w.endswith("gpu_check.py"))) + 1 :]
        if "--device" not in args:
            args += ["--device", "cpu"]  # the README's GPU commands, parsed on this CPU
        parsed = gpu_check.parse(args)
        assert parsed.parts and parsed.budget_minutes > 0, line
