"""``contrastive data nga``: National Gallery of Art images and their metadata, on disk.

The NGA publishes its collection data under CC0 as CSV files in its open-data repository
(github.com/NationalGalleryOfArt/opendata): ``objects.csv``, one row per artwork, and
``published_images.csv``, one row per image. This tool fetches both, joins them on the object
id keeping each artwork's primary view (:mod:`contrastive.tools.nga_catalog`), and downloads
the images from the NGA's IIIF image service (``{iiifurl}/full/!S,S/0/default.jpg``: the longer
side at most S)::

    contrastive data nga --root data/nga --classification painting --limit 5000 --size 512

writes::

    data/nga/images/<objectid>.jpg    one JPEG per artwork
    data/nga/manifest.jsonl           one JSON object per image (MANIFEST_FIELDS): path,
                                      objectid, uuid, title, artist, classification, medium,
                                      year (beginyear, or null), displaydate
    data/nga/csv/*.csv                the two source tables, as fetched by the last run
                                      (``--reuse_csv`` reads them instead of fetching again)

Safety and robustness:

- No path comes from the CSVs. A file is named by the artwork's integer object id, and a row's
  image is fetched only if its uuid is a UUID and its ``iiifurl`` lies under
  ``--image_base_url`` (same scheme and host, no query, no ``..`` even escaped; IIIF's ``!``,
  ``,`` and ``:`` allowed, see :func:`~contrastive.tools.fetch.url_under`); other rows are
  skipped and counted as unsafe. Redirects may not leave the image base URL either.
- Every file goes to a temporary ``.<name>.*.part`` in its final folder and is checked (HTTP
  status, ``Content-Type: image/jpeg``, the ``--max_image_mb`` cap, the announced length, a
  JPEG that decodes) before it is renamed into place: a file is complete or absent. Files get
  the permissions the user's umask gives (as ``cp`` or any other tool would). The next run
  removes the temporary files of a killed one.
- Running again resumes: images already on disk are kept, the rest fetched. Network errors,
  timeouts, truncated bodies, undecodable JPEGs and HTTP 408/425/429/5xx are retried with
  exponential backoff (``Retry-After`` honoured up to ``--max_backoff``); other statuses, a
  wrong content type and an oversized body are not (:class:`~contrastive.tools.fetch.Client`).
  Ctrl-C stops the downloads in progress and exits 130.
- The manifest is rewritten atomically at the end, merging the rows of earlier runs whose files
  still exist, so runs with other ``--classification`` filters add up in one folder.

Progress goes to stderr: a bar for each CSV (bytes, rate, ETA) and one for the images (images
per second, ETA, and the downloaded / already present / failed counts so far); the summary
(counts of downloaded / already present / failed images by reason, and the first failures) to
stdout. Exit status: 0 when the run did what it could
(some images may have failed), 1 with one ``error:`` line when nothing could be done (a CSV
could not be fetched or read, no artwork matched, not one image could be had), 130 on Ctrl-C.
Only the standard library does HTTP: a thread pool whose threads each keep one connection open
to the image service for all their downloads (:class:`~contrastive.tools.fetch.Client`), where
urllib would make a new TCP and TLS connection per image. Pillow checks the JPEGs.
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm

from contrastive.cli_errors import ToolParser
from contrastive.files import TableError, remove_partial_files
from contrastive.tools.fetch import MB, Client, FetchError, Interrupted
from contrastive.tools.nga_catalog import (
    IMAGES_CSV,
    IMAGES_DIR,
    MANIFEST,
    OBJECTS_CSV,
    Artwork,
    NGAError,
    check_jpeg,
    is_complete_jpeg,
    read_manifest,
    select_artworks,
    write_manifest,
)

DEFAULT_CSV_BASE_URL = "https://raw.githubusercontent.com/NationalGalleryOfArt/opendata/main/data"
DEFAULT_IMAGE_BASE_URL = "https://api.nga.gov/iiif"
CSV_DIR = "csv"
USER_AGENT = "contrastive-data-nga/0.2 (Python http.client)"
_FIRST_FAILURES = 5


def _fetch_csvs(args: argparse.Namespace, client: Client, csv_dir: Path) -> None:
    base = args.csv_base_url.rstrip("/")
    for name in (OBJECTS_CSV, IMAGES_CSV):
        if args.reuse_csv and (csv_dir / name).is_file():
            print(f"nga: using {csv_dir / name} from an earlier run", file=sys.stderr)
            continue
        url = f"{base}/{name}"
        print(f"nga: fetching {url}", file=sys.stderr, flush=True)
        bar = _bar(args, f"nga: {name}", unit="B", unit_scale=True, unit_divisor=1024)

        def progress(received: int, length: int | None, bar=bar) -> None:
            if bar.total != length or received < bar.n:  # the answer came; or a retry
                bar.reset(total=length)
            bar.update(received - bar.n)

        try:
            client.download(url, csv_dir / name, int(args.max_csv_mb * MB), progress=progress)
        except FetchError as err:
            raise NGAError(f"could not fetch {name} ({err.reason}): {err.detail}") from None
        finally:
            bar.close()


def _bar(args: argparse.Namespace, desc: str, **kwargs) -> tqdm:
    """A progress bar on stderr with rate and ETA, redrawn at most every --progress_interval."""
    return tqdm(desc=desc, file=sys.stderr, mininterval=args.progress_interval, **kwargs)


def _download_images(
    artworks: list[Artwork], args: argparse.Namespace, client: Client, images: Path
) -> tuple[Counter, list[tuple[Artwork, FetchError]], dict[int, dict], bool]:
    """Download every artwork's image on a thread pool; returns counts, failures, manifest rows
    of the images now on disk, and whether the run was interrupted."""
    max_bytes = int(args.max_image_mb * MB)

    def fetch(artwork: Artwork) -> str:
        dest = images / f"{artwork.objectid}.jpg"
        if is_complete_jpeg(dest):
            return "present"
        client.download(artwork.image_url(args.size), dest, max_bytes, "image/jpeg", check_jpeg)
        return "downloaded"

    counts: Counter = Counter()
    failures: list[tuple[Artwork, FetchError]] = []
    rows: dict[int, dict] = {}
    bar = _bar(args, "nga: images", total=len(artworks), unit="img")

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
        bar.update(1)
        bar.set_postfix_str(
            f"{counts['downloaded']} downloaded, {counts['present']} already present, "
            f"{counts['failed']} failed",
            refresh=False,
        )

    pool = ThreadPoolExecutor(max_workers=args.workers, thread_name_prefix="nga")
    pending = {pool.submit(fetch, artwork): artwork for artwork in artworks}
    interrupted = False
    try:
        for future in as_completed(list(pending)):
            record(future, pending.pop(future))
    except KeyboardInterrupt:
        interrupted = True
        client.stop.set()
        print("\nnga: interrupted; stopping the downloads in progress", file=sys.stderr)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    for future, artwork in pending.items():  # finished before they saw the stop, or cancelled
        if not future.cancelled():
            record(future, artwork)
    bar.close()
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
        remove_partial_files(folder)
    read_manifest(root)  # an unreadable manifest (TableError) stops the run before any download
    stop = threading.Event()
    http_settings = {
        "timeout": args.timeout,
        "retries": args.retries,
        "backoff": args.backoff,
        "max_backoff": args.max_backoff,
        "stop": stop,
    }
    csv_client = Client(USER_AGENT, **http_settings)
    try:
        _fetch_csvs(args, csv_client, csv_dir)
    finally:
        csv_client.close()

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

    client = Client(USER_AGENT, redirect_base=image_base, **http_settings)
    try:
        counts, failures, rows, interrupted = _download_images(
            selection.artworks, args, client, images
        )
    finally:
        client.close()
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


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(
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
    parser.add_argument(
        "--retries", type=_non_negative_int, default=4, help="retries per file (default 4)"
    )
    parser.add_argument(
        "--backoff", type=_non_negative_float, default=1.0, help="first retry delay, seconds"
    )
    parser.add_argument(
        "--max_backoff", type=_non_negative_float, default=60.0, help="longest retry delay"
    )
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=30.0,
        help="seconds a connection or read may block",
    )
    parser.add_argument(
        "--max_image_mb",
        type=_positive_float,
        default=20.0,
        help="per-image size cap in MiB (default 20)",
    )
    parser.add_argument(
        "--max_csv_mb",
        type=_positive_float,
        default=1024.0,
        help="per-CSV size cap in MiB (default 1024)",
    )
    parser.add_argument(
        "--csv_base_url",
        default=DEFAULT_CSV_BASE_URL,
        help=f"where {OBJECTS_CSV} and {IMAGES_CSV} are (default {DEFAULT_CSV_BASE_URL})",
    )
    parser.add_argument(
        "--image_base_url",
        default=DEFAULT_IMAGE_BASE_URL,
        help="the IIIF service; every iiifurl must lie under it (default "
        f"{DEFAULT_IMAGE_BASE_URL})",
    )
    parser.add_argument(
        "--reuse_csv",
        action="store_true",
        help=f"use the tables an earlier run saved in ROOT/{CSV_DIR} instead of fetching them",
    )
    parser.add_argument(
        "--progress_interval",
        type=_non_negative_float,
        default=0.5,
        help="least seconds between redraws of the progress bars (default 0.5)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``contrastive data nga``; returns the exit status."""
    args = build_parser().parse_args(argv)
    args.classification = [c.strip() for group in args.classification for c in group]
    try:
        return run(args)
    except (NGAError, TableError) as err:  # TableError: a manifest that is not UTF-8
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # while reading the tables or writing the manifest
        print("\nnga: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
