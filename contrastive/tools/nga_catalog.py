"""What ``contrastive data nga`` downloads and what it writes: the NGA's tables joined into
:class:`Artwork` rows, the image checks, and the folder's ``manifest.jsonl``.

The NGA publishes its collection data under CC0 as CSV files in its open-data repository
(github.com/NationalGalleryOfArt/opendata): ``objects.csv``, one row per artwork (objectid,
title, attribution, classification, medium, beginyear, ...), and ``published_images.csv``, one
row per image (uuid, iiifurl, viewtype, depictstmsobjectid, ...). :func:`select_artworks` joins
them on the object id, keeping each artwork's primary view. No path comes from the tables: a
file is named by the artwork's integer object id, and a row is kept only if its uuid is a UUID
and its ``iiifurl`` lies under the image base URL (:func:`~contrastive.tools.fetch.url_under`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from contrastive.files import TableError, atomic_writer, json_rows, table_rows
from contrastive.tools.fetch import FetchError, url_under

OBJECTS_CSV = "objects.csv"
IMAGES_CSV = "published_images.csv"
MANIFEST = "manifest.jsonl"
IMAGES_DIR = "images"
MANIFEST_FIELDS = (
    "path",
    "objectid",
    "uuid",
    "title",
    "artist",
    "classification",
    "medium",
    "year",
    "displaydate",
)
OBJECT_COLUMNS = ("objectid", "title", "attribution", "classification", "medium", "beginyear")
IMAGE_COLUMNS = ("uuid", "iiifurl", "viewtype", "depictstmsobjectid")

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_OBJECT_ID = re.compile(r"[0-9]{1,12}")
_YEAR = re.compile(r"-?[0-9]{1,5}")
_MANIFEST_PATH = re.compile(IMAGES_DIR + r"/([0-9]{1,12})\.jpg")


class NGAError(RuntimeError):
    """Nothing could be done (a CSV missing or malformed, nothing matched); one line to the user."""


# ---- what to download ----------------------------------------------------------------------


@dataclass(frozen=True)
class Artwork:
    """One artwork with its primary image, every field checked or cleaned."""

    objectid: int
    uuid: str
    iiifurl: str
    title: str
    artist: str
    classification: str
    medium: str
    year: int | None
    displaydate: str

    @property
    def path(self) -> str:
        """The image's path relative to the root, made from the integer object id only."""
        return f"{IMAGES_DIR}/{self.objectid}.jpg"

    def image_url(self, size: int) -> str:
        """The IIIF URL of the whole image, scaled to fit in ``size x size``."""
        return f"{self.iiifurl}/full/!{size},{size}/0/default.jpg"

    def manifest_row(self) -> dict:
        row = {
            "path": self.path,
            "objectid": self.objectid,
            "uuid": self.uuid,
            "title": self.title,
            "artist": self.artist,
            "classification": self.classification,
            "medium": self.medium,
            "year": self.year,
            "displaydate": self.displaydate,
        }
        assert tuple(row) == MANIFEST_FIELDS
        return row


def _clean(text: str | None) -> str:
    """One line of text: whitespace runs and control characters become single spaces."""
    return " ".join((text or "").split())


def _year(text: str | None) -> int | None:
    text = (text or "").strip()
    if text.endswith(".0"):  # some exports write integers as floats
        text = text[:-2]
    return int(text) if _YEAR.fullmatch(text) else None


def _unsafe_reason(objectid: str, uuid: str, iiifurl: str, image_base_url: str) -> str | None:
    if not _OBJECT_ID.fullmatch(objectid):
        return f"objectid {objectid[:80]!r} is not an integer"
    if not _UUID.fullmatch(uuid):
        return f"uuid {uuid[:80]!r} is not a UUID"
    if not url_under(iiifurl, image_base_url):
        return f"iiifurl {iiifurl[:120]!r} is not under {image_base_url}"
    return None


def read_rows(path: Path, required: Sequence[str]) -> Iterator[dict[str, str]]:
    """The rows of one of the NGA's CSV files; raises :class:`NGAError` if a required column is
    missing. A byte that is not UTF-8 reads as U+FFFD: one stray byte in the NGA's tables must
    not stop a download (a user's own tables are refused instead, see
    :func:`contrastive.files.table_rows`)."""
    try:
        for _, row in table_rows(path, required=required, errors="replace"):
            yield row
    except TableError as err:
        raise NGAError(str(err)) from None


@dataclass
class Selection:
    """The artworks to download and what the CSVs held besides."""

    artworks: list[Artwork]
    unsafe: list[str]  # one line per skipped row: which field and why
    classifications: Counter  # every classification with a primary image, to suggest filters
    matched: int  # artworks that passed the filter, before --limit


def select_artworks(
    objects_csv: Path,
    images_csv: Path,
    image_base_url: str,
    classifications: Sequence[str] = (),
    limit: int | None = None,
) -> Selection:
    """Join the two tables on the object id, keeping each artwork's first primary image.

    Args:
        objects_csv: ``objects.csv``.
        images_csv: ``published_images.csv``.
        image_base_url: Image URLs must lie under it (see :func:`url_under`).
        classifications: Keep these classifications (case-insensitive); all when empty.
        limit: Keep at most this many artworks, chosen by a hash of the object id: a spread-out
            sample that is the same on every run and changes little as the collection grows.

    Returns:
        The artworks sorted by object id, and the rows skipped as unsafe.
    """
    primary: dict[str, tuple[str, str]] = {}
    for row in read_rows(images_csv, IMAGE_COLUMNS):
        if (row["viewtype"] or "").strip().lower() == "primary":
            key = (row["depictstmsobjectid"] or "").strip()
            primary.setdefault(key, ((row["uuid"] or "").strip(), (row["iiifurl"] or "").strip()))
    wanted = {c.strip().lower() for c in classifications if c.strip()}
    found: Counter = Counter()
    unsafe: list[str] = []
    artworks: dict[int, Artwork] = {}
    for row in read_rows(objects_csv, OBJECT_COLUMNS):
        key = (row["objectid"] or "").strip()
        if key not in primary:
            continue
        classification = _clean(row["classification"])
        found[classification] += 1
        if wanted and classification.lower() not in wanted:
            continue
        uuid, iiifurl = primary[key]
        problem = _unsafe_reason(key, uuid, iiifurl, image_base_url)
        if problem is not None:
            unsafe.append(f"(objectid {key[:40]!r}): {problem}")
            continue
        if int(key) in artworks:
            continue
        artworks[int(key)] = Artwork(
            objectid=int(key),
            uuid=uuid.lower(),
            iiifurl=iiifurl.rstrip("/"),
            title=_clean(row["title"]),
            artist=_clean(row["attribution"]),
            classification=classification,
            medium=_clean(row["medium"]),
            year=_year(row["beginyear"]),
            displaydate=_clean(row.get("displaydate")),
        )
    chosen = list(artworks.values())
    if limit is not None and limit < len(chosen):
        chosen.sort(key=lambda a: hashlib.sha256(str(a.objectid).encode()).digest())
        chosen = chosen[:limit]
    chosen.sort(key=lambda a: a.objectid)
    return Selection(chosen, unsafe, found, len(artworks))


def is_complete_jpeg(path: Path) -> bool:
    """Cheap check that ``path`` holds a whole JPEG: its start marker, and an end marker in
    its last KiB (encoders may pad after it). Every file this tool writes passed a full decode
    first; this catches files cut short by other means without decoding on every resume."""
    try:
        with open(path, "rb") as f:
            if f.read(3) != b"\xff\xd8\xff":
                return False
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - 1024))
            return b"\xff\xd9" in f.read()
    except OSError:
        return False


def check_jpeg(path: Path) -> None:
    """Raise :class:`FetchError` unless ``path`` is a complete JPEG that decodes."""
    if not is_complete_jpeg(path):
        raise FetchError("corrupt image", "no JPEG start or end marker", retry=True)
    try:
        with Image.open(path) as image:
            if image.format != "JPEG":
                raise FetchError("corrupt image", f"a {image.format} file, not a JPEG")
            image.load()
    except FetchError:
        raise
    except Exception as err:  # Pillow raises many types for damaged data
        raise FetchError("corrupt image", f"{type(err).__name__}: {err}", retry=True) from None


# ---- the manifest --------------------------------------------------------------------------


def read_manifest(root: str | os.PathLike) -> list[dict]:
    """The rows of ``root/manifest.jsonl``, in file order.

    Lines that are not JSON objects, or whose ``path`` is not ``images/<objectid>.jpg`` for the
    row's own integer ``objectid``, are dropped: no path is taken from the file unchecked.
    Returns an empty list when there is no manifest.

    Raises:
        TableError: The manifest is not UTF-8.
    """
    path = Path(root) / MANIFEST
    if not path.is_file():
        return []
    rows = []
    for _, row in json_rows(path):
        if row is None or not isinstance(row.get("objectid"), int):
            continue
        match = _MANIFEST_PATH.fullmatch(str(row.get("path", "")))
        if match is None or int(match.group(1)) != row["objectid"]:
            continue
        rows.append({field: row.get(field) for field in MANIFEST_FIELDS})
    return rows


def write_manifest(root: Path, rows: dict[int, dict]) -> int:
    """Merge ``rows`` (object id -> row) into the manifest, atomically; returns its row count.

    Earlier rows stay unless this run has a newer row for the same object; rows whose image
    file is gone are dropped.
    """
    merged = {row["objectid"]: row for row in read_manifest(root)}
    merged.update(rows)
    kept = [row for _, row in sorted(merged.items()) if (root / row["path"]).is_file()]
    with atomic_writer(root / MANIFEST) as f:
        for row in kept:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(kept)
