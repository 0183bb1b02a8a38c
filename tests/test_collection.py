"""One way to read an image (contrastive/collection.py): ``embed`` and ``similar`` read files as
the training data module did, with the checkpoint's size, resize mode and pixel limit, and
``similar`` reports identical images apart from its ranked pairs."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from contrastive.checkpoints import load_method
from contrastive.cli import main
from contrastive.collection import read_ids
from contrastive.datamodules import ImageFolderDataModule
from contrastive.datamodules.images import DEFAULT_MAX_PIXELS, Reading


def glyph(seed: int, size: tuple[int, int] = (60, 40)) -> Image.Image:
    """A dark letter-like shape on a transparent background (RGBA): clipart."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGBA", size, (0, 0, 0, 0))  # transparent black underneath
    draw = ImageDraw.Draw(image)
    x, y = int(rng.integers(4, 20)), int(rng.integers(4, 12))
    draw.rectangle((x, y, x + 8, size[1] - 6), fill=(20, 20, int(rng.integers(0, 90)), 255))
    draw.ellipse((x + 10, y, x + 30, y + 20), fill=(int(rng.integers(0, 90)), 30, 30, 255))
    return image


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **kwargs)
    return out.getvalue()


def write_odd_folder(root: Path) -> list[Path]:
    """Two class folders of every kind of file the training reads: transparent RGBA, palette
    with a transparent entry, LA, 16-bit gray, a JPEG named .jfif, a wide photo-like JPEG."""
    files = []
    for c, name in enumerate(("letters", "marks")):
        folder = root / name
        folder.mkdir(parents=True)
        for k in range(3):
            seed = 10 * c + k
            art = glyph(seed)
            white = Image.alpha_composite(Image.new("RGBA", art.size, "white"), art)
            gray16 = (np.asarray(white.convert("L"), np.uint16) * 257).astype(np.uint16)
            data = {
                f"rgba_{k}.png": encoded(art, "PNG"),
                f"palette_{k}.png": encoded(art.convert("P"), "PNG", transparency=0),
                f"la_{k}.png": encoded(art.convert("LA"), "PNG"),
                f"gray16_{k}.png": encoded(Image.fromarray(gray16), "PNG"),
                f"photo_{k}.jfif": encoded(white.convert("RGB"), "JPEG", quality=92),
                f"wide_{k}.jpg": encoded(white.convert("RGB").resize((120, 30)), "JPEG"),
            }
            for file, blob in data.items():
                (folder / file).write_bytes(blob)
                files.append(folder / file)
    return files


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A SimCLR checkpoint after one step on the odd folder, letterboxed at 24 px."""
    root = tmp_path_factory.mktemp("odd")
    folder = root / "images"
    write_odd_folder(folder)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        main(["fit", "--model=SimCLR", "--model.backbone_kwargs={width: 4}",
              "--model.projector_hidden_dim=16", "--model.projector_dim=8",
              "--data=ImageFolderDataModule", f"--data.root={folder}", "--data.image_size=24",
              "--data.resize=letterbox", "--data.val_fraction=0", "--data.batch_size=4",
              "--data.num_workers=0", "--trainer.max_steps=1", "--trainer.limit_val_batches=0",
              "--trainer.enable_progress_bar=false",
              "--trainer.enable_model_summary=false"])  # fmt: skip
    finally:
        os.chdir(cwd)
    return next(root.glob("runs/*/version_0/checkpoints/last.ckpt")), folder


def embed_cli(ckpt: Path, images: Path, out: Path, *extra: str) -> tuple[np.ndarray, list[str]]:
    main(["embed", "--ckpt", str(ckpt), "--images", str(images), "--out", str(out),
          "--device", "cpu", "--no_progress", *extra])  # fmt: skip
    return np.load(out), read_ids(out.with_suffix(".ids.jsonl"))


def data_module_embeddings(ckpt: Path, folder: Path, ids: list[str], **reading) -> np.ndarray:
    """The method's ``embed`` of the tensors the image-folder module gives for ``ids``."""
    method, _ = load_method(ckpt)
    module = ImageFolderDataModule(folder, val_fraction=0.0, batch_size=1, num_workers=0, **reading)
    module.setup("fit")
    items = {item["path"]: item["image"] for item in module._datasets["train"]}
    with torch.no_grad():
        return method.embed(torch.stack([items[i] for i in ids])).numpy()


def test_embed_equals_the_methods_embedding_of_the_training_tensors(trained, tmp_path, capsys):
    ckpt, folder = trained
    method, reading = load_method(ckpt)
    assert reading == Reading(24, "letterbox", DEFAULT_MAX_PIXELS)  # recorded by the fit
    z, ids = embed_cli(ckpt, folder, tmp_path / "emb.npy")
    assert "24 px, letterbox" in capsys.readouterr().err
    assert len(ids) == 36 and sum(i.endswith(".jfif") for i in ids) == 6  # one list of extensions
    want = data_module_embeddings(ckpt, folder, ids, image_size=24, resize="letterbox")
    np.testing.assert_allclose(z, want, atol=1e-5, rtol=0)
    # What PIL's convert("RGB") made of them before: black squares where the glyph was drawn.
    rgba = next(i for i in ids if Path(i).name == "rgba_0.png")
    transparent_black = np.asarray(Image.open(rgba).convert("RGB"))
    assert transparent_black.mean() < 60  # nearly all black...
    image = reading.load(rgba)
    assert image.float().mean() > 150  # ...where training saw a dark glyph on white


def test_the_command_line_overrides_the_checkpoints_reading(trained, tmp_path, capsys):
    ckpt, folder = trained
    z, ids = embed_cli(ckpt, folder, tmp_path / "crop.npy", "--resize", "crop")
    assert "24 px, crop" in capsys.readouterr().err
    want = data_module_embeddings(ckpt, folder, ids, image_size=24, resize="crop")
    np.testing.assert_allclose(z, want, atol=1e-5, rtol=0)
    boxed, _ = embed_cli(ckpt, folder, tmp_path / "box.npy")
    wide = [n for n, i in enumerate(ids) if "wide_" in i]
    assert not np.allclose(z[wide], boxed[wide], atol=1e-3)  # a wide image: crop cuts it
    # The pixel limit: the 120x30 images (3600 pixels) are skipped, and said so.
    z, ids = embed_cli(ckpt, folder, tmp_path / "small.npy", "--max_pixels", "3000")
    err = capsys.readouterr().err
    assert len(ids) == 30 and not any("wide_" in i for i in ids)
    assert "skipped 6 unreadable" in err and "too many pixels (120x30 > max_pixels 3000)" in err


def test_similar_reports_identical_images_apart_from_its_ranked_pairs(trained, tmp_path, capsys):
    """A folder of repeats and blanks: every fully transparent PNG is a white square, as is a
    white JPEG; such images are one group each, and the ranking sees one of each group."""
    ckpt, source = trained
    folder = tmp_path / "repeats"
    folder.mkdir()
    for k in range(4):
        (folder / f"blank_{k}.png").write_bytes(encoded(Image.new("RGBA", (30, 20)), "PNG"))
    (folder / "white.jpg").write_bytes(encoded(Image.new("RGB", (16, 16), "white"), "JPEG"))
    for k in range(3):
        art = (source / "letters" / f"rgba_{k}.png").read_bytes()
        (folder / f"glyph_{k}.png").write_bytes(art)
        (folder / f"glyph_{k}_copy.png").write_bytes(art)
    (folder / "other.png").write_bytes(encoded(glyph(99), "PNG"))
    main(["similar", "--ckpt", str(ckpt), "--images", str(folder), "--top", "50",
          "--out", str(tmp_path / "pairs.png"), "--device", "cpu", "--no_progress"])  # fmt: skip
    table, _, duplicates = capsys.readouterr().out.partition("\n\n")
    ranked = [line.split("\t")[2:] for line in table.splitlines()[1:]]
    groups = [line.split("\t")[1:] for line in duplicates.splitlines() if line.startswith("dup")]
    names = [{Path(p).name for p in group} for group in groups]
    blanks = {f"blank_{k}.png" for k in range(4)} | {"white.jpg"}
    assert blanks in names and {"glyph_1.png", "glyph_1_copy.png"} in names and len(groups) == 4
    assert "exact duplicates: 4 groups of identical images (11 images" in duplicates
    # 5 distinct images (a blank, three glyphs, the other): all 10 of their pairs, no repeat.
    assert len(ranked) == 10
    shown = [Path(p).name for pair in ranked for p in pair]
    assert not any(name.endswith("_copy.png") for name in shown)
    assert sum(name in blanks for name in shown) == 4  # one blank, in each of its 4 pairs
    assert Image.open(tmp_path / "pairs.png").height > 0
