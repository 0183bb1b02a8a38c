"""benchmarks/head_cache.py: the head's epochs with and without the feature cache, side by side."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("head_cache", ROOT / "benchmarks" / "head_cache.py")
head_cache = importlib.util.module_from_spec(spec)
spec.loader.exec_module(head_cache)


def test_the_benchmark_times_both_settings_epoch_by_epoch(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    head_cache.main([
        "--config", str(ROOT / "configs" / "fonts_conditional.yaml"), "--epochs", "2", "--",
        "--data.init_args.fonts=/usr/share/fonts/truetype/dejavu", "--data.init_args.families=null",
        "--data.init_args.num_train=32", "--data.init_args.batch_size=16",
        "--data.init_args.num_workers=0", "--data.init_args.image_size=24",
    ])  # fmt: skip
    rows = capsys.readouterr().out.splitlines()[-4:]
    assert rows[0].split()[0] == "epoch" and "2 jitters, cached" in rows[0]
    assert [r.split()[0] for r in rows[1:]] == ["1", "2", "median"]
    assert all(r.endswith("x") for r in rows[1:])
