"""Tests for reading one image file (contrastive/datamodules/images.py).

``write_odd_images`` writes every kind of bad and odd file the loaders must survive; the
image folder tests reuse it.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from contrastive.datamodules.common import Skipped
from contrastive.datamodules.images import (
    DEFAULT_MAX_PIXELS,
    decode_image,
    jpeg_size,
    load_image,
    resize_center_crop,
    resize_letterbox,
)

COLOR = (200, 60, 30)  # every good odd file shows this colour (or its gray) once converted
GRAY = 120


def png_bytes(width: int, height: int, color_type: int, bit_depth: int, rows: bytes) -> bytes:
    """A PNG written by hand, for what Pillow cannot write (16-bit RGB, a bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def odd_files(width: int = 48, height: int = 40) -> tuple[dict[str, bytes], dict[str, tuple]]:
    """Good files in every mode and format: name -> bytes, and name -> expected RGB."""
    rgb = Image.new("RGB", (width, height), COLOR)
    gray = Image.new("L", (width, height), GRAY)
    files, expected = {}, {}

    def add(name: str, data: bytes, color: tuple) -> None:
        files[name], expected[name] = data, color

    add("rgb.jpg", encode(rgb, "JPEG", quality=95), COLOR)
    add("progressive.jpeg", encode(rgb, "JPEG", quality=95, progressive=True), COLOR)
    add("gray.jpg", encode(gray, "JPEG"), (GRAY,) * 3)
    add("cmyk.jpg", encode(rgb.convert("CMYK"), "JPEG", quality=95), COLOR)
    add("jpeg_named.png", encode(rgb, "JPEG", quality=95), COLOR)  # the bytes decide, not the name
    add("png_named.jpg", encode(rgb, "PNG"), COLOR)
    add("gray.png", encode(gray, "PNG"), (GRAY,) * 3)
    palette = Image.new("P", (width, height), 1)
    palette.putpalette([0, 0, 0, *COLOR] + [0] * 762)
    add("palette.png", encode(palette, "PNG"), COLOR)
    # Alpha is composited on white: the left half opaque COLOR, the right half transparent.
    rgba = np.zeros((height, width, 4), np.uint8)  # transparent black
    rgba[:, : width // 2] = (*COLOR, 255)
    add(
        "rgba_left_opaque.png",
        encode(Image.fromarray(rgba, "RGBA"), "PNG"),
        "left COLOR, right white",
    )
    la = Image.new("LA", (width, height), (GRAY, 0))  # fully transparent gray
    add("la_transparent.png", encode(la, "PNG"), (255, 255, 255))
    add("palette_opaque_entry.png", encode(palette, "PNG", transparency=0), COLOR)
    palette_clear = Image.new("P", (width, height), 0)
    palette_clear.putpalette([0, 0, 0, *COLOR] + [0] * 762)
    add("palette_transparent.png", encode(palette_clear, "PNG", transparency=0), (255,) * 3)
    gray16 = np.full((height, width), GRAY * 257, np.uint16)  # GRAY in 16 bits
    add("gray16.png", encode(Image.fromarray(gray16), "PNG"), (GRAY,) * 3)
    rgb16 = np.empty((height, width, 3), ">u2")
    rgb16[:] = [c * 257 for c in COLOR]
    rows = b"".join(b"\x00" + row.tobytes() for row in rgb16)
    add("rgb16.png", png_bytes(width, height, 2, 16, rows), COLOR)
    add("cmyk.tif", encode(rgb.convert("CMYK"), "TIFF"), COLOR)
    add("rgb.bmp", encode(rgb, "BMP"), COLOR)
    add("rgb.webp", encode(rgb, "WEBP", lossless=True), COLOR)
    add("palette.gif", encode(palette, "GIF"), COLOR)
    add("tiny.png", encode(Image.new("RGB", (5, 3), COLOR), "PNG"), COLOR)  # upsampled
    return files, expected


def bad_files() -> tuple[dict[str, bytes], dict[str, str]]:
    """Files that must be skipped: name -> bytes, and name -> the expected reason."""
    rgb = Image.new("RGB", (64, 48), COLOR)
    jpeg, png = encode(rgb, "JPEG"), encode(rgb, "PNG")
    # A JPEG frame header claiming 40,000 x 40,000 pixels (1.6 gigapixels), nothing else.
    sof = (
        b"\xff\xc0\x00\x11\x08" + struct.pack(">HH", 40_000, 40_000) + b"\x03" + b"\x01\x11\x00" * 3
    )
    bomb_jpeg = b"\xff\xd8" + sof + b"\xff\xd9"
    bomb_png = png_bytes(30_000, 30_000, 0, 8, b"\x00" * 64)  # 900 megapixels claimed
    files = {
        "empty.jpg": b"",
        "text_named.jpg": b"<html>not found</html>\n",
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "truncated.png": png[: len(png) - 30],
        "corrupt.jpg": jpeg[:4] + bytes(range(256)) * 4,
        "corrupt.png": png[:16] + b"\x00" * 40,
        "bomb.jpg": bomb_jpeg,
        "bomb.png": bomb_png,
    }
    reasons = {
        "empty.jpg": "empty file",
        "text_named.jpg": "not an image",
        "truncated.jpg": "truncated image",
        "truncated.png": "truncated image",
        "corrupt.jpg": "corrupt image",
        "corrupt.png": "corrupt image",
        "bomb.jpg": "too many pixels",
        "bomb.png": "too many pixels",
    }
    return files, reasons


def write_odd_images(folder: Path, width: int = 48, height: int = 40) -> tuple[list, list]:
    """Write every good odd file and every bad file into ``folder``.

    Returns:
        The good file names and the bad file names, sorted.
    """
    folder.mkdir(parents=True, exist_ok=True)
    good, _ = odd_files(width, height)
    bad, _ = bad_files()
    for name, data in {**good, **bad}.items():
        (folder / name).write_bytes(data)
    return sorted(good), sorted(bad)


# ----------------------------------------------------------------------------- good files


@pytest.mark.parametrize("name", sorted(odd_files()[0]))
def test_every_mode_and_format_becomes_the_right_rgb(tmp_path, name):
    files, expected = odd_files()
    path = tmp_path / name
    path.write_bytes(files[name])
    image = load_image(path, size=24)
    assert isinstance(image, torch.Tensor), image
    assert image.dtype == torch.uint8 and image.shape == (3, 24, 24) and image.is_contiguous()
    pixels = image.int()
    if expected[name] == "left COLOR, right white":
        # The left and right columns are far from the antialiased boundary in the middle.
        left, right = pixels[:, :, :8].flatten(1), pixels[:, :, -8:].flatten(1)
        assert (left - torch.tensor(COLOR)[:, None]).abs().max() <= 1
        assert (right == 255).all()
        return
    target = torch.tensor(expected[name])[:, None, None]
    tolerance = 6 if name.endswith(("jpg", "jpeg", "_named.png")) else 1
    assert (pixels - target).abs().max() <= tolerance, (name, pixels.flatten(1).float().mean(1))


def test_jpeg_decoding_matches_pillow_and_crops_the_centre(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (60, 100, 3), dtype=np.uint8)
    pixels[:, :20] = (0, 255, 0)  # outside the centre square (columns 20..80): cropped away
    pixels[:, 80:] = (0, 255, 0)
    (tmp_path / "a.jpg").write_bytes(encode(Image.fromarray(pixels), "JPEG", quality=100))
    image = load_image(tmp_path / "a.jpg", size=60)  # no resize: exactly the centre square
    reference = np.array(Image.open(tmp_path / "a.jpg").convert("RGB"))[:, 20:80]
    assert image.shape == (3, 60, 60)
    assert torch.equal(image, torch.from_numpy(reference.copy()).permute(2, 0, 1))


def test_resize_is_antialiased_and_keeps_the_centre():
    # Alternating one-pixel black and white columns average to gray only with antialiasing.
    stripes = torch.zeros(3, 64, 128, dtype=torch.uint8)
    stripes[:, :, ::2] = 255
    out = resize_center_crop(stripes, 16)
    assert out.shape == (3, 16, 16) and out.dtype == torch.uint8
    # Inside: gray. The edge columns also see the neighbours of the crop (see the module doc).
    assert (out[:, :, 1:-1].int() - 128).abs().max() <= 2
    marker = torch.zeros(3, 40, 80, dtype=torch.uint8)
    marker[:, :, 20:60] = 200  # exactly the centre square
    assert (resize_center_crop(marker, 10) == 200).all()


def test_letterbox_keeps_the_whole_image_centred_on_white(tmp_path):
    # A wide image: a red left quarter, a blue right quarter, green between. Centre crop (the
    # default) keeps only the green middle; letterbox keeps all three, bands of white above
    # and below.
    pixels = np.zeros((40, 160, 3), np.uint8)
    pixels[:, :40], pixels[:, 40:120], pixels[:, 120:] = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    path = tmp_path / "wide.png"
    path.write_bytes(encode(Image.fromarray(pixels), "PNG"))
    crop = load_image(path, 32)
    assert (crop == torch.tensor([0, 255, 0])[:, None, None]).all()
    box = load_image(path, 32, resize="letterbox")
    assert box.shape == (3, 32, 32) and box.dtype == torch.uint8
    # 160x40 -> 32x8, rows 12..19; the 12 rows above and below are white.
    assert (box[:, :12] == 255).all() and (box[:, 20:] == 255).all()
    band = box[:, 12:20]
    assert band[:, :, :7].float().mean((1, 2)).tolist() == [255, 0, 0]
    assert band[:, :, 9:23].float().mean((1, 2)).tolist() == [0, 255, 0]
    assert band[:, :, 25:].float().mean((1, 2)).tolist() == [0, 0, 255]
    # The same from bytes, and a tall image pads left and right.
    assert torch.equal(decode_image(path.read_bytes(), 32, resize="letterbox"), box)
    tall = resize_letterbox(torch.zeros(3, 90, 30, dtype=torch.uint8), 30)
    assert (tall[:, :, :10] == 255).all() and (tall[:, :, 20:] == 255).all()
    assert (tall[:, :, 10:20] == 0).all()


def test_letterbox_of_a_square_is_the_centre_crop():
    square = torch.randint(0, 256, (3, 50, 50), dtype=torch.uint8)
    assert torch.equal(resize_letterbox(square, 20), resize_center_crop(square, 20))
    assert torch.equal(resize_letterbox(square, 50), square)
    thin = resize_letterbox(torch.zeros(3, 1, 200, dtype=torch.uint8), 16)  # a 1-pixel line
    assert (thin[:, 7] == 0).all() and (thin[:, :7] == 255).all() and (thin[:, 8:] == 255).all()


def test_an_unknown_resize_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="resize must be one of crop, letterbox, got 'pad'"):
        load_image(tmp_path / "a.jpg", 16, resize="pad")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exif_orientation_is_applied(tmp_path, fmt):
    pixels = np.zeros((40, 80, 3), np.uint8)
    pixels[:20] = (255, 0, 0)  # top half red
    pixels[20:] = (0, 0, 255)  # bottom half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed turned 90 degrees clockwise: the top comes to the right
    path = tmp_path / f"turned.{fmt.lower()}"
    path.write_bytes(encode(Image.fromarray(pixels), fmt, exif=exif, quality=95))
    image = load_image(path, size=40).int()
    assert image[0, :, -5:].min() > 200 and image[2, :, -5:].max() < 50  # right: red
    assert image[2, :, :5].min() > 200 and image[0, :, :5].max() < 50  # left: blue


# ----------------------------------------------------------------------------- bad files


@pytest.mark.parametrize("name", sorted(bad_files()[0]))
def test_bad_files_are_skipped_with_a_reason(tmp_path, name):
    files, reasons = bad_files()
    path = tmp_path / name
    path.write_bytes(files[name])
    result = load_image(path, size=16)
    assert isinstance(result, Skipped), f"{name} decoded to {type(result)}"
    assert result.source == str(path)
    assert result.reason.startswith(reasons[name]), result.reason


def test_missing_and_unreadable_paths_are_skipped(tmp_path):
    assert load_image(tmp_path / "nope.jpg", 16) == Skipped(
        str(tmp_path / "nope.jpg"), "missing file"
    )
    assert load_image(tmp_path, 16) == Skipped(str(tmp_path), "unreadable file")  # a directory


def test_bombs_are_refused_from_the_header_alone():
    files, _ = bad_files()
    assert jpeg_size(files["bomb.jpg"]) == (40_000, 40_000)
    assert jpeg_size(encode(Image.new("RGB", (70, 30)), "JPEG")) == (30, 70)
    assert jpeg_size(b"\xff\xd8\xff\xda\x00\x02") is None  # scan before any frame header
    assert DEFAULT_MAX_PIXELS < 40_000**2


def test_max_pixels_is_the_only_limit(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    path.write_bytes(encode(Image.new("RGB", (64, 50), COLOR), "PNG"))
    skipped = load_image(path, 16, max_pixels=64 * 50 - 1)
    assert skipped == Skipped(str(path), "too many pixels (64x50 > max_pixels 3199)")
    assert isinstance(load_image(path, 16, max_pixels=64 * 50), torch.Tensor)
    jpeg = tmp_path / "a.jpg"
    jpeg.write_bytes(encode(Image.new("RGB", (64, 50), COLOR), "JPEG"))
    assert load_image(jpeg, 16, max_pixels=100).reason.startswith("too many pixels")
    # Pillow's global limit neither refuses what max_pixels allows nor is left changed.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    assert isinstance(load_image(path, 16), torch.Tensor)
    assert Image.MAX_IMAGE_PIXELS == 100


def test_size_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="size must be >= 1"):
        load_image(tmp_path / "a.jpg", 0)
