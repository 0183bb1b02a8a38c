"""The command line end to end, on tiny built-in data, through the real ``main``."""

from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from contrastive.cli import main
from contrastive.methods import SimCLR

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))

# Tiny data and model: each run takes seconds. Flags every shapes config accepts.
TINY = [
    "--data.num_train=64",
    "--data.num_val=32",
    "--data.num_test=32",
    "--data.num_bank=64",
    "--data.batch_size=16",
    "--data.eval_batch_size=32",
    "--model.backbone_kwargs={width: 4}",
    "--trainer.logger.init_args.save_dir=runs",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def run(*args: str) -> None:
    main([*args])


class MyMethod(SimCLR):
    """A user's method, defined outside the package: SimCLR with a second temperature."""

    def __init__(self, extra_temperature: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.extra_temperature = extra_temperature
        self.losses: list[float] = []

    def training_loss(self, batch: dict) -> torch.Tensor:
        loss = super().training_loss(batch)
        self.losses.append(loss.item())
        return loss


class StopAtStep(Callback):
    """Simulates an interrupted run: an error after a given number of steps."""

    def __init__(self, step: int = 3) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


class RecordStart(Callback):
    def on_train_start(self, trainer, pl_module) -> None:
        Path("start_step.txt").write_text(str(trainer.global_step))


# Configs made for big data and GPUs run here on the small CNN at 32 px in fp32, on shapes.
SMALL = [
    "--model.backbone=small_cnn",
    "--model.augment.init_args.size=32",
    "--trainer.precision=32",
]
DEJAVU = ["--data.fonts=/usr/share/fonts/truetype/dejavu", "--data.families=null",
          "--data.num_workers=0"]  # fmt: skip
# Configs of other data run here on shapes, from the shapes module's own defaults (--data names
# another class: nothing of the config's data settings is carried over). Their own data:
# byol_nga's NGA images in test_nga.py, the image-folder configs in test_own_images.py.
ON_SHAPES = ["--data=ShapesDataModule", *SMALL]
OVERRIDES = {
    "byol_nga": ON_SHAPES,
    "simclr_imagefolder": ON_SHAPES,
    "byol_imagefolder": ON_SHAPES,
    "clip": ["--data.num_workers=0"],
    "lit_minilm": ["--data.num_workers=0"],
    # The towers' checkpoint comes from a LiT run (step 1 of the recipe): random towers here.
    "conditional": ["--data.num_workers=0", "--model.towers=null"],
    "conditional_clip": ["--data.num_workers=0", "--model.towers=null"],
    # The fonts configs name the benchmark's 35 families (benchmarks/fonts_setup.sh); the
    # suite has DejaVu only.
    "fonts_lit": [*DEJAVU],
    "fonts_conditional": [*DEJAVU, "--model.towers=null"],
}


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_shipped_config_fits_and_tests_through_the_cli(config, capsys):
    # Overrides first: they may switch the data class, whose flags TINY then sets.
    tiny = [f"--config={config}", *OVERRIDES.get(config.stem, []), *TINY]
    # Validated inside the fit, after its second step (the callbacks' validation hooks).
    validated = ["--trainer.check_val_every_n_epoch=1", "--trainer.val_check_interval=2"]
    run("fit", *tiny, "--trainer.max_steps=2", "--trainer.max_epochs=1", *validated)
    run("test", *tiny, "--ckpt_path=last")
    out = capsys.readouterr().out
    run("predict", *tiny, "--ckpt_path=last")
    assert "What the embedding knows" in out and "linear random" in out
    if config.stem in ("clip", "lit_minilm"):
        assert "zero-shot shape" in out and "i2t R@5" in out
    if config.stem == "fonts_lit":
        assert "zero-shot letter" in out and "zero-shot family" in out
    if "conditional" in config.stem:
        assert "Conditional retrieval (gallery 32, 32 queries)" in out and "held-out" in out
    run_dir = next(Path("runs").glob("*/version_0"))
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    tags = [EventAccumulator(str(e)).Reload().Tags()["scalars"] for e in run_dir.glob("events.*")]
    assert any(t.startswith("val/") for found in tags for t in found)  # validated in the fit
    # The checkpoint alone rebuilds the method (text towers included) for `contrastive embed`.
    main(["embed", "--ckpt", str(run_dir / "checkpoints" / "last.ckpt"), "--images",
          "shapes:4", "--out", "emb.npy"])  # fmt: skip
    assert np.load("emb.npy").shape[0] == 4
    assert (run_dir / "config.yaml").is_file() and (run_dir / "config_2.yaml").is_file()
    if "--trainer.precision=32" not in tiny:  # the configs leave it to the CLI: measured, and
        # here (conftest) one candidate: float32
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert saved["trainer"]["precision"] == "32-true"


def test_a_precision_the_user_names_is_kept():
    run("fit", "--model=SimCLR", *TINY, "--trainer.max_steps=1", "--trainer.precision=64-true")
    saved = yaml.safe_load(Path("runs/contrastive/version_0/config.yaml").read_text())
    assert saved["trainer"]["precision"] == "64-true"


@pytest.mark.parametrize("optimizer", ["torch.optim.SGD", "torch.optim.AdamW", "timm.optim.Lars"])
def test_optimizers_are_chosen_in_the_config(optimizer):
    run(
        "fit",
        "--model=SimCLR",
        f"--model.optimizer={optimizer}",
        "--model.optimizer.init_args.lr=0.1",
        "--model.optimizer.init_args.weight_decay=0.01",
        *TINY,
        "--trainer.max_steps=2",
    )
    saved = yaml.safe_load(Path("runs/contrastive/version_0/config.yaml").read_text())
    assert saved["model"]["init_args"]["optimizer"]["class_path"] == optimizer
    state = torch.load("runs/contrastive/version_0/checkpoints/last.ckpt", weights_only=True)
    decay, no_decay = state["optimizer_states"][0]["param_groups"]
    assert decay["lr"] < 0.1 and decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0


def test_print_config_shows_the_resolved_method(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run("fit", "--model=SimCLR", "--print_config")
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] == "contrastive.methods.SimCLR"
    assert printed["data"]["class_path"] == "contrastive.datamodules.ShapesDataModule"


def test_a_subclass_defined_in_a_test_file_trains_through_model(capsys):
    run(
        "fit",
        f"--model={__name__}.MyMethod",
        "--model.extra_temperature=0.3",
        *TINY,
        "--trainer.max_steps=3",
    )
    saved = yaml.safe_load(next(Path("runs").glob("*/version_0/config.yaml")).read_text())
    assert saved["model"]["class_path"].endswith("MyMethod")
    assert saved["model"]["init_args"]["extra_temperature"] == 0.3


def test_resume_after_an_interrupted_run_continues_from_the_saved_step():
    common = [*TINY, "--checkpoint.every_n_train_steps=2", "--trainer.max_steps=6"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        run("fit", "--model=SimCLR", *common, f"--trainer.callbacks+={__name__}.StopAtStep")
    run_dir = Path("runs/contrastive/version_0")
    first = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)
    assert first["global_step"] == 2
    config_before = (run_dir / "config.yaml").read_text()

    run(
        "fit",
        "--model=SimCLR",
        *common,
        "--ckpt_path=last",
        f"--trainer.callbacks+={__name__}.RecordStart",
    )
    assert Path("start_step.txt").read_text() == "2"
    resumed = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)
    assert resumed["global_step"] == 6
    assert not Path("runs/contrastive/version_1").exists()  # the same run, continued
    assert (run_dir / "config.yaml").read_text() == config_before  # never overwritten
    assert (run_dir / "config_1.yaml").is_file()


def test_a_new_run_never_overwrites_an_earlier_one():
    for _ in range(2):
        run("fit", "--model=SimCLR", *TINY, "--trainer.max_steps=1")
    assert sorted(p.name for p in Path("runs/contrastive").iterdir()) == ["version_0", "version_1"]


def test_resume_without_an_earlier_run_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run("fit", "--model=SimCLR", *TINY, "--ckpt_path=last")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no earlier run" in err


def test_fit_prints_its_run_folder_at_the_start_and_at_the_end(capsys):
    run("fit", "--model=SimCLR", *TINY, "--trainer.max_steps=1")
    run("fit", "--model=SimCLR", *TINY, "--trainer.max_steps=1")
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("run folder:")]
    last = "runs/contrastive/version_1/checkpoints/last.ckpt"
    assert lines == [
        "run folder: runs/contrastive/version_0",
        "run folder: runs/contrastive/version_0 (last checkpoint: "
        "runs/contrastive/version_0/checkpoints/last.ckpt)",
        "run folder: runs/contrastive/version_1",
        f"run folder: runs/contrastive/version_1 (last checkpoint: {last})",
    ]


def test_a_run_leaves_out_the_warnings_that_say_nothing_to_its_user(monkeypatch):
    # As from a terminal: sys.argv holds the arguments the CLI also passes to LightningCLI.
    monkeypatch.setattr(sys, "argv", ["contrastive", "fit", "--model=SimCLR", *TINY])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run("fit", "--model=SimCLR", *TINY, "--trainer.max_steps=1")
        warnings.warn("a warning of the user's own", stacklevel=1)
    shown = [str(w.message) for w in caught]
    assert "a warning of the user's own" in shown
    for known in ("args parameter is intended", "overridden `on_after_batch_transfer`", "LeafSpec"):
        assert not [m for m in shown if known in m], known


# ---- the subcommands and the flag style -----------------------------------------------------


def test_help_lists_every_subcommand_and_each_has_its_own_help(capsys):
    from lightning.pytorch.cli import LightningCLI

    from contrastive.cli import SUBCOMMANDS

    with pytest.raises(SystemExit) as exit_info:
        run("--help")
    assert exit_info.value.code == 0
    listed = re.findall(r"^  (\w+)  ", capsys.readouterr().out, flags=re.M)
    assert listed == list(SUBCOMMANDS)
    assert {"fit", "validate", "test", "predict", "embed", "similar", "export", "probe"} <= set(
        listed
    )
    assert set(LightningCLI.subcommands()) <= set(listed)  # a Trainer method Lightning adds
    for command in [*SUBCOMMANDS, "data nga", "data triplets"]:
        with pytest.raises(SystemExit) as exit_info:
            run(*command.split(), "--help")
        assert exit_info.value.code == 0, command
        assert "usage:" in capsys.readouterr().out, command


@pytest.mark.parametrize(
    "command", ["embed", "similar", "export", "probe", "data nga", "data triplets"]
)
def test_every_tool_option_is_spelled_with_underscores_as_lightnings(command, capsys):
    with pytest.raises(SystemExit):
        run(*command.split(), "--help")
    options = set(re.findall(r"(?<![\w-])--[\w-]+", capsys.readouterr().out))
    assert len(options) > 3 and not [o for o in options if "-" in o[2:]], options


def test_a_hyphenated_option_is_read_as_the_same_option():
    from contrastive.explore import build_parser

    base = ["similar", "--ckpt", "a.ckpt", "--images", "d", "--out", "p.png"]
    underscored = [*base, "--batch_size", "3", "--compare_ckpt=b.ckpt", "--no_progress"]
    hyphenated = [*base, "--batch-size", "3", "--compare-ckpt=b.ckpt", "--no-progress"]
    parsed = build_parser().parse_args(hyphenated)
    assert parsed == build_parser().parse_args(underscored)
    assert (parsed.batch_size, parsed.compare_ckpt, parsed.no_progress) == (3, "b.ckpt", True)


@pytest.mark.parametrize(
    "args, message",
    [
        (["fitt"], "unknown subcommand 'fitt'; did you mean fit?"),
        (["embedd", "--ckpt", "x"], "unknown subcommand 'embedd'; did you mean embed?"),
        (
            ["embed", "--ckpt", "x", "--images", "d", "--out", "o", "--batch-sise", "2"],
            "unrecognized arguments: --batch_sise",
        ),  # fmt: skip
    ],
)
def test_a_mistyped_subcommand_or_option_is_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(*args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err


def test_no_subcommand_prints_the_list_and_fails(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert "similar" in capsys.readouterr().err
