"""benchmarks/compare_methods.py, the comparison tables' runner, at ``--quick`` on a fake
Fashion-MNIST: every kind of row (a method, the labelled one, the raw pixels) is written with the
figures the table reads, a present result is skipped, and the table prints them."""

from __future__ import annotations

import json

import pytest
from test_vision_sets import write_fake_fashion_mnist

pytestmark = pytest.mark.usefixtures("benchmarks_in_tmp")


def test_quick_rows_are_written_skipped_when_present_and_tabulated(tmp_path, capsys):
    import compare_methods

    root = tmp_path / "fashion-mnist"
    write_fake_fashion_mnist(root, gzipped=True, train=96, test=32)
    out = tmp_path / "results"
    argv = ["--dataset", "fashion_mnist", "--quick", "--out", str(out), "--minutes", "0.5"]
    argv += ["--methods", "simclr", "supervised", "pixels", f"--data.init_args.root={root}"]
    argv.append("--data.init_args.batch_size=32")
    compare_methods.main(argv)
    folder = tmp_path / "results-quick" / "fashion_mnist"
    results = {m: json.loads((folder / f"{m}.json").read_text()) for m in ("simclr", "supervised")}
    for method, result in results.items():
        metrics = result["metrics"]
        for key in ("test/knn/class", "test/linear/class", "test/random/knn/class"):
            assert 0 <= metrics[key] <= 1, (method, key)
        assert result["epochs"] == 1 and result["images_per_second"] > 0
        command = result["command"]
        assert (
            command[:2] == ["contrastive", "fit"]
            and "--config=configs/" + ("supcon.yaml" if method == "supervised" else "simclr.yaml")
            in command
        )
        assert any(a.startswith("--trainer.max_time=") for a in command)  # the budget
        assert f"--data.init_args.root={root}" in command  # the override, recorded
        assert result["test_command"][:2] == ["contrastive", "test"]
    assert "--model.label=class" in results["supervised"]["command"]
    assert "--model.label=class" not in results["simclr"]["command"]
    pixels = json.loads((folder / "pixels.json").read_text())["metrics"]
    assert 0 <= pixels["test/knn/class"] <= 1 and 0 <= pixels["test/linear/class"] <= 1

    before = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.json")}
    compare_methods.main(argv)  # every row present: nothing is run again
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.json")} == before
    assert capsys.readouterr().out.count("present, skipped") == 3

    compare_methods.main(["--dataset", "fashion_mnist", "--quick", "--out", str(out), "--table"])
    rows = capsys.readouterr().out.splitlines()
    assert rows[0] == "| method | class | RankMe (centred) | epochs | s/epoch | img/s |"
    names = [r.split(" | ")[0].lstrip("| ") for r in rows[2:] if r.startswith("| ")]
    assert names == ["simclr", "supervised", "random init", "raw pixels"]
    knn = results["simclr"]["metrics"]["test/knn/class"]
    assert rows[2].startswith(f"| simclr | {knn:.3f} / ") and " | 1 | " in rows[2]  # 1 epoch

    # The kNN gap read with the same preprocessing on both sides, on the same bank and queries:
    # as they are, the checkpoint's figure is the test's; standardised, the pixels' is theirs.
    import fashion_knn_parity

    checkpoint = results["simclr"]["test_command"][-1].removeprefix("--ckpt_path=")
    fashion_knn_parity.main([checkpoint, "--root", str(root), "--num-bank", "64"])
    parity = [r.split(" | ") for r in capsys.readouterr().out.splitlines()[2:]]
    assert [r[0].lstrip("| ") for r in parity] == ["raw pixels", checkpoint]
    assert parity[1][1] == f"{knn:.3f}"
    assert parity[0][2].rstrip(" |") == f"{pixels['test/knn/class']:.3f}"


def test_arguments_it_does_not_know_are_refused_by_name(capsys):
    import compare_methods

    with pytest.raises(SystemExit):
        compare_methods.main(["--dataset", "shapes", "--metods", "simclr"])
    assert "unrecognised arguments: --metods simclr" in capsys.readouterr().err
