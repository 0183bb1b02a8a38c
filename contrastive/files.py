"""The files users hand in and the files tools write, read and written one way everywhere.

- :func:`scan_images`: the image files under a folder, links followed once and never into a
  cycle, each real file listed once.
- :func:`table_rows`, :func:`json_rows`, :func:`read_rows`, :func:`read_text`: CSV/TSV tables,
  JSON lines and plain text files, read as UTF-8 (a byte-order mark allowed); a file that is not
  UTF-8 is one :class:`TableError` line naming the file and the offset of its first bad byte.
- :func:`atomic_writer`: a file written to a temporary ``.<name>.*.part`` beside it, flushed
  to disk and renamed into place, with the permissions the user's umask gives any new file;
  :func:`remove_partial_files` clears what a killed run left.

No torch here: the data tools (:mod:`contrastive.tools`) use this module as well as the data
modules.
"""

from __future__ import annotations

import codecs
import csv
import json
import os
import re
import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, NamedTuple, TextIO

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".jfif",
    ".png",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
    ".pbm",
    ".pnm",
)
JSON_SUFFIXES = (".jsonl", ".json")
_PART = re.compile(r"\..+\.part")


class TableError(ValueError):
    """A table that cannot be read (not UTF-8, a missing column, a broken CSV); one line."""


# ---- image folders -------------------------------------------------------------------------


class Scan(NamedTuple):
    """What :func:`scan_images` found.

    Attributes:
        images: The image files, in walk order (a folder's files sorted, then its sub-folders
            in sorted order, depth first).
        ignored: Other files (a README, a CSV), counted once each.
        repeated: Links to a file or folder listed already (a link to a sibling folder, a
            loop back to a parent): skipped.
    """

    images: list[Path]
    ignored: int
    repeated: int


def scan_images(folder: str | os.PathLike) -> Scan:
    """Every image file under ``folder`` (by extension, any case), each real file once.

    Links to folders and files are followed, but a folder whose resolved path was scanned
    already is not entered again, so a link back to a parent ends there instead of looping,
    and a file reached again through a link (a link to a sibling folder, a link to a file) is
    skipped: the first path in walk order names it. Hidden files and folders (names starting
    with ``.``) are neither listed nor counted. A broken link with an image extension is
    listed (the loader reports it as missing).
    """
    images: list[Path] = []
    ignored = repeated = 0
    seen_folders: set[str] = set()
    seen_files: set[str] = set()
    stack = [os.fspath(folder)]
    while stack:
        directory = stack.pop()
        real = os.path.realpath(directory)
        if real in seen_folders:
            repeated += 1
            continue
        seen_folders.add(real)
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:  # unreadable, or removed while scanning
            continue
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_folder = entry.is_dir()  # follows links
            except OSError:
                is_folder = False
            if is_folder:
                subfolders.append(entry.path)
            elif not entry.name.lower().endswith(IMAGE_EXTENSIONS):
                ignored += 1
            else:
                # A file's resolved path: its folder's, unless it is a link itself.
                key = os.path.join(real, entry.name)
                if entry.is_symlink():
                    key = os.path.realpath(entry.path)
                if key in seen_files:
                    repeated += 1
                    continue
                seen_files.add(key)
                images.append(Path(entry.path))
        stack.extend(reversed(subfolders))  # popped in sorted order: os.walk's order
    return Scan(images, ignored, repeated)


# ---- tables --------------------------------------------------------------------------------


def first_bad_byte(path: str | os.PathLike) -> tuple[int, int] | None:
    """The offset and value of the first byte of ``path`` that is not UTF-8; ``None`` if all is."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            pending = decoder.getstate()[0]  # bytes of a character the last block cut
            try:
                decoder.decode(block)
            except UnicodeDecodeError as err:
                data = pending + block
                return offset - len(pending) + err.start, data[err.start]
            offset += len(block)
        pending = decoder.getstate()[0]
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as err:  # the file ends inside a character
            return offset - len(pending) + err.start, pending[err.start]
    return None


def _not_utf8(path: str | os.PathLike) -> str:
    found = first_bad_byte(path)
    where = "" if found is None else f" at byte {found[0]} (0x{found[1]:02x})"
    with open(path, "rb") as f:
        start = f.read(2)
    utf16 = (
        " (it starts with a UTF-16 byte-order mark)" if start in (b"\xff\xfe", b"\xfe\xff") else ""
    )
    return f"{path}: not UTF-8 text{where}{utf16}; save it as UTF-8"


@contextmanager
def open_text(path: str | os.PathLike, errors: str = "strict") -> Iterator[TextIO]:
    """``path`` opened as UTF-8 text, a byte-order mark skipped; lines keep their endings.

    Args:
        path: The file.
        errors: ``"strict"``: a byte that is not UTF-8 raises :class:`TableError` naming the
            file and the byte's offset; ``"replace"``: it reads as U+FFFD.
    """
    with open(path, newline="", encoding="utf-8-sig", errors=errors) as f:
        try:
            yield f
        except UnicodeDecodeError:
            raise TableError(_not_utf8(path)) from None


def read_text(path: str | os.PathLike) -> str:
    """The whole of a UTF-8 text file (a byte-order mark skipped), line endings as they are.

    Raises:
        TableError: The file is not UTF-8 (the message gives the first bad byte).
    """
    with open_text(path) as f:
        return f.read()


def table_rows(
    path: str | os.PathLike,
    separator: str | None = None,
    required: Sequence[str] = (),
    hint: str = "",
    errors: str = "strict",
) -> Iterator[tuple[int, dict[str, str]]]:
    """``(line number, row)`` for each row of a CSV/TSV table with a header row.

    Quoted fields may hold separators and line breaks; a row's number is its last line.

    Args:
        path: The table.
        separator: The field separator; ``None`` for a tab in ``.tsv`` files, else a comma.
        required: Columns the header must have.
        hint: Added to the missing-column message (what the user can set instead).
        errors: See :func:`open_text`.

    Raises:
        TableError: The file is not UTF-8, lacks a required column, or is not valid CSV.
    """
    path = Path(path)
    separator = separator or ("\t" if path.suffix.lower() == ".tsv" else ",")
    csv.field_size_limit(1 << 24)  # long free-text fields (inscriptions, provenance)
    with open_text(path, errors) as f:
        reader = csv.DictReader(f, delimiter=separator)
        try:
            columns = reader.fieldnames or []
            missing = [c for c in required if c not in columns]
            if missing:
                raise TableError(
                    f"{path}: no column {missing[0]!r} (separator {separator!r}); its columns "
                    f"are {columns[:20]}{', ...' if len(columns) > 20 else ''}{hint}"
                )
            for row in reader:
                yield reader.line_num, row
        except csv.Error as err:
            line = reader.reader.line_num  # DictReader's own count lags on an error
            raise TableError(f"{path}:{line}: not a valid table row ({err})") from None


def json_rows(path: str | os.PathLike) -> Iterator[tuple[int, dict | None]]:
    """``(line number, object)`` for each non-blank line of a JSON-lines file; ``None`` for a
    line that is not a JSON object (a torn last line, a stray text line).

    Raises:
        TableError: The file is not UTF-8.
    """
    with open_text(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            yield number, row if isinstance(row, dict) else None


def read_rows(
    path: str | os.PathLike, required: Sequence[str] = (), hint: str = ""
) -> Iterator[tuple[int, dict | None]]:
    """:func:`json_rows` for ``.jsonl`` / ``.json`` files, :func:`table_rows` for others (a
    JSON row's keys are not checked against ``required``: each row may differ)."""
    if Path(path).suffix.lower() in JSON_SUFFIXES:
        return json_rows(path)
    return table_rows(path, required=required, hint=hint)


# ---- writing -------------------------------------------------------------------------------


@contextmanager
def atomic_writer(
    dest: str | os.PathLike, binary: bool = False, check: Callable[[Path], None] | None = None
) -> Iterator[IO]:
    """A file object whose content replaces ``dest`` only when the block ends without error.

    It writes ``.<name>.<random>.part`` in ``dest``'s folder, created like any new file (mode
    0666 less the umask, as ``open`` gives), then flushes it to disk, calls ``check`` on it
    (which may raise to reject it) and renames it over ``dest``: a reader sees the old file or
    the new one, never a part. On an error the temporary file is removed and the error
    propagates; a kill leaves it for :func:`remove_partial_files`.
    """
    dest = Path(dest)
    while True:
        tmp = dest.parent / f".{dest.name}.{secrets.token_hex(4)}.part"
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
            fd = os.open(tmp, flags, 0o666)  # the umask applies, as for open()
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # the rename must never publish unwritten blocks
        if check is not None:
            check(tmp)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_partial_files(folder: str | os.PathLike) -> int:
    """Delete the temporary ``.*.part`` files of :func:`atomic_writer` in ``folder`` (not
    below it); returns how many."""
    removed = 0
    for path in Path(folder).iterdir():
        if _PART.fullmatch(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed += 1
    return removed
