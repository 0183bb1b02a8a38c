"""``contrastive export``, the export at the end of ``fit``, ``load_encoder`` and WiSE-FT."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from lightning.pytorch import Trainer
from PIL import Image
from safetensors.torch import load_file
from test_cli import TINY

import contrastive
from contrastive.cli import main
from contrastive.collection import read_ids
from contrastive.encoder import ExportError, load_encoder
from contrastive.export import ExportEncoder, export_encoder
from contrastive.methods import BYOL, SimCLR
from contrastive.wise_ft import interpolate

# The overlay makes the stats unmistakable: neither timm's defaults nor the project's.
MEAN, STD = [0.1, 0.2, 0.3], [0.4, 0.5, 0.6]


def _fit(root: Path, *args: str) -> Path:
    """One training step on tiny shapes data in ``root``; the run folder."""
    cwd = os.getcwd()
    os.chdir(root)
    try:
        tiny = [a for a in TINY if not a.startswith("--model.backbone_kwargs")]
        main(["fit", "--model=SimCLR", *tiny, "--trainer.max_steps=1", *args])
    finally:
        os.chdir(cwd)
    return root / "runs" / "contrastive" / "version_0"


@pytest.fixture(scope="session")
def timm_run(tmp_path_factory, timm_weights) -> Path:
    """SimCLR fine-tuning a pretrained timm model (local weights, its own stats) at 32 px."""
    overlay = f"{{file: {timm_weights}, mean: {MEAN}, std: {STD}}}"
    return _fit(
        tmp_path_factory.mktemp("timm_run"),
        "--model.backbone=timm:test_resnet",
        f"--model.backbone_kwargs={{pretrained: true, pretrained_cfg_overlay: {overlay}}}",
    )


@pytest.fixture(scope="session")
def cnn_run(tmp_path_factory) -> Path:
    """SimCLR on the small CNN from random init."""
    return _fit(tmp_path_factory.mktemp("cnn_run"), "--model.backbone_kwargs={width: 4}")


@pytest.fixture(scope="session")
def folder(tmp_path_factory) -> Path:
    """Six 32 px RGB pictures, the training size, so that nothing is resized."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for k in range(6):
        small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        Image.fromarray(small).resize((32, 32), Image.Resampling.BILINEAR).save(root / f"{k}.png")
    return root


def _embed(ckpt: Path, folder: Path, out: Path) -> tuple[np.ndarray, torch.Tensor]:
    """``contrastive embed`` of ``folder``, and the same files as uint8 ``(N, 3, 32, 32)``."""
    main(["embed", "--ckpt", str(ckpt), "--images", str(folder), "--out", str(out),
          "--device", "cpu", "--no_progress"])  # fmt: skip
    ids = read_ids(out.with_suffix(".ids.jsonl"))
    images = [np.asarray(Image.open(i).convert("RGB")) for i in ids]
    return np.load(out), torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)


def _last(run: Path) -> Path:
    return run / "checkpoints" / "last.ckpt"


def _export(*args: str) -> None:
    main(["export", *map(str, args)])


def test_fit_exports_an_encoder_that_embeds_as_contrastive_embed(timm_run, folder, tmp_path):
    """The export at the end of fit, through load_encoder and through plain timm, gives the
    features of ``contrastive embed`` on the same images."""
    export = timm_run / "encoder"
    config = json.loads((export / "config.json").read_text())
    assert config["backbone"] == "timm:test_resnet"
    assert config["backbone_kwargs"] == {}  # pretrained and its file: the export replaces them
    assert config["mean"] == pytest.approx(MEAN) and config["std"] == pytest.approx(STD)
    assert (config["image_size"], config["embed_dim"]) == (32, 96)
    assert config["method"] == "contrastive.methods.SimCLR"
    assert config["hyper_parameters"]["backbone"] == "timm:test_resnet"
    assert config["data"]["image_size"] == 32 and config["files"] == {
        "backbone": "backbone.safetensors"
    }
    expected, images = _embed(_last(timm_run), folder, tmp_path / "emb.npy")

    encoder = contrastive.load_encoder(export)
    assert encoder.mean == pytest.approx(tuple(MEAN)) and encoder.image_size == 32
    with torch.no_grad():
        ours = encoder.embed(images).numpy()
    assert np.abs(ours - expected).max() < 1e-5

    plain = timm.create_model(
        config["backbone"].removeprefix("timm:"),
        pretrained=True,
        num_classes=0,
        **config["backbone_kwargs"],
        pretrained_cfg_overlay=dict(file=str(export / "backbone.safetensors"),
                                    mean=config["mean"], std=config["std"]),
    ).eval()  # fmt: skip
    data = timm.data.resolve_model_data_config(plain)
    mean, std = (torch.tensor(data[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        theirs = plain((images.float() / 255 - mean) / std).numpy()
    assert np.abs(theirs - expected).max() < 1e-5


def test_export_command_writes_the_checkpoints_encoder(cnn_run, folder, tmp_path, capsys):
    out = tmp_path / "export"
    _export("--ckpt", _last(cnn_run), "--out", out)
    config = json.loads((out / "config.json").read_text())
    assert config["source"] == str(_last(cnn_run)) and config["wise_ft"] is None
    assert config["mean"] == [0.5] * 3 and config["std"] == [0.25] * 3  # random init: ours
    expected, images = _embed(_last(cnn_run), folder, tmp_path / "emb.npy")
    with torch.no_grad():
        ours = load_encoder(out).embed(images).numpy()
    assert np.abs(ours - expected).max() < 1e-5
    assert f"wrote {out}" in capsys.readouterr().err


def test_export_never_overwrites_without_being_asked(cnn_run, tmp_path, capsys):
    out = tmp_path / "export"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as info:
        _export("--ckpt", _last(cnn_run), "--out", out)
    err = capsys.readouterr().err
    assert info.value.code == 1 and "exists and is not an empty folder" in err
    assert len(err.strip().splitlines()) == 1 and sorted(os.listdir(out)) == ["notes.txt"]
    (out / "encoder.onnx").write_text("a previous export's file")
    _export("--ckpt", _last(cnn_run), "--out", out, "--overwrite")
    assert sorted(os.listdir(out)) == ["backbone.safetensors", "config.json", "notes.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export")]  # no staging left


@pytest.mark.parametrize(
    "args, message",
    [
        (["--ckpt", "missing.ckpt"], "--ckpt: no checkpoint file at missing.ckpt"),
        (["--wise_ft", "1.5"], "--wise_ft takes alpha in [0, 1]"),
        (["--wise_ft_base", "pretrained"], "--wise_ft_base needs --wise_ft ALPHA"),
        (["--wise_ft", "0.5"], "--wise_ft_base pretrained: the backbone 'small_cnn' was trained"),
        (["--format", "tflite"], "invalid choice: 'tflite'"),
    ],
)
def test_export_mistakes_are_one_line(cnn_run, tmp_path, capsys, args, message):
    if "--ckpt" not in args:
        args = ["--ckpt", str(_last(cnn_run)), *args]
    with pytest.raises(SystemExit) as info:
        _export(*args, "--out", tmp_path / "export")
    err = capsys.readouterr().err
    code = 2 if "invalid choice" in message else 1  # a parse error, as everywhere
    assert info.value.code == code and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "export").exists()


def _change(folder: Path, edit) -> None:
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda d: (d / "config.json").unlink(), "config.json: not found"),
        (lambda d: (d / "config.json").write_text("{"), "config.json: not JSON"),
        (lambda d: _change(d, lambda c: c.pop("mean")), "config.json: no field 'mean'"),
        (lambda d: _change(d, lambda c: c.update(std=[0.2, 0])), "field 'std' is not valid"),
        (lambda d: _change(d, lambda c: c.update(mean=[0.5])), "'mean' and 'std' need one value"),
        (lambda d: _change(d, lambda c: c.update(version=9)), "field 'version' is not valid"),
        (lambda d: _change(d, lambda c: c.update(backbone="small_cn")), "close matches: small_cnn"),
        (
            lambda d: _change(d, lambda c: c["backbone_kwargs"].update(pretrained=True)),
            "field 'backbone_kwargs' is not valid",
        ),  # fmt: skip
        (lambda d: (d / "backbone.safetensors").unlink(), "backbone.safetensors: not found"),
        (
            lambda d: _change(d, lambda c: c["backbone_kwargs"].update(width=8)),
            "does not fit backbone 'small_cnn': wrong shapes",
        ),  # fmt: skip
        (lambda d: (d / "backbone.safetensors").write_bytes(b"junk"), "backbone.safetensors"),
    ],
)
def test_load_encoder_names_what_is_wrong_in_one_line(cnn_run, tmp_path, breakage, message):
    out = shutil.copytree(cnn_run / "encoder", tmp_path / "export")  # the export at fit end
    breakage(out)
    with pytest.raises(ExportError) as info:
        load_encoder(out)
    assert message in str(info.value) and "\n" not in str(info.value)


# ---- WiSE-FT ------------------------------------------------------------------------------


def test_wise_ft_interpolates_tensor_by_tensor():
    gen = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(3, 4, generator=gen), "steps": torch.tensor(7)}
    tuned = {"w": torch.randn(3, 4, generator=gen), "steps": torch.tensor(9)}
    assert torch.equal(interpolate(base, tuned, 0.0)["w"], base["w"])
    assert torch.equal(interpolate(base, tuned, 1.0)["w"], tuned["w"])
    torch.testing.assert_close(interpolate(base, tuned, 0.5)["w"], (base["w"] + tuned["w"]) / 2)
    quarter = interpolate(base, tuned, 0.25)
    for i in range(3):  # the formula, element by element
        for j in range(4):
            expected = 0.75 * base["w"][i, j].item() + 0.25 * tuned["w"][i, j].item()
            assert quarter["w"][i, j].item() == pytest.approx(expected, abs=1e-6)
    assert quarter["steps"] == 9  # a counter is not a weight: the fine-tuned model's
    half = interpolate({"w": base["w"].half()}, {"w": tuned["w"].half()}, 0.5)
    assert half["w"].dtype == torch.float16


@pytest.mark.parametrize(
    "base, message",
    [
        ({"w": torch.zeros(3, 5)}, "'w' is (3, 4) fine-tuned and (3, 5) in the base"),
        ({}, "keys only fine-tuned: w; only in the base: nothing"),
        (
            {"w": torch.zeros(3, 4), "v": torch.zeros(1)},
            "keys only fine-tuned: nothing; only in the base: v",
        ),
    ],
)
def test_wise_ft_refuses_weights_that_do_not_match(base, message):
    with pytest.raises(ExportError) as info:
        interpolate(base, {"w": torch.ones(3, 4)}, 0.5, "backbone")
    assert str(info.value) == f"cannot interpolate the backbone: {message}"
    with pytest.raises(ExportError, match="alpha in"):
        interpolate({"w": torch.ones(1)}, {"w": torch.ones(1)}, -0.1)


def test_wise_ft_export_interpolates_with_the_pretrained_weights(timm_run, timm_weights, tmp_path):
    tuned = torch.load(_last(timm_run), weights_only=True)["state_dict"]
    tuned = {k.removeprefix("backbone."): v for k, v in tuned.items() if k.startswith("backbone.")}
    pretrained = load_file(timm_weights)
    _export("--ckpt", _last(timm_run), "--out", tmp_path / "half", "--wise_ft", "0.5",
            "--wise_ft_base", "pretrained")  # fmt: skip
    half = load_file(tmp_path / "half" / "backbone.safetensors")
    for key, value in tuned.items():
        if value.is_floating_point():
            torch.testing.assert_close(half[key], (pretrained[key] + value) / 2)
    config = json.loads((tmp_path / "half" / "config.json").read_text())
    assert config["wise_ft"] == {"alpha": 0.5, "base": "pretrained", "parts": ["backbone"]}
    _export("--ckpt", _last(timm_run), "--out", tmp_path / "base", "--wise_ft", "0")
    base = load_file(tmp_path / "base" / "backbone.safetensors")
    assert all(
        torch.equal(base[k], pretrained[k]) for k, v in tuned.items() if v.is_floating_point()
    )


def test_wise_ft_with_a_checkpoint_base_and_one_that_does_not_fit(
    cnn_run, timm_run, tmp_path, capsys
):
    _export("--ckpt", _last(cnn_run), "--out", tmp_path / "same", "--wise_ft", "0.3",
            "--wise_ft_base", _last(cnn_run))  # fmt: skip
    same = load_file(tmp_path / "same" / "backbone.safetensors")
    tuned = torch.load(_last(cnn_run), weights_only=True)["state_dict"]
    for key, value in same.items():  # interpolating a model with itself changes nothing
        torch.testing.assert_close(value, tuned[f"backbone.{key}"])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        _export("--ckpt", _last(cnn_run), "--out", tmp_path / "x", "--wise_ft", "0.3",
                "--wise_ft_base", _last(timm_run))  # fmt: skip
    err = capsys.readouterr().err
    assert "error: cannot interpolate the backbone: keys only fine-tuned: 0.weight" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "x").exists()


# ---- what an export cannot hold, and the run folder ---------------------------------------


def _trainer(root: Path) -> Trainer:
    return Trainer(max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
                   callbacks=[ExportEncoder()])  # fmt: skip


def _data():
    from contrastive.datamodules import ShapesDataModule

    return ShapesDataModule(num_train=32, num_val=16, num_test=16, num_bank=16, batch_size=16)


def test_a_resumed_run_exports_beside_its_earlier_export(tmp_path):
    for _ in range(2):
        model = SimCLR(backbone_kwargs={"width": 4}, projector_hidden_dim=16)
        _trainer(tmp_path).fit(model, _data())
    assert (tmp_path / "encoder" / "config.json").is_file()
    assert (tmp_path / "encoder_1" / "config.json").is_file()
    # Built in Python: the method is named by its class.
    config = json.loads((tmp_path / "encoder" / "config.json").read_text())
    assert config["method"] == "contrastive.methods.simclr.SimCLR"


def test_an_encoder_that_is_not_the_backbone_is_refused(tmp_path):
    """BYOL embedding through its projector: the command refuses, the run only warns."""
    model = BYOL(backbone_kwargs={"width": 4}, projector_hidden_dim=16, predictor_hidden_dim=16,
                 projector_dim=8, representation="projector")  # fmt: skip
    with pytest.raises(ExportError, match=r"BYOL.embed is not its backbone's features"):
        export_encoder(model, tmp_path / "out")
    assert not (tmp_path / "out").exists() and model.training  # its mode is restored
    with pytest.warns(UserWarning, match="the final encoder was not exported: BYOL.embed"):
        _trainer(tmp_path).fit(model, _data())


def test_clip_exports_its_projections_and_text_tower(tiny_checkpoint, tmp_path):
    from contrastive.methods import CLIP
    from contrastive.text import OpenCLIPText

    model = CLIP(text_tower=OpenCLIPText("Tiny-Test-ViT"), embed_dim=8, loss="siglip",
                 backbone_kwargs={"width": 4})  # fmt: skip
    out = export_encoder(model, tmp_path / "clip", data={"image_size": 32})
    clip = load_file(out / "clip.safetensors")
    state = model.state_dict()
    expected = [k for k in state if k.split(".")[0] not in ("backbone", "augment")]
    assert sorted(clip) == sorted(expected) and "logit_bias" in clip and "text_tower" in str(clip)
    assert all(torch.equal(clip[k], state[k]) for k in clip)
    config = json.loads((out / "config.json").read_text())
    assert config["files"] == {"backbone": "backbone.safetensors", "clip": "clip.safetensors"}
    assert config["clip"] == {"text_tower": None}  # built in Python: no config records it
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(load_encoder(out).embed(images), model.eval().embed(images))


ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))


@pytest.mark.skipif(not ONNX, reason="needs onnx, onnxscript and onnxruntime ([onnx] extra)")
def test_onnx_export_embeds_uint8_images_as_contrastive_embed(timm_run, folder, tmp_path):
    import onnxruntime

    out = tmp_path / "onnx"
    _export("--ckpt", _last(timm_run), "--out", out, "--format", "onnx")
    config = json.loads((out / "config.json").read_text())
    assert config["files"] == {"onnx": "encoder.onnx"} and sorted(os.listdir(out)) == [
        "config.json",
        "encoder.onnx",
    ]
    expected, images = _embed(_last(timm_run), folder, tmp_path / "emb.npy")
    session = onnxruntime.InferenceSession(str(out / "encoder.onnx"))
    (ours,) = session.run(None, {"images": images.numpy()})  # any batch size: 6 here, 2 traced
    assert ours.shape == expected.shape and np.abs(ours - expected).max() < 1e-4
    with pytest.raises(ExportError, match="holds an ONNX export"):
        load_encoder(out)


def test_onnx_without_the_extra_is_one_line(cnn_run, tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda m: None if m == "onnx" else real(m))
    with pytest.raises(SystemExit):
        _export("--ckpt", _last(cnn_run), "--out", tmp_path / "x", "--format", "onnx")
    assert "--format onnx needs onnx: pip install 'contrastive[onnx]'" in capsys.readouterr().err


def test_an_onnx_exporter_failure_is_one_line_and_leaves_nothing(cnn_run, tmp_path, monkeypatch):
    def fails(*args, **kwargs):
        raise RuntimeError("unsupported operator\n  a long exporter report")

    monkeypatch.setattr(importlib.util, "find_spec", lambda m: object())  # as if installed
    monkeypatch.setattr(torch.onnx, "export", fails)
    method = SimCLR.load_from_checkpoint(_last(cnn_run), weights_only=True)
    with pytest.raises(ExportError) as info:
        export_encoder(method, tmp_path / "x", data={"image_size": 32}, format="onnx")
    assert str(info.value) == "torch.onnx.export failed: RuntimeError: unsupported operator"
    assert os.listdir(tmp_path) == []  # neither the folder nor its staging copy
