"""Reading one image file into a fixed-size uint8 tensor, or a :class:`Skipped` saying why not.

:func:`load_image` is what every data module that reads image files calls in its loader
workers (image folders, image-text CSVs, NGA); :func:`read_image` reads one at its own size
(GeneCIS crops boxes from it). Neither raises for a bad file: a missing,
empty, corrupt, truncated or non-image file, or one above the pixel limit, comes back as
``Skipped(path, reason)``, which the loader's ``Collate`` drops and the method reports.

Decoding. The format is told by the file's first bytes, not its name. JPEGs (``FF D8 FF``) go
through ``torchvision.io.decode_jpeg`` (libjpeg-turbo, CMYK and grayscale handled, EXIF
orientation applied): with the crop-first resize below, 2.1-2.3x the images per second of
torchvision's ``ImageFolder`` with PIL transforms (``benchmarks/decode.py``, BENCHMARKS.md).
Anything else goes through Pillow, whose modes are converted to RGB:

==========================  ====================================================
mode                        conversion
==========================  ====================================================
``1``, ``L``, ``P``, CMYK   Pillow's ``convert("RGB")``
with alpha (RGBA, LA, PA,   composited on white: transparent pixels become white
P with transparency)        (the colour stored under them is arbitrary, often black)
``I;16*`` (16-bit gray)     scaled to 8 bits, ``round(v / 257)``; 65535 -> 255
``I`` (32-bit int)          read as 16-bit, clipped to ``[0, 65535]``, then as above
``F`` (float)               ``[0, 1]`` if its maximum is at most 1, else ``[0, 255]``
16-bit RGB(A) PNG           Pillow keeps the high byte when it opens it
==========================  ====================================================

Resizing (``resize``), with antialiased bilinear interpolation on uint8
(``torch.nn.functional.interpolate``):

- ``"crop"`` (the default): the centre square of the image (side ``min(H, W)``) is resized to
  ``size``. That is "resize the shorter side to ``size``, then centre crop" with the crop taken
  first, so no time goes into resizing pixels that are then thrown away; the two differ only in
  the last pixel row or column at the crop's edge. A wide image loses its sides.
- ``"letterbox"``: the whole image, its longer side resized to ``size``, centred on a white
  square (white as transparency is composited: what is not the image is white). Nothing is cut;
  a wide clipart letter stays a letter instead of becoming a bar.

Pixel limit. Decoding a small file can need gigabytes (a decompression bomb), so the size in
the file's header is checked before any pixel is decoded: the JPEG frame header (SOF) read
from the bytes, or Pillow's lazy ``Image.open``. Images above ``max_pixels`` are skipped;
pass a larger ``max_pixels`` to read them (Pillow's own global limit is not consulted).
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Mapping
from typing import Literal, NamedTuple, get_args

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_jpeg

from contrastive.datamodules.common import Skipped
from contrastive.pixels import rgb_array

# Pillow's own default limit (about 89.5 megapixels, 256 MiB of 24-bit RGB): a 12,000 x 7,000
# photograph passes, a bomb that would decode to several GiB does not.
DEFAULT_MAX_PIXELS = 89_478_485

_JPEG_MAGIC = b"\xff\xd8\xff"
# First bytes of other common image formats: a file that starts like one but that Pillow
# cannot identify is a damaged image rather than some other kind of file.
_IMAGE_MAGICS = (
    _JPEG_MAGIC,
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"RIFF",
)
# Start-of-frame markers carry the image size: C0-CF except DHT (C4), JPG (C8) and DAC (CC).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field (TEM, RSTn); SOI and EOI never appear between segments here.
_STANDALONE_MARKERS = frozenset([0x01, *range(0xD0, 0xD8)])
_PIL_LIMIT_LOCK = threading.Lock()

Resize = Literal["crop", "letterbox"]  # how a (3, H, W) image becomes (3, S, S); module doc
RESIZE_MODES: tuple[str, ...] = get_args(Resize)
LETTERBOX_FILL = 255  # white, as transparent pixels become


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """``(height, width)`` from a JPEG's frame header, or ``None`` if none is found.

    Walks the marker segments from the start of the file up to the first SOF segment,
    without decoding anything.
    """
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _STANDALONE_MARKERS:
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker in _SOF_MARKERS:
            if pos + 9 > end:
                return None
            height = int.from_bytes(data[pos + 5 : pos + 7], "big")
            width = int.from_bytes(data[pos + 7 : pos + 9], "big")
            return height, width
        if marker == 0xDA or length < 2:  # start of scan before any frame: not a valid JPEG
            return None
        pos += 2 + length
    return None


class Reading(NamedTuple):
    """How image files become what a model sees, ``(3, image_size, image_size)`` uint8.

    A data module's settings, saved in its checkpoint: ``embed``, ``similar`` and ``data
    triplets`` read them back (:meth:`of_data`), so a file is decoded and resized for looking
    exactly as it was for training.

    Attributes:
        image_size: Output side; ``None`` when unknown (to be chosen by the caller).
        resize: ``"crop"`` or ``"letterbox"`` (module docstring).
        max_pixels: Largest ``height * width`` decoded; larger images are skipped.
    """

    image_size: int | None = None
    resize: Resize = "crop"
    max_pixels: int = DEFAULT_MAX_PIXELS

    @classmethod
    def of_data(cls, hparams: Mapping | None) -> Reading:
        """The reading of a data module's hyper-parameters (a checkpoint's
        ``datamodule_hyper_parameters``); the defaults for what they do not set."""
        hparams = hparams if isinstance(hparams, Mapping) else {}

        def positive(key: str) -> int | None:
            value = hparams.get(key)
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
            return value if ok else None

        resize = hparams.get("resize")
        return cls(
            positive("image_size"),
            resize if resize in RESIZE_MODES else "crop",
            positive("max_pixels") or DEFAULT_MAX_PIXELS,
        )

    def but(self, **given) -> Reading:
        """This reading with the settings given (those not ``None``) instead."""
        return self._replace(**{k: v for k, v in given.items() if v is not None})

    def load(self, path: str | os.PathLike) -> torch.Tensor | Skipped:
        """:func:`load_image` with these settings."""
        if self.image_size is None:
            raise ValueError("Reading.load needs an image_size")
        return load_image(path, self.image_size, self.max_pixels, self.resize)


def resize_center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """The centre square of ``image`` resized to ``size`` (antialiased bilinear).

    Args:
        image: ``(3, H, W)`` uint8.
        size: Output height and width.

    Returns:
        ``(3, size, size)`` uint8, contiguous.
    """
    _, height, width = image.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = image[:, top : top + side, left : left + side]  # (3, side, side)
    if side == size:
        return square.contiguous()
    out = F.interpolate(
        square[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )  # (1, 3, size, size) uint8
    return out[0].contiguous()


def resize_letterbox(image: torch.Tensor, size: int) -> torch.Tensor:
    """The whole of ``image``, its longer side resized to ``size``, centred on a white square.

    Args:
        image: ``(3, H, W)`` uint8.
        size: Output height and width.

    Returns:
        ``(3, size, size)`` uint8; the rows or columns outside the image are white
        (:data:`LETTERBOX_FILL`). A square image gives :func:`resize_center_crop`'s result.
    """
    _, height, width = image.shape
    longer = max(height, width)
    inner = (max(1, round(height * size / longer)), max(1, round(width * size / longer)))
    if inner != (height, width):
        image = F.interpolate(
            image[None], size=inner, mode="bilinear", antialias=True, align_corners=False
        )[0]  # (3, h, w) uint8, max(h, w) == size
    out = torch.full((3, size, size), LETTERBOX_FILL, dtype=torch.uint8)
    top, left = (size - inner[0]) // 2, (size - inner[1]) // 2
    out[:, top : top + inner[0], left : left + inner[1]] = image
    return out


def fit_square(image: torch.Tensor, size: int, resize: Resize = "crop") -> torch.Tensor:
    """``(3, H, W)`` -> ``(3, size, size)`` uint8, by centre crop or letterbox (module doc)."""
    check_resize(resize, size)
    return (resize_letterbox if resize == "letterbox" else resize_center_crop)(image, size)


def check_resize(resize: str, size: int) -> None:
    """Raise ``ValueError`` for an unknown ``resize`` mode or a ``size`` below 1."""
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
    if size < 1:
        raise ValueError(f"size must be >= 1 pixel, got {size}")


def _open_pil(data: bytes) -> Image.Image:
    """Pillow's lazy open, with its global pixel limit off (``load_image`` applies its own)."""
    with _PIL_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(io.BytesIO(data))
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _too_large(height: int, width: int, max_pixels: int) -> str | None:
    if height * width > max_pixels:
        return f"too many pixels ({width}x{height} > max_pixels {max_pixels})"
    return None


def _failed_reason(data: bytes, error: Exception) -> str:
    if "truncated" in str(error).lower() or (
        data.startswith(_JPEG_MAGIC) and not data.rstrip(b"\x00").endswith(b"\xff\xd9")
    ):
        return "truncated image"
    return "corrupt image"


def _decode_pil(data: bytes, max_pixels: int, exif: bool = True) -> np.ndarray | str:
    """``(H, W, 3)`` uint8 decoded by Pillow (turned upright by its EXIF orientation when
    ``exif``), or the reason it could not be."""
    try:
        im = _open_pil(data)
    except UnidentifiedImageError:
        return "corrupt image" if data.startswith(_IMAGE_MAGICS) else "not an image"
    except Exception as error:  # Pillow raises many types for a damaged header
        return _failed_reason(data, error)
    with im:
        reason = _too_large(im.height, im.width, max_pixels)
        if reason is not None:
            return reason
        try:
            im.load()
            im = ImageOps.exif_transpose(im) if exif else im
            return rgb_array(im)
        except Exception as error:
            return _failed_reason(data, error)


def load_image(
    path: str | os.PathLike,
    size: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    resize: Resize = "crop",
) -> torch.Tensor | Skipped:
    """Read an image file as a ``(3, size, size)`` uint8 RGB tensor.

    The shorter side is resized to ``size`` and the centre cropped, or the whole image
    letterboxed (antialiased); JPEGs are decoded by torchvision and every other format by
    Pillow; see the module docstring for mode conversions (alpha is composited on white) and
    the pixel limit.

    Args:
        path: The image file.
        size: Output height and width, at least 1.
        max_pixels: Largest ``height * width`` decoded; larger images are skipped as possible
            decompression bombs, judged from the header before decoding.
        resize: ``"crop"`` (centre square) or ``"letterbox"`` (whole image on white).

    Returns:
        The image, or ``Skipped(str(path), reason)`` with ``reason`` one of ``"missing file"``,
        ``"unreadable file"``, ``"empty file"``, ``"not an image"``, ``"corrupt image"``,
        ``"truncated image"`` or ``"too many pixels (WxH > max_pixels N)"``. Never raises for
        a bad file.
    """
    check_resize(resize, size)
    image = read_image(path, max_pixels)
    return image if isinstance(image, Skipped) else fit_square(image, size, resize)


def read_image(
    path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS, exif: bool = True
) -> torch.Tensor | Skipped:
    """Read an image file at its own size, ``(3, H, W)`` uint8 RGB, or a :class:`Skipped`.

    As :func:`load_image` without the resize. ``exif=False`` keeps the pixels as stored,
    ignoring the EXIF orientation: what annotations made on the stored pixels (boxes) need.
    """
    source = str(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return Skipped(source, "missing file")
    except OSError:  # a directory, no permission, an I/O error
        return Skipped(source, "unreadable file")
    return _decode(data, max_pixels, source, exif)


def decode_image(
    data: bytes,
    size: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    source: str = "<bytes>",
    resize: Resize = "crop",
) -> torch.Tensor | Skipped:
    """:func:`load_image` for an image already in memory (a tar member, a download).

    Args:
        data: The encoded image.
        size: Output height and width, at least 1.
        max_pixels: Largest ``height * width`` decoded (see :func:`load_image`).
        source: What a :class:`Skipped` names: a path, ``shard.tar:key``, a URL.
        resize: ``"crop"`` or ``"letterbox"`` (see :func:`load_image`).
    """
    check_resize(resize, size)
    image = _decode(data, max_pixels, source)
    return image if isinstance(image, Skipped) else fit_square(image, size, resize)


def _decode(data: bytes, max_pixels: int, source: str, exif: bool = True) -> torch.Tensor | Skipped:
    """``(3, H, W)`` uint8 RGB at the image's own size, or why not."""
    if not data:
        return Skipped(source, "empty file")
    if data.startswith(_JPEG_MAGIC):
        shape = jpeg_size(data)
        if shape is not None:
            reason = _too_large(*shape, max_pixels)
            if reason is not None:
                return Skipped(source, reason)
            try:
                encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
                return decode_jpeg(encoded, mode=ImageReadMode.RGB, apply_exif_orientation=exif)
            except RuntimeError:
                pass  # Pillow gets a second try, and says why if it fails too
    decoded = _decode_pil(data, max_pixels, exif)
    if isinstance(decoded, str):
        return Skipped(source, decoded)
    return torch.from_numpy(decoded).permute(2, 0, 1)  # (3, H, W)
