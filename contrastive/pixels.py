"""A Pillow image of any mode as 8-bit RGB: the one conversion, without torch.

The training data modules (:mod:`contrastive.datamodules.images`) and the triplets tool's
describer (which sends images to a chat model, and imports no torch) both convert with
:func:`rgb_array`, so transparency becomes white everywhere: a black glyph on a transparent
background stays a glyph, where Pillow's own ``convert("RGB")`` makes it a black square.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def rgb_array(im: Image.Image) -> np.ndarray:
    """A decoded Pillow image as ``(H, W, 3)`` uint8 RGB, whatever its mode (the table in
    :mod:`contrastive.datamodules.images`: alpha composited on white, 16-bit gray scaled)."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        gray = np.asarray(im).astype(np.float32)  # (H, W), 16-bit range
        gray = np.clip(gray, 0, 65535) / 257.0
        return np.repeat(np.rint(gray).astype(np.uint8)[:, :, None], 3, axis=2)
    if im.mode == "F":
        gray = np.asarray(im, dtype=np.float32)
        scale = 255.0 if gray.size and np.nanmax(gray) <= 1.0 else 1.0
        gray = np.nan_to_num(np.clip(gray * scale, 0, 255))
        return np.repeat(np.rint(gray).astype(np.uint8)[:, :, None], 3, axis=2)
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        im.mode == "P" and "transparency" in im.info
    )
    if has_alpha:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    return np.array(im.convert("RGB"))  # a writable copy, for torch.from_numpy
