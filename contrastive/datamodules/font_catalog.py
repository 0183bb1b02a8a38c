"""The typefaces a machine can render, as fontconfig describes them: one :class:`Face` each.

Fonts are found with fontconfig: ``fc-list`` for every font installed, or ``fc-scan`` on the
``.ttf``, ``.otf`` and ``.ttc`` files of a folder the user names; both print the same fields
(``FIELDS``), read by one parser. Each entry becomes a face with four attributes:

==========  ==========================================================================
attribute   from
==========  ==========================================================================
family      fontconfig's first family name; where faces of one name come in several
            widths, one not of normal width (``DejaVu Sans`` at width 87) takes the
            longer name fontconfig also lists (``DejaVu Sans Condensed``), or the
            width's name appended
weight      ``regular`` for fontconfig weights 70-110 (Book, Regular, Medium), ``bold``
            for 170-215 (SemiBold to Black); where a family has several faces in one
            class and slant, a face whose style says its weight (Regular, Bold) is
            kept before one named otherwise (Light, Medium, SemiBold, Black), then
            the one nearest Regular (80) or Bold (200)
slant       ``italic`` for any non-zero slant (italic or oblique), else ``upright``
spacing     ``monospace`` when every letter has the same advance width (measured: many
            monospaced fonts do not say so to fontconfig), else ``proportional``
==========  ==========================================================================

Left out, counted by reason (:attr:`Catalog.skipped`): fonts that are neither TrueType nor
CFF (bitmap, Type 1), variable fonts and their named instances, fonts whose character set
lacks one of the letters, other weights (Thin, Light, ...), and duplicates of a kept face.
A glyph that renders empty is left out of the glyph table, also counted.
"""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from PIL import ImageFont

from contrastive.datamodules.common import DataError

FIELDS = ("file", "index", "family", "familylang", "style", "weight", "slant", "width", "charset")
FORMAT = "\t".join(f"%{{{name}}}" for name in FIELDS) + r"\n"
FONT_SUFFIXES = (".ttf", ".otf", ".ttc")
_FORMATS = ("TrueType", "CFF")
# fontconfig weight windows and the weight each class prefers (FC_WEIGHT_REGULAR, _BOLD).
WEIGHTS = {"regular": (70.0, 110.0, 80.0), "bold": (170.0, 215.0, 200.0)}
# fontconfig's named widths (FC_WIDTH_*), for a face of another width without its own name.
_WIDTH_NAMES = {
    50: "UltraCondensed",
    63: "ExtraCondensed",
    75: "Condensed",
    87: "SemiCondensed",
    113: "SemiExpanded",
    125: "Expanded",
    150: "ExtraExpanded",
    200: "UltraExpanded",
}
_MEASURE_SIZE = 64  # pixels per em when checking glyphs and advances
# Style words that name a weight other than Regular or Bold: such a face is kept only when its
# family has no face in that class whose style says Regular or Bold.
_OTHER_WEIGHTS = frozenset(
    "thin hairline extralight ultralight light semilight demilight medium semibold demibold "
    "demi extrabold ultrabold heavy black extrablack ultrablack".split()
)


class Face(NamedTuple):
    """One usable font face.

    Attributes:
        file: The font file.
        index: The face's index in the file (non-zero in ``.ttc`` collections).
        family: The family name, also the ``family`` class name.
        weight: ``"regular"`` or ``"bold"``.
        slant: ``"upright"`` or ``"italic"``.
        spacing: ``"proportional"`` or ``"monospace"``.
        style: fontconfig's style name (``"Bold Oblique"``), for messages.
    """

    file: str
    index: int
    family: str
    weight: str
    slant: str
    spacing: str
    style: str

    @property
    def name(self) -> str:
        """``DejaVu Serif Bold Italic``; regular and upright go unsaid."""
        words = [self.family]
        words += ["Bold"] if self.weight == "bold" else []
        words += ["Italic"] if self.slant == "italic" else []
        return " ".join(words)


@dataclass
class Catalog:
    """The usable faces, sorted by name, and what was left out.

    Attributes:
        faces: One per (family, weight, slant).
        skipped: Fonts left out, by reason.
        empty: ``(face index, letter)`` glyphs that render empty.
        source: ``"fontconfig"`` or the folder scanned.
    """

    faces: tuple[Face, ...]
    skipped: Counter[str] = field(default_factory=Counter)
    empty: tuple[tuple[int, str], ...] = ()
    source: str = "fontconfig"

    @property
    def families(self) -> tuple[str, ...]:
        """The family names, sorted (the ``family`` class names)."""
        return tuple(sorted({face.family for face in self.faces}))

    def summary(self) -> str:
        """One line: what is used, and what was left out and why."""
        line = f"fonts ({self.source}): {len(self.faces)} faces in {len(self.families)} families"
        if self.skipped:
            reasons = ", ".join(f"{reason}: {n}" for reason, n in self.skipped.most_common())
            line += f"; left out {sum(self.skipped.values())} fonts ({reasons})"
        if self.empty:
            first = ", ".join(f"{self.faces[f].name} '{c}'" for f, c in self.empty[:3])
            line += f"; {len(self.empty)} glyphs render empty ({first}...)"
        return line


def _run(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise DataError(
            f"fonts: fontconfig's {command[0]} was not found; install fontconfig "
            "(apt-get install fontconfig) to list or read fonts"
        ) from None
    if done.returncode != 0:
        raise DataError(f"fonts: {command[0]} failed: {done.stderr.strip()[:200]}")
    return done.stdout


def fontconfig_entries(folder: str | None = None) -> list[dict[str, str]]:
    """fontconfig's description of every installed font, or of the font files in ``folder``.

    Raises:
        DataError: fontconfig is missing, or the folder is not one.
    """
    if folder is None:
        return parse_entries(_run(["fc-list", "--format", FORMAT]))
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DataError(f"fonts: '{folder}' is not a folder of .ttf/.otf/.ttc files")
    files = sorted(
        str(path)
        for path in root.rglob("*")
        if path.suffix.lower() in FONT_SUFFIXES and path.is_file()
    )
    entries = []
    for start in range(0, len(files), 256):  # keeps each command line short
        entries += parse_entries(_run(["fc-scan", "--format", FORMAT, *files[start : start + 256]]))
    return entries


def parse_entries(text: str) -> list[dict[str, str]]:
    """Lines of tab-separated ``FIELDS`` (fontconfig's output) -> one dict per line."""
    rows = [line.split("\t") for line in text.splitlines() if line.strip()]
    return [dict(zip(FIELDS, row, strict=True)) for row in rows if len(row) == len(FIELDS)]


def covers(charset: str, letters: str) -> bool:
    """Whether fontconfig's ``charset`` (``"20-7e a0-17f"``, hex ranges) has every letter."""
    ranges = []
    for part in charset.split():
        low, _, high = part.partition("-")
        ranges.append((int(low, 16), int(high or low, 16)))
    return all(any(lo <= ord(c) <= hi for lo, hi in ranges) for c in letters)


def _english_names(entry: dict[str, str]) -> list[str]:
    families, languages = entry["family"].split(","), entry["familylang"].split(",")
    names = [n for n, lang in zip(families, languages, strict=False) if lang.startswith("en")]
    return [n.strip() for n in names or families]


def family_name(names: Sequence[str], width: float, qualify: bool) -> str:
    """The family of an entry from its English family ``names``: the first, qualified by
    ``width`` (fontconfig's, 100 is normal) when ``qualify`` (other faces of that name have
    other widths) and it is not normal."""
    first = names[0]
    if not qualify or round(width) == 100:
        return first
    longer = sorted((n for n in names[1:] if n.startswith(first + " ")), key=len)
    if longer:
        return longer[0]
    nearest = min(_WIDTH_NAMES, key=lambda w: abs(w - width))
    return f"{first} {_WIDTH_NAMES[nearest]}"


def _weight_class(value: float) -> str | None:
    for name, (low, high, _) in WEIGHTS.items():
        if low <= value <= high:
            return name
    return None


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:  # a range "[40 205]": a variable font
        return None


def select_faces(
    entries: Iterable[dict[str, str]], letters: str
) -> tuple[list[tuple[tuple[bool, float], dict]], Counter[str]]:
    """Entries that can be faces, each with its rank in its class (lower is preferred): whether
    its style names another weight, and its distance from the class's preferred weight."""
    skipped: Counter[str] = Counter()
    kept = []
    for entry in entries:
        weight, index = _number(entry["weight"]), int(entry["index"] or 0)
        if Path(entry["file"]).suffix.lower() not in FONT_SUFFIXES:
            skipped["not a .ttf/.otf/.ttc file"] += 1
        elif weight is None or index >= 1 << 16:
            skipped["variable font"] += 1
        elif not covers(entry["charset"], letters):
            skipped["lacks a letter"] += 1
        elif _weight_class(weight) is None:
            skipped["weight neither regular nor bold"] += 1
        else:
            entry = {**entry, "weight_class": _weight_class(weight)}
            style = set(entry["style"].split(",")[0].lower().replace("-", " ").split())
            rank = (bool(style & _OTHER_WEIGHTS), abs(weight - WEIGHTS[entry["weight_class"]][2]))
            kept.append((rank, entry))
    return kept, skipped


def _measure(face: Face, letters: str) -> tuple[bool, list[str]]:
    """Whether every letter has one advance width, and the letters that render empty."""
    font = ImageFont.truetype(face.file, _MEASURE_SIZE, index=face.index)
    advances = [font.getlength(c) for c in letters]
    empty = [c for c in letters if font.getmask(c).getbbox() is None]
    return max(advances) - min(advances) < 0.01 * _MEASURE_SIZE, empty


def read_catalog(
    fonts: str | None = None,
    letters: str = "abcdefghijklmnopqrstuvwxyz",
    families: Sequence[str] | None = None,
) -> Catalog:
    """The usable faces of the installed fonts (``fonts=None``) or of a folder.

    Args:
        fonts: ``None`` for fontconfig's installed fonts, or a folder of font files.
        letters: The characters every face must render.
        families: Keep only these families (every one must be found).

    Raises:
        DataError: No usable face, a named family not found, or fontconfig missing.
    """
    entries = fontconfig_entries(fonts)
    widths: dict[str, set[float]] = {}
    for entry in entries:
        widths.setdefault(_english_names(entry)[0], set()).add(_number(entry["width"]) or 100.0)
    named = []
    for entry in entries:
        names = _english_names(entry)
        width, qualify = _number(entry["width"]) or 100.0, len(widths[names[0]]) > 1
        named.append({**entry, "family_name": family_name(names, width, qualify)})
    if families is not None:  # before the checks: what is left out is counted among these
        usable = {e["family_name"] for _, e in select_faces(named, letters)[0]}
        missing = sorted(set(families) - usable)
        if missing:
            found = ", ".join(sorted(usable)) or "none"
            raise DataError(f"fonts: families not found: {', '.join(missing)} (found: {found})")
        named = [e for e in named if e["family_name"] in set(families)]
    candidates, skipped = select_faces(named, letters)
    best: dict[tuple[str, str, str], tuple[tuple[bool, float], str, str, Face]] = {}
    for preference, entry in candidates:
        family = entry["family_name"]
        slant = "italic" if float(entry["slant"] or 0) > 0 else "upright"
        face = Face(
            entry["file"],
            int(entry["index"] or 0),
            family,
            entry["weight_class"],
            slant,
            "proportional",
            entry["style"].split(",")[0],
        )
        key = (family, face.weight, slant)
        rank = (preference, os.path.basename(face.file), face.file)
        if key in best:
            skipped["duplicate of a kept face"] += 1
            if rank >= best[key][:3]:
                continue
        best[key] = (*rank, face)
    faces = sorted((face for *_, face in best.values()), key=lambda f: f.name)
    if not faces:
        where = "installed (fc-list)" if fonts is None else f"in '{fonts}'"
        raise DataError(
            f"fonts: no usable font {where}: {len(entries)} found, none a regular or bold "
            f"TrueType/OpenType face covering '{letters}'"
        )
    measured, empty = [], []
    for i, face in enumerate(faces):
        mono, blank = _measure(face, letters)
        measured.append(face._replace(spacing="monospace" if mono else "proportional"))
        empty += [(i, c) for c in blank]
    source = "fontconfig" if fonts is None else str(fonts)
    return Catalog(tuple(measured), skipped, tuple(empty), source)


__all__ = ["Catalog", "Face", "covers", "family_name", "fontconfig_entries", "read_catalog"]
