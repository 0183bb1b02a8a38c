"""No checkpoint or data file runs code, at every place that loads one.

Each test plants a file whose loading would create a marker file: a pickle whose unpickling
calls ``exec``, or a checkpoint whose hyper-parameters name a class in a planted module that
writes the marker when imported. A control shows each file is live (the marker appears when
the file is loaded the unsafe way, or when the user trusts the module); then the loading point
must refuse it with one line and the marker must never appear.
"""

from __future__ import annotations

import pickle
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_cli import TINY
from test_conditional import model as conditional_model

from contrastive.checkpoints import CheckpointError, UntrustedModuleError, load_method
from contrastive.cli import main
from contrastive.datamodules.common import DataError
from contrastive.datamodules.vision_sets import read_class_names, read_split


class Exec:
    """Pickles as a call to ``exec(code)``."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)


def write_marker_code(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').write('ran')"


@pytest.fixture(scope="module")
def real_ckpt(tmp_path_factory) -> dict:
    """A real SimCLR checkpoint (one step on tiny data), loaded as a dict to plant things in."""
    root = tmp_path_factory.mktemp("real")
    cwd = Path.cwd()
    import os

    os.chdir(root)
    try:
        main(["fit", "--model=SimCLR", *TINY, "--trainer.max_steps=1"])
    finally:
        os.chdir(cwd)
    path = root / "runs" / "contrastive" / "version_0" / "checkpoints" / "last.ckpt"
    return torch.load(path, weights_only=True)


@pytest.fixture()
def marker(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path / "MARKER"


@pytest.fixture()
def evil_pickle(tmp_path, real_ckpt, marker) -> Path:
    """A complete checkpoint that also holds a pickled ``exec`` writing the marker."""
    path = tmp_path / "evil.ckpt"
    torch.save({**real_ckpt, "extra": Exec(write_marker_code(marker))}, path)
    torch.load(path, weights_only=False)  # the control: loaded the unsafe way, it runs
    assert marker.exists()
    marker.unlink()
    return path


@pytest.fixture()
def planted(tmp_path, marker) -> str:
    """A module in the working folder that writes the marker when imported; its name is new
    for every test, so no earlier import hides it."""
    name = f"planted_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        f"{write_marker_code(marker)}\n"
        "from contrastive.augment import Augment\n"
        "from contrastive.methods import SimCLR\n"
        "class Model(SimCLR):\n    pass\n"
        "class Aug(Augment):\n    pass\n"
        "import torch\n"
        "def optimizer(params) -> torch.optim.Optimizer:\n"
        "    return torch.optim.SGD(params, lr=0.1)\n"
    )
    yield name
    sys.modules.pop(name, None)


def naming(real_ckpt: dict, tmp_path: Path, where: str, value) -> Path:
    """The real checkpoint with one hyper-parameter changed to name the planted module."""
    hparams = {**real_ckpt["hyper_parameters"], where: value}
    path = tmp_path / f"names-{where.strip('_')}.ckpt"
    torch.save({**real_ckpt, "hyper_parameters": hparams}, path)
    return path


def refused(capsys, *args: str, code: int = 2) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code == code
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.count("\n") == 0, err
    return err


# ---- a pickle that calls code, at every loading point --------------------------------------


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test", "predict"])
def test_ckpt_path_never_unpickles_code(subcommand, evil_pickle, marker, capsys):
    err = refused(capsys, subcommand, "--model=SimCLR", *TINY, f"--ckpt_path={evil_pickle}")
    assert "refused" in err and "evil.ckpt" in err
    assert not marker.exists()


def test_resume_last_never_unpickles_code(evil_pickle, marker, capsys):
    folder = Path("runs/contrastive/version_0/checkpoints")
    folder.mkdir(parents=True)
    evil_pickle.rename(folder / "last.ckpt")
    err = refused(capsys, "fit", "--model=SimCLR", *TINY, "--ckpt_path=last")
    assert "does not load" in err and "refused" in err
    assert not marker.exists()


@pytest.mark.parametrize("command", ["embed", "similar", "compare"])
def test_explore_never_unpickles_code(command, evil_pickle, marker, capsys):
    args = ["--images", "shapes:4", "--no_progress", "--device", "cpu"]
    if command == "compare":
        args = ["similar", "--ckpt", str(evil_pickle), "--compare_ckpt", str(evil_pickle), *args]
    else:
        args = [command, "--ckpt", str(evil_pickle), *args]
    err = refused(capsys, *args, "--out", "out.png")
    assert "refused" in err
    assert not marker.exists()


def test_backbone_checkpoint_never_unpickles_code(evil_pickle, marker, capsys):
    err = refused(
        capsys,
        "fit",
        "--model=SimCLR",
        *TINY,
        f"--model.backbone_kwargs={{width: 4, checkpoint: {evil_pickle}}}",
        "--trainer.max_steps=1",
    )
    assert "refused" in err and "backbone 'small_cnn'" in err
    assert not marker.exists()


@pytest.mark.parametrize("as_folder", [False, True])
def test_conditional_towers_never_unpickle_code(as_folder, evil_pickle, marker):
    towers = evil_pickle
    if as_folder:
        towers = evil_pickle.parent / "lit" / "version_0" / "checkpoints" / "last.ckpt"
        towers.parent.mkdir(parents=True)
        evil_pickle.rename(towers)
        towers = towers.parents[2]
    with pytest.raises(CheckpointError, match="refused"):
        conditional_model(towers=str(towers))
    assert not marker.exists()


def test_triplets_tool_never_unpickles_code(evil_pickle, marker, tmp_path, capsys):
    images = tmp_path / "images" / "cat"
    images.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(images / f"{i}.png")
    err = refused(capsys, "data", "triplets", "--images", str(images.parent), "--pairs",
                  "neighbors", "--ckpt", str(evil_pickle), "--out", "t.jsonl")  # fmt: skip
    assert "refused" in err
    assert not marker.exists()


@pytest.mark.parametrize("batch", ["data_batch_1", "batches.meta"])
def test_cifar_batches_never_unpickle_code(batch, marker, tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rows = np.zeros((2, 3072), np.uint8)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({"data": rows, "labels": [0, 1]}, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": ["a", "b"]}, protocol=2))
    planted = {"data": rows, "labels": [0, 1], "x": Exec(write_marker_code(marker))}
    (folder / batch).write_bytes(pickle.dumps(planted, protocol=2))
    with pytest.raises(DataError, match=rf"{batch}: not a CIFAR batch \(it names \w+\.exec\)"):
        read_split("cifar10", tmp_path, "train")
        read_class_names("cifar10", tmp_path)
    assert not marker.exists()
    pickle.loads((folder / batch).read_bytes())  # the control: plain pickle runs it
    assert marker.exists()


def test_export_never_unpickles_code(evil_pickle, marker, capsys):
    err = refused(capsys, "export", "--ckpt", str(evil_pickle), "--out", "enc", code=1)
    assert "refused" in err and not Path("enc").exists()
    assert not marker.exists()


# ---- a checkpoint that names a module outside contrastive -----------------------------------


@pytest.mark.parametrize("command", ["embed", "similar", "compare"])
def test_explore_imports_no_module_a_checkpoint_names(
    command, real_ckpt, planted, marker, tmp_path, capsys
):
    path = naming(real_ckpt, tmp_path, "_class_path", f"{planted}.Model")
    ckpt = ["--ckpt", str(path)]
    if command == "compare":
        ckpt = ["--ckpt", str(naming(real_ckpt, tmp_path, "temperature", 0.2)),
                "--compare_ckpt", str(path)]  # fmt: skip
    args = ["similar" if command == "compare" else command, *ckpt, "--images", "shapes:4",
            "--no_progress", "--device", "cpu"]  # fmt: skip
    err = refused(capsys, *args, "--out", "out.png")
    assert f"{planted}.Model" in err and f"--trust_module {planted}" in err
    assert not marker.exists() and str(tmp_path) not in sys.path
    # the control: trusted by the user, it is imported (and its code runs)
    main([*args, "--out", "trusted.png", "--trust_module", planted])
    assert marker.exists()
    sys.path.remove(str(tmp_path))


@pytest.mark.parametrize("subcommand", ["fit", "test"])
def test_ckpt_path_imports_no_module_its_hyper_parameters_name(
    subcommand, real_ckpt, planted, marker, tmp_path, capsys
):
    """Lightning parses a ``--ckpt_path``'s hyper-parameters into the model's config (importing
    what they name); a class the user did not type is refused first."""
    path = naming(real_ckpt, tmp_path, "_class_path", f"{planted}.Model")
    args = [subcommand, "--model=SimCLR", *TINY, f"--ckpt_path={path}", "--trainer.max_steps=2"]
    err = refused(capsys, *args)
    assert f"names the class {planted}.Model" in err and f"--model {planted}.Model" in err
    assert not marker.exists() and str(tmp_path) not in sys.path
    main([*args, f"--model={planted}.Model"])  # the control: typed by the user, it is imported
    assert marker.exists()
    sys.path.remove(str(tmp_path))


@pytest.mark.parametrize(
    "where, value",
    [("augment", {"class_path": "{m}.Aug"}), ("optimizer", {"class_path": "{m}.optimizer"})],
)
def test_a_nested_class_path_is_refused_before_any_import(
    where, value, real_ckpt, planted, marker, tmp_path
):
    value = {"class_path": value["class_path"].format(m=planted)}
    path = naming(real_ckpt, tmp_path, where, value)
    with pytest.raises(UntrustedModuleError, match=f"--trust_module {planted}"):
        load_method(path)
    assert not marker.exists()


def test_an_import_from_outside_the_installation_is_refused_whatever_string_leads_to_it(
    real_ckpt, planted, marker, tmp_path, monkeypatch
):
    """Even with the planted folder on ``sys.path``, a plain string that jsonargparse resolves
    as an import (a callable optimizer given as a dotted path) imports nothing."""
    monkeypatch.syspath_prepend(str(tmp_path))
    path = naming(real_ckpt, tmp_path, "optimizer", f"{planted}.optimizer")
    with pytest.raises(UntrustedModuleError, match=f"import the module {planted}"):
        load_method(path)
    assert not marker.exists()
    model, _ = load_method(path, trusted=[planted])  # the control
    assert marker.exists() and model.optimizer.__module__ == planted


def test_the_triplets_tool_imports_no_module_a_checkpoint_names(
    real_ckpt, planted, marker, tmp_path, capsys
):
    images = tmp_path / "images" / "cat"
    images.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(images / f"{i}.png")
    path = naming(real_ckpt, tmp_path, "_class_path", f"{planted}.Model")
    err = refused(capsys, "data", "triplets", "--images", str(images.parent), "--pairs",
                  "neighbors", "--ckpt", str(path), "--out", "t.jsonl")  # fmt: skip
    assert f"--trust_module {planted}" in err
    assert not marker.exists()


def test_export_imports_no_module_a_checkpoint_names(real_ckpt, planted, marker, tmp_path, capsys):
    path = naming(real_ckpt, tmp_path, "_class_path", f"{planted}.Model")
    err = refused(capsys, "export", "--ckpt", str(path), "--out", "enc", code=1)
    assert f"--trust_module {planted}" in err
    assert not marker.exists()


def test_the_working_folder_is_on_the_import_path_only_for_a_class_the_user_typed(
    planted, marker, tmp_path, capsys
):
    main(["fit", "--model=SimCLR", *TINY, "--trainer.max_steps=1"])
    assert str(tmp_path) not in sys.path and not marker.exists()
    main(["fit", f"--model={planted}.Model", *TINY, "--trainer.max_steps=1"])
    assert sys.path[0] == str(tmp_path) and marker.exists()  # typed: imported, as asked
    sys.path.remove(str(tmp_path))
