"""Every mistake a user types ends in one line through the real ``main``: exit status 2, no
traceback, no usage dump, the key, file or value named (with close matches where they help);
``--help`` still prints the whole usage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_cli import TINY

from contrastive.cli import main

CONFIGS = Path(__file__).parents[1] / "configs"


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("bad.yaml").write_text("model:\n  class_path: SimCLR\n   init_args: [\n")


def one_line_error(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code == 2
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert lines[-1].startswith("error: "), out.err  # ends in the error, one line
    assert sum(ln.startswith("error") for ln in lines) == 1, out.err
    assert "Traceback" not in out.err and "usage:" not in out.err + out.out
    return lines[-1]


FIT = ["fit", "--model=SimCLR", *TINY, "--trainer.max_steps=1"]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--model.init_args.tempreature=0.1"], ["tempreature", "did you mean temperature"]),
        (["--model.temperature=abc"], ["--model.init_args.temperature", "a number", "'abc'"]),
        (["--model=contrastive.methods.SimCLRR"], ["SimCLRR", "no such method", "SimCLR?"]),
        (["--data=NopeDataModule"], ["NopeDataModule", "no such data module", "known:"]),
        (["--config=missing.yaml"], ["missing.yaml", "no such file"]),
        (["--config=bad.yaml"], ["bad.yaml", "YAML syntax error at line 3, column 13"]),
        (["--data.batch_size=0"], ["ShapesDataModule", "batch_size must be >= 1, got 0"]),
        (
            ["--data.caption_dropout={colour: 0.5}"],
            ["ShapesDataModule", "caption_dropout: 'colour' is no attribute"],
        ),
        (["--trainer.max_epohs=3"], ["--trainer.max_epohs", "did you mean --trainer.max_epochs"]),
        (["--model.optimizer=torch.optim.Adamm"], ["torch.optim.Adamm", "did you mean Adam"]),
        (["--model.optimizer.lrr=3"], ["optimizer.init_args.lrr", "AdamW", "did you mean lr"]),
        (["--model.backbone=resnt18"], ["unknown backbone 'resnt18'", "resnet18"]),
        (
            ["--model.backbone_kwargs={width: 4, checkpoint: /nope/x.pt}"],
            ["backbone 'small_cnn'", "no checkpoint file at /nope/x.pt"],
        ),
    ],
    ids=lambda v: v[0] if isinstance(v, list) else "",
)
def test_a_typed_mistake_is_one_line(args, expected, capsys):
    err = one_line_error(capsys, *FIT, *args)
    assert all(e in err for e in expected), err


@pytest.mark.parametrize("subcommand", ["fit", "test"])
def test_a_missing_checkpoint_is_one_line(subcommand, capsys):
    err = one_line_error(capsys, subcommand, "--model=SimCLR", *TINY, "--ckpt_path=nope.ckpt")
    assert "--ckpt_path nope.ckpt: no such checkpoint file" in err


@pytest.fixture()
def own_captions(tmp_path) -> str:
    """A user's caption CSV: images and captions, no class names."""
    rows = ["image,caption"]
    for i in range(8):
        Image.fromarray(np.full((16, 16, 3), 30 * i, np.uint8)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,a grey square number {i}")
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    return str(tmp_path / "pairs.csv")


@pytest.mark.parametrize("config", ["clip", "lit_minilm"])
def test_prompts_the_data_cannot_answer_are_skipped_with_a_note(config, own_captions, recwarn):
    """The configs' zero-shot prompts name the shapes' attributes; a caption CSV has none: the
    run goes on with retrieval, and one note names the prompts left out."""
    main([
        "fit", f"--config={CONFIGS / config}.yaml", "--data=ImageTextDataModule",
        f"--data.train={own_captions}", f"--data.val={own_captions}", "--data.num_workers=0",
        "--data.batch_size=4", "--trainer.max_steps=1", "--trainer.logger.init_args.save_dir=runs",
        "--model.backbone_kwargs={width: 4}",
    ])  # fmt: skip
    notes = [str(w.message) for w in recwarn if "no class names for" in str(w.message)]
    assert len(notes) == 1 and "'shape'" in notes[0] and "prompts are skipped" in notes[0]


def test_help_still_prints_the_whole_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out
    assert usage.startswith("usage:") and "--trainer.max_epochs" in usage
    assert len(usage.splitlines()) > 100


def test_a_condition_weight_for_no_condition_is_one_line(capsys):
    err = one_line_error(
        capsys, "fit", f"--config={CONFIGS / 'conditional.yaml'}", "--model.init_args.towers=null",
        "--data.condition_weights={hue: 2}", "--trainer.max_steps=1",
    )  # fmt: skip
    assert "ShapesTripletDataModule: condition_weights: 'hue' is not one of the conditions" in err
