"""``--data CLASS`` on top of a config naming another data class (contrastive/cli_data.py):
the new class starts from its own defaults, and one line names what was left behind."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from contrastive.cli import main
from contrastive.cli_data import start_from_defaults

CONFIGS = Path(__file__).parents[1] / "configs"
SIMCLR = str(CONFIGS / "simclr.yaml")  # ShapesDataModule, image_size 32, batch_size 128


def test_a_switch_gets_a_reset_and_a_note_naming_the_values_left(capsys):
    args = ["fit", f"--config={SIMCLR}", "--data", "ImageFolderDataModule", "--data.root=x"]
    assert start_from_defaults(args) == [
        "fit",
        f"--config={SIMCLR}",
        "--data=null",
        "--data",
        "ImageFolderDataModule",
        "--data.root=x",
    ]
    note = capsys.readouterr().err.strip()
    assert note.startswith("note: --data ImageFolderDataModule replaces the config's ShapesData")
    # Shared settings are named; shapes-only ones (num_train, shared_factors) are not.
    assert "image_size=32" in note and "batch_size=128" in note and "num_train" not in note
    assert len(note.splitlines()) == 1


@pytest.mark.parametrize(
    "args",
    [
        ["fit", "--config", SIMCLR, "--data=ShapesDataModule"],  # the config's own class
        ["fit", "--config", SIMCLR, "--data=contrastive.datamodules.ShapesDataModule"],
        ["fit", "--data", "ImageFolderDataModule"],  # no config: nothing to carry over
        ["fit", "--config", SIMCLR, "--data=data.yaml"],  # a data config file, not a class
        ["fit", "--data.image_size=64", "--config", SIMCLR],
    ],
)
def test_no_switch_no_change(args, capsys):
    assert start_from_defaults(args) == args
    assert capsys.readouterr().err == ""


def test_a_later_config_or_data_flag_is_what_a_switch_is_from(tmp_path):
    other = tmp_path / "folder.yaml"
    other.write_text(yaml.safe_dump({"data": {"class_path": "ImageFolderDataModule"}}))
    args = ["fit", "-c", SIMCLR, "-c", str(other), "--data", "ImageFolderDataModule"]
    assert start_from_defaults(args) == args  # the second config already names that class
    args = ["fit", "-c", SIMCLR, "--data=ImageFolderDataModule", "--data=ShapesDataModule"]
    assert start_from_defaults(args).count("--data=null") == 2


def printed_data(capsys, *args: str) -> dict:
    with pytest.raises(SystemExit):  # --print_config exits
        main(["fit", *args, "--print_config"])
    return yaml.safe_load(capsys.readouterr().out)["data"]["init_args"]


def test_the_cli_starts_a_switched_data_class_from_its_defaults(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = printed_data(
        capsys, f"--config={SIMCLR}", "--data=ImageFolderDataModule", "--data.root=x"
    )
    assert data["image_size"] == 224 and data["batch_size"] == 256  # its own, not 32 and 128
    assert data["num_bank"] == 10_000 and data["num_workers"] is None
    data = printed_data(
        capsys,
        f"--config={SIMCLR}",
        "--data=ImageFolderDataModule",
        "--data.root=x",
        "--data.image_size=96",
    )
    assert data["image_size"] == 96  # what is set after the switch applies
    data = printed_data(capsys, f"--config={SIMCLR}", "--data.image_size=48")
    assert data["image_size"] == 48 and data["batch_size"] == 128  # no switch: the config's
