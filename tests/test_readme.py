"""The README's "Adding a method" section, as a new user follows it: its example written to a
module, trained with its command through the real CLI, then embedded."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest

from contrastive.cli import main

README = Path(__file__).parents[1] / "README.md"
TINY = [
    "--data.num_train=64",
    "--data.num_val=32",
    "--data.num_test=32",
    "--data.num_bank=64",
    "--data.batch_size=16",
    "--model.backbone_kwargs={width: 4}",
    "--trainer.max_steps=3",
    "--trainer.enable_progress_bar=false",
]


@pytest.fixture(autouse=True)
def _fresh_module(tmp_path, monkeypatch):
    """Each test writes my_methods.py in its own folder and imports it anew."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "my_methods", raising=False)


def _section() -> str:
    text = README.read_text()
    return text[text.index("## Adding a method") :]


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", _section(), flags=re.DOTALL)


def test_the_readme_example_trains_through_the_cli_and_embeds(recwarn):
    (code,) = _blocks("python")
    Path("my_methods.py").write_text(code)  # the file the README tells the user to write
    (commands,) = _blocks("bash")
    fit = next(line for line in commands.splitlines() if "--trainer.max_epochs" in line)
    args = shlex.split(fit.split("#")[0])
    assert args[:3] == ["contrastive", "fit", "--model"]
    main([*args[1:], *TINY])
    assert not [w for w in recwarn if "views of each training image" in str(w.message)]
    checkpoint = next(Path("runs").glob("*/version_0/checkpoints/last.ckpt"))
    embed = ["embed", "--ckpt", str(checkpoint), "--images", "shapes:4", "--out", "emb.npy"]
    main([*embed, "--trust_module", "my_methods"])  # the user's module: trusted by name
    assert np.load("emb.npy").shape[0] == 4


def test_the_readme_example_takes_chunk_size():
    Path("my_methods.py").write_text(_blocks("python")[0])
    main(["fit", "--model=my_methods.AlignUniform", "--model.chunk_size=4", *TINY])
    assert next(Path("runs").glob("*/version_0/checkpoints/last.ckpt")).is_file()


def test_the_readme_python_api_runs_as_written(capsys):
    """The "Python API" section's code, as a user runs it from the repository root."""
    text = README.read_text()
    section = text[text.index("## Python API") : text.index("## Architecture")]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    Path("configs").symlink_to(README.parent / "configs")
    namespace: dict = {}
    exec(compile(code, "README.md (Python API)", "exec"), namespace)
    run, emb, rows = namespace["run"], namespace["emb"], namespace["rows"]
    assert run.checkpoint.is_file() and (run.folder / "config.yaml").is_file()
    assert emb.z.shape == (64, namespace["model"].backbone.num_features) and len(rows) == 8
    assert Path("pairs.png").is_file() and namespace["encoder"].num_features == emb.z.shape[1]
    assert {"test/knn/shape", "test/linear/shape"} <= set(namespace["figures"])
    assert str(run.checkpoint) in capsys.readouterr().out  # the print line
