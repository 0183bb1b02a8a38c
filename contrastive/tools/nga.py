"""``contrastive data nga``: National Gallery of Art images and their metadata, on disk.

The NGA publishes its collection data under CC0 as CSV files in its open-data repository
(github.com/NationalGalleryOfArt/opendata): ``objects.csv``, one row per artwork (objectid,
title, attribution, classification, medium, beginyear, ...), and ``published_images.csv``, one
row per image (uuid, iiifurl, viewtype, depictstmsobjectid, ...). This tool fetches both, joins
them on the object id keeping each artwork's primary view, and downloads the images from the
NGA's IIIF image service (``{iiifurl}/full/!S,S/0/default.jpg``: the longer side at most S)::

    contrastive data nga --root data/nga --classification painting --limit 5000 --size 512

writes::

    data/nga/images/<objectid>.jpg    one JPEG per artwork
    data/nga/manifest.jsonl           one JSON object per image (MANIFEST_FIELDS): path,
                                      objectid, uuid, title, artist, classification, medium,
                                      year (beginyear, or null), displaydate
    data/nga/csv/*.csv                the two source tables, as fetched by the last run
                                      (``--reuse-csv`` reads them instead of fetching again)

Safety and robustness:

- No path comes from the CSVs. A file is named by the artwork's integer object id, and a row's
  image is fetched only if its uuid is a UUID and its ``iiifurl`` lies under
  ``--image-base-url`` (same scheme and host, no ``..``, query or escapes); other rows are
  skipped and counted as unsafe. Redirects may not leave the image base URL either.
- Every file goes to a temporary ``.<name>.*.part`` in its final folder and is checked (HTTP
  status, ``Content-Type: image/jpeg``, the ``--max-image-mb`` cap, the announced length, a
  JPEG that decodes) before it is renamed into place: a file is complete or absent. The next run
  removes the temporary files of a killed one.
- Running again resumes: images already on disk are kept, the rest fetched. Network errors,
  truncated bodies, undecodable JPEGs and HTTP 408/425/429/5xx are retried with exponential
  backoff (``Retry-After`` honoured up to ``--max-backoff``); other statuses, a wrong content
  type and an oversized body are not. Ctrl-C stops the downloads in progress and exits 130.
- The manifest is rewritten atomically at the end, merging the rows of earlier runs whose files
  still exist, so runs with other ``--classification`` filters add up in one folder.

Progress goes to stderr; the summary (counts of downloaded / already present / failed images
by reason, and the first failures) to stdout. Exit status: 0 when the run did what it could
(some images may have failed), 1 with one ``error:`` line when nothing could be done (a CSV
could not be fetched or read, no artwork matched, not one image could be had), 130 on Ctrl-C.
Only the standard library does HTTP (``urllib``, a thread pool); Pillow checks the JPEGs.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import http.client
import json
import os
import re
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from PIL import Image

DEFAULT_CSV_BASE_URL = "https://raw.githubusercontent.com/NationalGalleryOfArt/opendata/main/data"
DEFAULT_IMAGE_BASE_URL = "https://api.nga.gov/iiif"
OBJECTS_CSV = "objects.csv"
IMAGES_CSV = "published_images.csv"
MANIFEST = "manifest.jsonl"
IMAGES_DIR = "images"
CSV_DIR = "csv"
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
# Statuses worth another try: request timeout, too early, rate limited, server errors.
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
USER_AGENT = "contrastive-data-nga/0.1 (Python urllib)"
MB = 1 << 20

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_OBJECT_ID = re.compile(r"[0-9]{1,12}")
_YEAR = re.compile(r"-?[0-9]{1,5}")
_URL_TAIL = re.compile(r"[A-Za-z0-9._~-]+(?:/[A-Za-z0-9._~-]+)*")
_MANIFEST_PATH = re.compile(IMAGES_DIR + r"/([0-9]{1,12})\.jpg")
_PART = re.compile(r"\..+\.part")
_CHUNK = 1 << 16
_FIRST_FAILURES = 5


class NGAError(RuntimeError):
    """Nothing could be done (a CSV missing or malformed, nothing matched); one line to the user."""


class FetchError(Exception):
    """One URL could not be fetched.

    Attributes:
        reason: A few words that group failures in the summary (``"http 404"``, ``"too large"``).
        detail: What the user can look up: the URL, the size, the content type.
        retry: Whether another attempt may succeed.
        retry_after: Seconds the server asked us to wait, if it said.
    """

    def __init__(
        self, reason: str, detail: str, retry: bool = False, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.retry = retry
        self.retry_after = retry_after


class Interrupted(Exception):
    """Raised in a download thread when the run is being stopped (Ctrl-C)."""


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


def url_under(url: str, base: str) -> bool:
    """Whether ``url`` names a resource strictly below ``base``.

    Same scheme and host (user info and ports included), a path below ``base``'s path made of
    plain segments (letters, digits, ``._~-``; no ``.`` or ``..`` segment, no percent escapes),
    and no query or fragment.
    """
    u, b = urllib.parse.urlsplit(url), urllib.parse.urlsplit(base)
    if (u.scheme.lower(), u.netloc.lower()) != (b.scheme.lower(), b.netloc.lower()):
        return False
    if u.query or u.fragment:
        return False
    prefix = b.path.rstrip("/") + "/"
    if not u.path.startswith(prefix):
        return False
    tail = u.path[len(prefix) :]
    segments = tail.split("/")
    return bool(_URL_TAIL.fullmatch(tail)) and not any(s in (".", "..") for s in segments)


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
    """The rows of a CSV file as dicts; raises :class:`NGAError` if a required column is missing."""
    csv.field_size_limit(1 << 24)  # objects.csv has long inscription and provenance fields
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or ())]
        if missing:
            raise NGAError(
                f"{path.name} lacks the column(s) {missing}; its header is "
                f"{list(reader.fieldnames or [])[:12]}"
            )
        yield from reader


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


# ---- fetching ------------------------------------------------------------------------------


class _RedirectsUnder(urllib.request.HTTPRedirectHandler):
    """Follows redirects only to URLs under one base URL."""

    def __init__(self, base: str) -> None:
        self.base = base

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if not url_under(newurl, self.base):
            fp.close()
            raise FetchError("unsafe redirect", f"{req.full_url} -> {newurl[:200]}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _retry_after(headers) -> float | None:
    """The seconds of a ``Retry-After: N`` header (its date form is ignored)."""
    value = headers.get("Retry-After", "").strip() if headers is not None else ""
    return float(value) if value.isdigit() else None


def backoff_delay(
    attempt: int, backoff: float, max_backoff: float, retry_after: float | None
) -> float:
    """Seconds before retry ``attempt + 1``: exponential from ``backoff``, at least the
    server's ``Retry-After``, at most ``max_backoff``."""
    delay = min(max_backoff, backoff * 2**attempt)
    if retry_after is not None:
        delay = min(max_backoff, max(delay, retry_after))
    return delay


class Fetcher:
    """HTTP GET into a file, atomically, with retries and backoff, a size cap and type check.

    Thread-safe: one instance serves every download thread.

    Args:
        timeout: Seconds a connection or a read may block.
        retries: Further attempts after a retryable failure.
        backoff: Seconds before the first retry, doubled for each next one.
        max_backoff: Longest wait between attempts, ``Retry-After`` included.
        redirect_base: Follow redirects only to URLs under this one; any when ``None``.
        stop: When set, downloads in progress stop (raising :class:`Interrupted`).
    """

    def __init__(
        self,
        timeout: float = 30.0,
        retries: int = 4,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        redirect_base: str | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.stop = stop or threading.Event()
        handlers = [] if redirect_base is None else [_RedirectsUnder(redirect_base)]
        self._opener = urllib.request.build_opener(*handlers)

    def download(
        self,
        url: str,
        dest: Path,
        max_bytes: int,
        content_type: str | None = None,
        check: Callable[[Path], None] | None = None,
    ) -> None:
        """Fetch ``url`` to ``dest``: a temporary file beside it, checked, then renamed.

        Args:
            url: What to fetch.
            dest: The final file; replaced only by a complete, checked download.
            max_bytes: Larger bodies fail (``"too large"``) without being read further.
            content_type: The media type required (``"image/jpeg"``); any when ``None``.
            check: Called on the complete temporary file; raises :class:`FetchError` to reject.

        Raises:
            FetchError: After the last attempt, or at once for a failure not worth retrying.
            Interrupted: When ``stop`` was set.
        """
        attempt = 0
        while True:
            try:
                self._attempt(url, dest, max_bytes, content_type, check)
                return
            except FetchError as err:
                if not err.retry or attempt >= self.retries:
                    raise
                delay = backoff_delay(attempt, self.backoff, self.max_backoff, err.retry_after)
                attempt += 1
                if self.stop.wait(delay):
                    raise Interrupted() from None

    def _attempt(self, url, dest: Path, max_bytes, content_type, check) -> None:
        if self.stop.is_set():
            raise Interrupted()
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out:
                self._get(url, out, max_bytes, content_type)
                out.flush()
                os.fsync(out.fileno())  # the rename must never publish unwritten blocks
            if check is not None:
                check(Path(tmp))
            if self.stop.is_set():
                raise Interrupted()
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _get(self, url: str, out, max_bytes: int, content_type: str | None) -> None:
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        try:
            response = self._opener.open(request, timeout=self.timeout)
        except urllib.error.HTTPError as err:
            retry_after = _retry_after(err.headers)
            err.close()
            raise FetchError(
                f"http {err.code}", url, err.code in RETRY_STATUSES, retry_after
            ) from None
        except (OSError, http.client.HTTPException) as err:  # URLError, timeouts, resets
            reason = getattr(err, "reason", err)
            raise FetchError("network error", f"{url} ({reason})", True) from None
        with response:
            got_type = response.headers.get_content_type()
            if content_type is not None and got_type != content_type:
                raise FetchError("wrong content type", f"{got_type} from {url}")
            length_header = response.headers.get("Content-Length", "")
            length = int(length_header) if length_header.strip().isdigit() else None
            if length is not None and length > max_bytes:
                raise FetchError("too large", f"{length} bytes > {max_bytes} from {url}")
            total = 0
            while True:
                if self.stop.is_set():
                    raise Interrupted()
                try:
                    chunk = response.read1(_CHUNK)  # one system call: stop is seen promptly
                except (OSError, http.client.HTTPException) as err:
                    raise FetchError("network error", f"{url} ({err})", True) from None
                if not chunk:
                    break
                total += len(chunk)
                if total > max_bytes:
                    raise FetchError("too large", f"more than {max_bytes} bytes from {url}")
                out.write(chunk)
        if length is not None and total < length:
            raise FetchError("truncated", f"{total} of {length} bytes from {url}", True)


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
    """
    path = Path(root) / MANIFEST
    if not path.is_file():
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if not isinstance(row, dict) or not isinstance(row.get("objectid"), int):
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
    fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{MANIFEST}.", suffix=".part")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in kept:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, root / MANIFEST)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(kept)


# ---- the run -------------------------------------------------------------------------------


class Progress:
    """Prints ``done/total`` counts to ``stream`` at most every ``interval`` seconds."""

    def __init__(self, total: int, interval: float, stream: TextIO) -> None:
        self.total = total
        self.interval = interval
        self.stream = stream
        self._last = time.monotonic()
        self._tty = stream.isatty()

    def update(self, counts: Counter, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._last < self.interval:
            return
        self._last = now
        done = counts["downloaded"] + counts["present"] + counts["failed"]
        line = (
            f"nga: {done}/{self.total} images ({counts['downloaded']} downloaded, "
            f"{counts['present']} already present, {counts['failed']} failed)"
        )
        if self._tty:
            print("\r" + line, end="\n" if final else "", file=self.stream, flush=True)
        else:
            print(line, file=self.stream, flush=True)


def _remove_partial_files(folder: Path) -> int:
    """Delete the temporary ``.*.part`` files a killed run left in ``folder``."""
    removed = 0
    for path in folder.iterdir():
        if _PART.fullmatch(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _fetch_csvs(args: argparse.Namespace, fetcher: Fetcher, csv_dir: Path) -> None:
    base = args.csv_base_url.rstrip("/")
    for name in (OBJECTS_CSV, IMAGES_CSV):
        if args.reuse_csv and (csv_dir / name).is_file():
            print(f"nga: using {csv_dir / name} from an earlier run", file=sys.stderr)
            continue
        url = f"{base}/{name}"
        print(f"nga: fetching {url}", file=sys.stderr, flush=True)
        try:
            fetcher.download(url, csv_dir / name, int(args.max_csv_mb * MB))
        except FetchError as err:
            raise NGAError(f"could not fetch {name} ({err.reason}): {err.detail}") from None


def _download_images(
    artworks: list[Artwork], args: argparse.Namespace, fetcher: Fetcher, images: Path
) -> tuple[Counter, list[tuple[Artwork, FetchError]], dict[int, dict], bool]:
    """Download every artwork's image on a thread pool; returns counts, failures, manifest rows
    of the images now on disk, and whether the run was interrupted."""
    max_bytes = int(args.max_image_mb * MB)

    def fetch(artwork: Artwork) -> str:
        dest = images / f"{artwork.objectid}.jpg"
        if is_complete_jpeg(dest):
            return "present"
        fetcher.download(artwork.image_url(args.size), dest, max_bytes, "image/jpeg", check_jpeg)
        return "downloaded"

    counts: Counter = Counter()
    failures: list[tuple[Artwork, FetchError]] = []
    rows: dict[int, dict] = {}
    progress = Progress(len(artworks), args.progress_interval, sys.stderr)

    def record(future: Future, artwork: Artwork) -> None:
        try:
            status = future.result()
        except FetchError as err:
            counts["failed"] += 1
            failures.append((artwork, err))
        except Interrupted:
            pass
        else:
            counts[status] += 1
            rows[artwork.objectid] = artwork.manifest_row()

    pool = ThreadPoolExecutor(max_workers=args.workers, thread_name_prefix="nga")
    pending = {pool.submit(fetch, artwork): artwork for artwork in artworks}
    interrupted = False
    try:
        for future in as_completed(list(pending)):
            record(future, pending.pop(future))
            progress.update(counts)
    except KeyboardInterrupt:
        interrupted = True
        fetcher.stop.set()
        print("\nnga: interrupted; stopping the downloads in progress", file=sys.stderr)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    for future, artwork in pending.items():  # finished before they saw the stop, or cancelled
        if not future.cancelled():
            record(future, artwork)
    progress.update(counts, final=True)
    return counts, failures, rows, interrupted


def _summary(
    root: Path,
    total: int,
    counts: Counter,
    failures: list[tuple[Artwork, FetchError]],
    unsafe: list[str],
) -> list[str]:
    by_reason = Counter(err.reason for _, err in failures)
    line = (
        f"nga: {counts['downloaded'] + counts['present']} of {total} images in "
        f"{root / IMAGES_DIR}: {counts['downloaded']} downloaded, {counts['present']} already "
        f"present, {counts['failed']} failed"
    )
    if by_reason:
        ordered = sorted(by_reason.items(), key=lambda item: (-item[1], item[0]))
        line += " (" + ", ".join(f"{r}: {n}" for r, n in ordered) + ")"
    if unsafe:
        line += f"; {len(unsafe)} unsafe CSV rows skipped"
    lines = [line]
    for artwork, err in sorted(failures, key=lambda f: f[0].objectid)[:_FIRST_FAILURES]:
        lines.append(f"nga: failed objectid {artwork.objectid}: {err.reason}: {err.detail}")
    lines.extend(f"nga: skipped unsafe row {line}" for line in unsafe[:_FIRST_FAILURES])
    return lines


def run(args: argparse.Namespace) -> int:
    """Fetch the CSVs, select the artworks, download the images, write the manifest."""
    root = Path(args.root).expanduser()
    csv_dir, images = root / CSV_DIR, root / IMAGES_DIR
    for folder in (root, csv_dir, images):
        folder.mkdir(parents=True, exist_ok=True)
        _remove_partial_files(folder)
    stop = threading.Event()
    http_settings = {
        "timeout": args.timeout,
        "retries": args.retries,
        "backoff": args.backoff,
        "max_backoff": args.max_backoff,
        "stop": stop,
    }
    _fetch_csvs(args, Fetcher(**http_settings), csv_dir)

    image_base = args.image_base_url.rstrip("/")
    selection = select_artworks(
        csv_dir / OBJECTS_CSV, csv_dir / IMAGES_CSV, image_base, args.classification, args.limit
    )
    if not selection.artworks:
        found = ", ".join(
            f"{c or '(none)'} ({n})" for c, n in selection.classifications.most_common()
        )
        wanted = f" with classification {args.classification}" if args.classification else ""
        unsafe = f"; {len(selection.unsafe)} unsafe rows skipped" if selection.unsafe else ""
        raise NGAError(f"no artwork with a primary image{wanted}{unsafe}; found: {found or 'none'}")
    print(
        f"nga: {selection.matched} artworks with a primary image match; downloading "
        f"{len(selection.artworks)} at {args.size} px into {images} on {args.workers} threads",
        file=sys.stderr,
        flush=True,
    )

    fetcher = Fetcher(redirect_base=image_base, **http_settings)
    counts, failures, rows, interrupted = _download_images(
        selection.artworks, args, fetcher, images
    )
    manifest_rows = write_manifest(root, rows)
    for line in _summary(root, len(selection.artworks), counts, failures, selection.unsafe):
        print(line)
    print(f"nga: manifest {root / MANIFEST} ({manifest_rows} images)")
    if interrupted:
        print("nga: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    if counts["downloaded"] + counts["present"] == 0:
        first = failures[0][1] if failures else None
        raise NGAError(f"not one image could be downloaded (first failure: {first})")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="contrastive data nga",
        description="Download National Gallery of Art images (CC0 open data) with a manifest "
        "of their metadata; run again to resume.",
    )
    parser.add_argument("--root", required=True, help="folder to write images/ and manifest to")
    parser.add_argument(
        "--classification",
        action="append",
        default=[],
        type=lambda s: [c for c in s.split(",") if c.strip()],
        help="keep only these classifications, case-insensitive (painting, print, drawing, "
        "sculpture, photograph, ...); repeat or separate with commas; default: all",
    )
    parser.add_argument(
        "--limit", type=_positive_int, help="at most N artworks (a fixed hash-spread sample)"
    )
    parser.add_argument(
        "--size", type=_positive_int, default=512, help="longer side in pixels (default 512)"
    )
    parser.add_argument("--workers", type=_positive_int, default=8, help="download threads")
    parser.add_argument("--retries", type=int, default=4, help="retries per file (default 4)")
    parser.add_argument(
        "--backoff", type=_non_negative_float, default=1.0, help="first retry delay, seconds"
    )
    parser.add_argument(
        "--max-backoff", type=_non_negative_float, default=60.0, help="longest retry delay"
    )
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="seconds a connection or read may block"
    )
    parser.add_argument(
        "--max-image-mb", type=float, default=20.0, help="per-image size cap in MiB (default 20)"
    )
    parser.add_argument(
        "--max-csv-mb", type=float, default=1024.0, help="per-CSV size cap in MiB (default 1024)"
    )
    parser.add_argument(
        "--csv-base-url",
        default=DEFAULT_CSV_BASE_URL,
        help=f"where {OBJECTS_CSV} and {IMAGES_CSV} are (default {DEFAULT_CSV_BASE_URL})",
    )
    parser.add_argument(
        "--image-base-url",
        default=DEFAULT_IMAGE_BASE_URL,
        help="the IIIF service; every iiifurl must lie under it (default "
        f"{DEFAULT_IMAGE_BASE_URL})",
    )
    parser.add_argument(
        "--reuse-csv",
        action="store_true",
        help=f"use the tables an earlier run saved in ROOT/{CSV_DIR} instead of fetching them",
    )
    parser.add_argument(
        "--progress-interval", type=float, default=2.0, help="seconds between progress lines"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``contrastive data nga``; returns the exit status."""
    args = build_parser().parse_args(argv)
    args.classification = [c.strip() for group in args.classification for c in group]
    try:
        return run(args)
    except NGAError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # while reading the tables or writing the manifest
        print("\nnga: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
