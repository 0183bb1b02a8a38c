"""The glyphs of a font catalog: their attributes, their split, and how they are drawn.

Rendering. The face is drawn at ``glyph_scale * image_size`` pixels per em (0.7: a capital
or an ascender about half the image), scaled by ``1 + size_jitter * u``, with ``u`` uniform in
``[-1, 1)``; the glyph's ink box is centred, then moved by up to ``position_jitter *
image_size`` on each axis (never out of the image). Sizes are in whole pixels (the font's
hinting is what a reader sees); a glyph too large for the image is drawn smaller to fit.

Splits. Glyphs, not images, are held out: a hash of ``(seed, family, weight, slant, letter)``
sends a ``held_out / 2`` share of them to ``val`` and as many to ``test``, the same on every
machine with the same fonts. Validation and test therefore show letters in faces never seen
with that letter in training (each face and each letter is seen with others). Item ``i`` of a
split is glyph ``permutation[i % n]`` of its ``n`` glyphs (so every glyph appears once before
any repeats), with jitter from ``np.random.default_rng([seed, split, i])``.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from contrastive.datamodules.common import DataError
from contrastive.datamodules.font_catalog import Catalog
from contrastive.datamodules.shapes import SPLITS

ATTRIBUTES: tuple[str, ...] = ("letter", "family", "weight", "slant", "spacing")
STYLE_CLASSES: dict[str, tuple[str, ...]] = {
    "weight": ("regular", "bold"),
    "slant": ("upright", "italic"),
    "spacing": ("proportional", "monospace"),
}
LETTERS = "abcdefghijklmnopqrstuvwxyz"


class GlyphTable:
    """Every renderable glyph of a catalog, its attribute labels and its split.

    Attributes:
        catalog: The faces.
        letters: The characters.
        class_names: ``{attribute: class names}``.
        glyphs: ``(n, 2)`` face and letter index of each glyph.
        labels: ``(n, len(ATTRIBUTES))`` class of each attribute per glyph.
        splits: ``{split: (k,) glyph rows}``.
    """

    def __init__(self, catalog: Catalog, letters: str, seed: int, held_out: float) -> None:
        self.catalog, self.letters = catalog, letters
        self.class_names = {"letter": tuple(letters), "family": catalog.families, **STYLE_CLASSES}
        empty = set(catalog.empty)
        rows = [
            (f, k)
            for f in range(len(catalog.faces))
            for k, c in enumerate(letters)
            if (f, c) not in empty
        ]
        self.glyphs = np.array(rows, dtype=np.int64).reshape(-1, 2)  # (n, 2)
        faces = catalog.faces
        face_labels = np.array(
            [
                [self.class_names[a].index(getattr(face, a)) for a in ATTRIBUTES[1:]]
                for face in faces
            ]
        )  # (F, 4)
        self.labels = np.concatenate([self.glyphs[:, 1:], face_labels[self.glyphs[:, 0]]], 1)
        held = np.array([_hash(seed, faces[f].name, letters[k]) for f, k in rows])  # (n,) in [0, 1)
        names = np.where(held < held_out / 2, "val", np.where(held < held_out, "test", "train"))
        self.splits = {split: np.flatnonzero(names == split) for split in SPLITS}
        for split, rows_ in self.splits.items():
            if len(rows_) == 0:
                raise DataError(
                    f"fonts: no glyph in the {split} split ({len(self.glyphs)} glyphs, held_out "
                    f"{held_out}); raise held_out or add fonts"
                )

    def matching(self, glyph: int, attributes: Sequence[str], pool: np.ndarray) -> np.ndarray:
        """The glyphs of ``pool`` with ``glyph``'s classes of every one of ``attributes``."""
        columns = [ATTRIBUTES.index(a) for a in attributes]
        same = self.labels[pool][:, columns] == self.labels[glyph, columns]  # (k, A')
        return pool[same.all(1)]

    def names(self, glyph: int) -> dict[str, str]:
        """The class name of each attribute of ``glyph``."""
        return {
            a: self.class_names[a][y] for a, y in zip(ATTRIBUTES, self.labels[glyph], strict=True)
        }


def _hash(seed: int, face: str, letter: str) -> float:
    """A uniform number in ``[0, 1)`` from the glyph's names: the same on every machine."""
    return zlib.crc32(f"{seed}|{face}|{letter}".encode()) / 2**32


class GlyphRenderer:
    """Draws glyphs; fonts are opened once per process and size (not pickled).

    Args:
        catalog: The faces.
        image_size: Height and width in pixels.
        glyph_scale: Pixels per em over ``image_size``.
        size_jitter: Relative change of the size, uniform in ``[-size_jitter, size_jitter)``.
        position_jitter: Largest move of the glyph on each axis, over ``image_size``.
    """

    def __init__(
        self,
        catalog: Catalog,
        image_size: int,
        glyph_scale: float,
        size_jitter: float,
        position_jitter: float,
    ) -> None:
        self.catalog, self.image_size, self.glyph_scale = catalog, image_size, glyph_scale
        self.size_jitter, self.position_jitter = size_jitter, position_jitter
        self._fonts: dict[tuple[int, int], ImageFont.FreeTypeFont] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fonts": {}}

    def font(self, face: int, size: int) -> ImageFont.FreeTypeFont:
        key = (face, size)
        if key not in self._fonts:
            f = self.catalog.faces[face]
            self._fonts[key] = ImageFont.truetype(f.file, size, index=f.index)
        return self._fonts[key]

    def __call__(self, face: int, letter: str, jitter: np.ndarray) -> torch.Tensor:
        """``(3, S, S)`` uint8: ``letter`` in ``face``, placed by ``jitter`` (3 uniforms)."""
        s = self.image_size
        u = 2.0 * jitter - 1.0  # in [-1, 1)
        size = max(4, round(s * self.glyph_scale * (1.0 + self.size_jitter * u[0])))
        left, top, right, bottom = self.font(face, size).getbbox(letter, anchor="ls")
        largest = max(right - left, bottom - top)
        if largest > s - 2:  # too large (a swash, a wide script letter): fit it
            size = max(4, int(size * (s - 2) / largest))
            left, top, right, bottom = self.font(face, size).getbbox(letter, anchor="ls")
        origin = []
        for low, high, v in ((left, right, u[1]), (top, bottom, u[2])):
            slack = max(0.0, (s - (high - low)) / 2)  # room either side of the centred ink
            move = float(np.clip(v * self.position_jitter * s, -slack, slack))
            origin.append((s - (high - low)) / 2 + move - low)
        canvas = Image.new("L", (s, s), 255)
        ImageDraw.Draw(canvas).text(
            tuple(origin), letter, fill=0, font=self.font(face, size), anchor="ls"
        )
        return torch.from_numpy(np.array(canvas)).expand(3, s, s).contiguous()  # (3, S, S)


def check_attributes(names: Sequence[str], what: str) -> None:
    """Raise ``ValueError`` naming any of ``names`` that is not a fonts attribute."""
    if isinstance(names, str):
        raise TypeError(f"{what}: expected a list of attribute names, got the string {names!r}")
    unknown = [n for n in names if n not in ATTRIBUTES]
    if unknown:
        raise ValueError(f"unknown attribute(s) {unknown} in {what}; valid: {list(ATTRIBUTES)}")


__all__ = ["ATTRIBUTES", "LETTERS", "GlyphRenderer", "GlyphTable", "check_attributes"]
