"""Tests for JPEG decoding on the device (contrastive/datamodules/device_decode.py), run on the
CPU: ``decode_jpeg`` takes ``device="cpu"`` too, so the path a GPU takes is the one tested here,
nvJPEG aside (benchmarks/gpu_check.py runs it on a GPU)."""

from __future__ import annotations

from pathlib import Path

import lightning
import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from PIL import Image
from test_imagefolder import RecordBatches, write_class_tree
from test_images import bad_files, encode, write_odd_images

from contrastive.datamodules import ImageFolderDataModule
from contrastive.datamodules.common import Skipped
from contrastive.datamodules.device_decode import ENCODED, fit_square_float, read_encoded
from contrastive.datamodules.images import DEFAULT_MAX_PIXELS, fit_square, load_image
from contrastive.methods import SimCLR

CPU = torch.device("cpu")


def photo(width: int, height: int, seed: int) -> Image.Image:
    """A smooth RGB image with edges (gradients and a disc), as photographs compress."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    a, b, c = rng.uniform(0.2, 1.0, 3)
    pixels = np.stack([x / width * 255 * a, y / height * 255 * b, (x + y) % 97 * 2.5 * c], -1)
    disc = (x - width / 2) ** 2 + (y - height / 3) ** 2 < (min(width, height) / 4) ** 2
    pixels[disc] = rng.uniform(0, 255, 3)
    return Image.fromarray(pixels.astype(np.uint8))


def rotated_jpeg(image: Image.Image) -> bytes:
    """A JPEG whose EXIF says: rotate 90 degrees to show it upright."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(image, "JPEG", quality=90, exif=exif)


def batches(module: ImageFolderDataModule, split: str = "train") -> list[dict]:
    """Every batch of a loader, moved to the CPU "device" by the data module's own hook."""
    loader = module.train_dataloader() if split == "train" else module.val_dataloader()[1]
    return [module.transfer_batch_to_device(b, CPU, 0) for b in loader]


def module(root: Path, decode_on_device: bool, **kwargs) -> ImageFolderDataModule:
    args = dict(image_size=24, batch_size=4, eval_batch_size=5, num_workers=0, val_fraction=0.0)
    data = ImageFolderDataModule(root, decode_on_device=decode_on_device, **{**args, **kwargs})
    data.setup("fit")
    return data


# ---- what the workers give ----------------------------------------------------------------


def test_workers_give_the_bytes_of_plain_jpegs_and_decode_the_rest(tmp_path):
    files = {
        "rgb.jpg": encode(photo(64, 48, 0), "JPEG"),
        "gray.jpg": encode(photo(64, 48, 1).convert("L"), "JPEG"),
        "progressive.jpg": encode(photo(64, 48, 2), "JPEG", progressive=True),
        "cmyk.jpg": encode(photo(64, 48, 3).convert("CMYK"), "JPEG"),
        "rotated.jpg": rotated_jpeg(photo(64, 48, 4)),
        "photo.png": encode(photo(64, 48, 5), "PNG"),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    kinds = {name: read_encoded(tmp_path / name, 24, DEFAULT_MAX_PIXELS) for name in files}
    for name in ("rgb.jpg", "gray.jpg", "progressive.jpg"):
        assert kinds[name].shape == (len(files[name]),) and kinds[name].dtype == torch.uint8
        assert kinds[name].numpy().tobytes() == files[name]
    for name in ("cmyk.jpg", "rotated.jpg", "photo.png"):  # decoded in the worker
        assert torch.equal(kinds[name], load_image(tmp_path / name, 24))
    assert load_image(tmp_path / "rotated.jpg", 24).shape == (3, 24, 24)


def test_files_above_max_pixels_and_bad_files_are_skipped_with_the_cpu_paths_reason(tmp_path):
    files, reasons = bad_files()
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "big.jpg").write_bytes(encode(photo(64, 48, 0), "JPEG"))
    for name in files:
        got = read_encoded(tmp_path / name, 24, DEFAULT_MAX_PIXELS)
        if isinstance(got, Skipped):  # what the worker can tell from the file
            assert got == load_image(tmp_path / name, 24), name
        else:  # a readable JPEG header: only decoding tells (see the batch test below)
            assert name in ("truncated.jpg",), name
    skipped = read_encoded(tmp_path / "big.jpg", 24, max_pixels=64 * 48 - 1)
    assert isinstance(skipped, Skipped) and skipped.reason.startswith("too many pixels")
    missing = read_encoded(tmp_path / "missing.jpg", 24, DEFAULT_MAX_PIXELS)
    assert missing == Skipped(str(tmp_path / "missing.jpg"), "missing file")


# ---- the batch on the device equals the CPU path's ----------------------------------------


@pytest.mark.parametrize("resize", ["crop", "letterbox"])
def test_resize_in_float_is_the_uint8_resize_within_a_level(resize):
    g = torch.Generator().manual_seed(0)
    for height, width, size in ((300, 200, 224), (97, 130, 32), (64, 64, 64), (20, 30, 48)):
        smooth = torch.rand(3, height // 4 + 1, width // 4 + 1, generator=g) * 255
        image = torch.nn.functional.interpolate(smooth[None], (height, width), mode="bilinear")
        image = image[0].round().to(torch.uint8)
        cpu, anywhere = fit_square(image, size, resize), fit_square_float(image, size, resize)
        assert anywhere.shape == (3, size, size) and anywhere.dtype == torch.uint8
        assert (cpu.int() - anywhere.int()).abs().max() <= 1, (height, width, size)


@pytest.mark.parametrize("resize", ["crop", "letterbox"])
def test_device_decoded_batches_equal_the_cpu_paths_batches(tmp_path, resize):
    root = tmp_path / "train"
    sizes = [(256, 192), (300, 400), (97, 131), (640, 480)]
    for i in range(12):  # three classes of JPEGs, a PNG and a rotated JPEG among them
        folder = root / ("a", "b", "c")[i % 3]
        folder.mkdir(parents=True, exist_ok=True)
        image = photo(*sizes[i % 4], seed=i)
        if i == 4:
            (folder / f"{i}.png").write_bytes(encode(image, "PNG"))
        elif i == 7:
            (folder / f"{i}.jpg").write_bytes(rotated_jpeg(image))
        else:
            (folder / f"{i}.jpg").write_bytes(encode(image, "JPEG", quality=90))
    torch.manual_seed(0)
    cpu = batches(module(root, False, val_fraction=0.25, resize=resize))
    torch.manual_seed(0)
    on_device = module(root, True, val_fraction=0.25, resize=resize)
    raw = [e for b in on_device.train_dataloader() for e in b[ENCODED]]
    assert sum(e.ndim == 1 for e in raw) >= 6 and {e.ndim for e in raw} <= {1, 3}
    torch.manual_seed(0)
    device = batches(on_device)
    assert len(cpu) == len(device) == 2  # 9 training images, batches of 4, the last dropped
    for a, b in zip(cpu, device, strict=True):
        assert ENCODED not in b and b["image"].dtype == torch.uint8
        assert b["image"].shape == a["image"].shape == (4, 3, 24, 24)
        assert torch.equal(a["index"], b["index"]) and torch.equal(
            a["labels"]["class"], b["labels"]["class"]
        )
        assert (a["image"].int() - b["image"].int()).abs().max() <= 1
    # Evaluation batches are decoded too.
    a = batches(module(root, False, val_fraction=0.25, resize=resize), "val")[0]
    b = batches(module(root, True, val_fraction=0.25, resize=resize), "val")[0]
    assert (a["image"].int() - b["image"].int()).abs().max() <= 1


def test_a_jpeg_only_decoding_can_tell_is_bad_is_dropped_from_every_field(tmp_path):
    root = tmp_path / "train"
    write_class_tree(root, per_class=3)  # 9 images: JPEGs and PNGs
    good = encode(photo(80, 60, 0), "JPEG")
    (root / "dog" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    device = module(root, True, batch_size=10)
    (batch,) = batches(device)
    cpu_batch = batches(module(root, False, batch_size=10))[0]
    assert len(batch["image"]) == len(batch["index"]) == len(batch["path"]) == 9
    assert len(batch["labels"]["class"]) == 9
    assert [s.reason for s in batch["skipped"]] == ["truncated image"]
    assert Path(batch["skipped"][0].source).name == "truncated.jpg"
    assert batch["skipped"] == cpu_batch["skipped"]
    order = torch.argsort(batch["index"])
    cpu_order = torch.argsort(cpu_batch["index"])
    assert torch.equal(batch["index"][order], cpu_batch["index"][cpu_order])
    assert torch.equal(batch["labels"]["class"][order], cpu_batch["labels"]["class"][cpu_order])
    difference = batch["image"][order].int() - cpu_batch["image"][cpu_order].int()
    assert difference.abs().max() <= 1


def test_a_batch_of_only_bad_files_has_no_image(tmp_path):
    root = tmp_path / "train" / "only"
    root.mkdir(parents=True)
    good = encode(photo(80, 60, 0), "JPEG")
    for i in range(2):
        (root / f"{i}.jpg").write_bytes(good[: len(good) // 2])
    (batch,) = batches(module(tmp_path / "train", True, batch_size=2))
    assert "image" not in batch and len(batch["skipped"]) == 2


# ---- end to end ---------------------------------------------------------------------------


def test_training_decodes_on_the_device_and_reports_the_bad_files(tmp_path):
    root = tmp_path / "train"
    write_class_tree(root, per_class=3)
    odd, bad = write_odd_images(root / "odd")
    for i in range(3):  # the device path proper: plain JPEGs
        (root / "dog" / f"photo_{i}.jpg").write_bytes(encode(photo(96, 64, i), "JPEG"))
    data = ImageFolderDataModule(
        root, val_fraction=0.0, image_size=32, batch_size=13, num_workers=1,
        decode_on_device=True,
    )  # fmt: skip
    lightning.seed_everything(0)
    model = SimCLR(
        backbone="small_cnn", backbone_kwargs={"width": 4}, projector_hidden_dim=16,
        projector_dim=8,
    )  # fmt: skip
    record = RecordBatches()
    trainer = Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        callbacks=[record],
    )  # fmt: skip
    with pytest.warns(UserWarning) as warned:
        trainer.fit(model, data)
    train = data._datasets["train"]
    assert len(train) == 39  # 12 + 19 odd + 8 bad: three batches of 13
    names = [Path(train.paths[i]).name for i in range(len(train))]
    good = {i for i, name in enumerate(names) if name not in bad}
    assert sorted(record.indices[0]) == sorted(good)
    (report,) = [str(w.message) for w in warned if "bad samples" in str(w.message)]
    assert report.startswith(f"train epoch 0: skipped {len(bad)} bad samples")


def test_without_the_option_the_workers_decode_as_before(tmp_path):
    root = tmp_path / "train"
    write_class_tree(root, per_class=3)
    data = module(root, False, batch_size=3)
    raw = next(iter(data.train_dataloader()))
    assert ENCODED not in raw and raw["image"].shape == (3, 3, 24, 24)


def test_the_option_is_a_flag_of_the_command(tmp_path, monkeypatch):
    from contrastive.cli import main

    root = tmp_path / "train"
    write_class_tree(root, per_class=3)
    for i in range(4):
        (root / "cat" / f"photo_{i}.jpg").write_bytes(encode(photo(96, 64, i), "JPEG"))
    monkeypatch.chdir(tmp_path)
    main([
        "fit", "--model=SimCLR", "--model.backbone_kwargs={width: 4}",
        "--model.projector_hidden_dim=16", "--model.projector_dim=8",
        "--model.augment=contrastive.augment.SimCLRAugment",
        "--data=ImageFolderDataModule", f"--data.root={root}", "--data.image_size=16",
        "--data.batch_size=4", "--data.num_workers=0", "--data.decode_on_device=true",
        "--trainer.max_steps=2", "--trainer.limit_val_batches=0",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
    ])  # fmt: skip
    saved = (tmp_path / "runs/contrastive/version_0/config.yaml").read_text()
    assert "decode_on_device: true" in saved
