"""JPEG decoding on the training device: the loader workers read bytes, the device decodes.

With ``decode_on_device`` (an option of :class:`~contrastive.datamodules.ImageFolderDataModule`)
the loader workers no longer decode: for a JPEG they only read the file and check its header,
and the batch carries the encoded bytes. When the batch reaches the device, the data module's
``transfer_batch_to_device`` decodes every JPEG of it in one batched call of
``torchvision.io.decode_jpeg(list, device=...)`` (nvJPEG on a CUDA GPU) and resizes each there
(centre crop or letterbox, antialiased bilinear, as
:func:`~contrastive.datamodules.images.load_image` does), before the method makes its views
from ``batch["image"]`` as usual. The data module
overrides ``transfer_batch_to_device`` rather than ``on_after_batch_transfer``: a data module's
``on_after_batch_transfer`` would replace the method's, which makes the views.

What the device path does not take is decoded in the worker as before (:func:`decode_image`):
files that are not JPEGs, JPEGs that are not RGB or grayscale (CMYK), JPEGs with an EXIF
orientation other than upright (``decode_jpeg`` applies it on the CPU only), and files whose
header is unreadable or above ``max_pixels``. A JPEG that the device cannot decode
(truncated, corrupt) is decoded again on the CPU, and skipped and counted if that fails too,
as the CPU path skips it.

A batch's encoded images travel under ``batch["encoded"]``: a list with, per sample, either the
file's bytes (``(L,)`` uint8) or the image decoded in the worker (``(3, S, S)`` uint8).
"""

from __future__ import annotations

import io
import os
import warnings

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision.io import ImageReadMode, decode_jpeg

from contrastive.datamodules.common import Collate, Skipped
from contrastive.datamodules.images import (
    LETTERBOX_FILL,
    Resize,
    decode_image,
    jpeg_size,
    load_image,
)

ENCODED = "encoded"
_EXIF_ORIENTATION = 0x0112


def read_encoded(
    path: str | os.PathLike, size: int, max_pixels: int, resize: Resize = "crop"
) -> Tensor | Skipped:
    """A file as the device path wants it: a JPEG's bytes, else the image decoded here.

    Returns:
        ``(L,)`` uint8, the bytes of a JPEG the device can decode; or ``(3, size, size)`` uint8
        decoded on the CPU (:func:`decode_image`); or a :class:`Skipped` saying why not.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return load_image(path, size, max_pixels, resize)  # says why: missing, unreadable
    if not _device_decodable(data, max_pixels):
        return decode_image(data, size, max_pixels, str(path), resize)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _device_decodable(data: bytes, max_pixels: int) -> bool:
    """A JPEG within ``max_pixels``, RGB or grayscale, upright: what ``decode_jpeg`` takes on
    any device and returns as the CPU path would."""
    shape = jpeg_size(data)  # None for anything but a JPEG with a readable frame header
    if shape is None or shape[0] * shape[1] > max_pixels:
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:  # the header only
                upright = im.getexif().get(_EXIF_ORIENTATION, 1) == 1
                return im.format == "JPEG" and im.mode in ("RGB", "L") and upright
    except Exception:  # a header Pillow cannot read: the CPU path says why
        return False


class EncodedCollate(Collate):
    """:class:`Collate` that keeps each sample's ``"image"`` (bytes or decoded) as one list,
    ``batch["encoded"]``, instead of stacking them."""

    def __call__(self, samples: list) -> dict:
        good = [dict(s) for s in samples if not isinstance(s, Skipped)]
        encoded = [s.pop("image") for s in good]
        batch = super().__call__(good + [s for s in samples if isinstance(s, Skipped)])
        if encoded:
            batch[ENCODED] = encoded
        return batch


class DeviceDecoding:
    """Mixin of a :class:`~contrastive.datamodules.common.BankQueryDataModule` subclass with
    ``decode_on_device``, ``image_size``, ``max_pixels`` and ``resize``: its datasets yield
    :func:`read_encoded` items when ``decode_on_device`` is set, and this decodes them."""

    decode_on_device: bool
    image_size: int
    max_pixels: int
    resize: Resize

    def collate(self) -> Collate:
        if self.decode_on_device:
            return EncodedCollate(self.tokenizer)
        return super().collate()

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        encoded = batch.pop(ENCODED, None) if isinstance(batch, dict) else None
        batch = super().transfer_batch_to_device(batch, device, dataloader_idx)
        if encoded is None:
            return batch
        return decode_batch(batch, encoded, self.image_size, self.max_pixels, device, self.resize)


def decode_batch(
    batch: dict,
    encoded: list[Tensor],
    size: int,
    max_pixels: int,
    device: torch.device,
    resize: Resize = "crop",
) -> dict:
    """``batch`` with ``"image"``, ``(B, 3, size, size)`` uint8 on ``device``, made from
    ``encoded`` (see the module docstring); samples that cannot be decoded are dropped from
    every field of the batch and listed under ``"skipped"``."""
    device = torch.device(device)
    jpegs = [i for i, e in enumerate(encoded) if e.ndim == 1]  # the rest: decoded already
    images: list = [None if e.ndim == 1 else e.to(device, non_blocking=True) for e in encoded]
    decoded: list[Tensor | None] = []
    if jpegs:
        try:
            decoded = decode_jpeg(
                [encoded[i] for i in jpegs], mode=ImageReadMode.RGB, device=device
            )
        except RuntimeError:  # one bad file fails the whole call: decode them one by one
            decoded = [_decode_one(encoded[i], device) for i in jpegs]
    for i, image in zip(jpegs, decoded, strict=True):
        if image is None:  # the device could not: the CPU path decodes it or says why not
            source = batch["path"][i] if "path" in batch else "<bytes>"
            image = decode_image(encoded[i].numpy().tobytes(), size, max_pixels, source, resize)
            images[i] = image if isinstance(image, Skipped) else image.to(device)
        else:
            images[i] = fit_square_float(image, size, resize)
    keep = [i for i, image in enumerate(images) if not isinstance(image, Skipped)]
    skipped = [image for image in images if isinstance(image, Skipped)]
    if skipped:
        batch = _rows(batch, keep, len(images))
        batch["skipped"] = list(batch.get("skipped", [])) + skipped
    if keep:
        batch["image"] = torch.stack([images[i] for i in keep])  # (B, 3, size, size)
    return batch


def _decode_one(data: Tensor, device: torch.device) -> Tensor | None:
    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        return None


def fit_square_float(image: Tensor, size: int, resize: Resize = "crop") -> Tensor:
    """:func:`~contrastive.datamodules.images.fit_square` on any device: the centre square
    (``"crop"``) or the whole image on white (``"letterbox"``) resized to ``size``
    (antialiased bilinear) in float32 and rounded back to uint8, as CUDA has no uint8
    antialiased resize; within a level of the CPU's uint8 resize.

    Args:
        image: ``(3, H, W)`` uint8.

    Returns:
        ``(3, size, size)`` uint8 on ``image``'s device.
    """
    _, height, width = image.shape
    if resize == "crop":
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        image = image[:, top : top + side, left : left + side]  # (3, side, side)
        inner = (size, size)
    else:  # letterbox: the longer side to size
        longer = max(height, width)
        inner = (max(1, round(height * size / longer)), max(1, round(width * size / longer)))
    if tuple(image.shape[1:]) != inner:
        resized = F.interpolate(
            image[None].float(), size=inner, mode="bilinear", antialias=True, align_corners=False
        )  # (1, 3, h, w)
        image = resized[0].round_().clamp_(0, 255).to(torch.uint8)
    if resize == "crop":
        return image.contiguous()
    out = torch.full((3, size, size), LETTERBOX_FILL, dtype=torch.uint8, device=image.device)
    top, left = (size - inner[0]) // 2, (size - inner[1]) // 2
    out[:, top : top + inner[0], left : left + inner[1]] = image
    return out


def _rows(value, keep: list[int], n: int):
    """The rows ``keep`` of every per-sample field (tensors, lists, dicts of them) of a batch."""
    if isinstance(value, dict):
        return {k: v if k == "skipped" else _rows(v, keep, n) for k, v in value.items()}
    if isinstance(value, Tensor) and value.ndim > 0 and len(value) == n:
        return value[torch.tensor(keep, dtype=torch.long, device=value.device)]
    if isinstance(value, (list, tuple)) and len(value) == n:
        return [value[i] for i in keep]
    return value
