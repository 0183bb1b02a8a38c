"""The National Gallery of Art tool (contrastive/tools/nga.py) against a loopback server, and
its data module (contrastive/datamodules/nga.py) on folders the tests write."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from PIL import Image

from contrastive.cli import main as cli_main
from contrastive.datamodules import NGADataModule
from contrastive.datamodules.common import DataError, Skipped
from contrastive.datamodules.nga import METADATA_FIELDS, caption, century
from contrastive.tools import nga, nga_catalog
from contrastive.tools.fetch import url_under

# The real tables' columns, in their order (NationalGalleryOfArt/opendata, data/*.csv).
OBJECT_COLUMNS = (
    "objectid accessioned accessionnum locationid title displaydate beginyear endyear "
    "visualbrowsertimespan medium dimensions inscription markings attributioninverted "
    "attribution creditline classification subclassification visualbrowserclassification "
    "parentid isvirtual departmentabbr portfolio series volume watermarks "
    "lastdetectedmodification wikidataid customprinturl"
).split()
IMAGE_COLUMNS = (
    "uuid iiifurl iiifthumburl viewtype sequence width height maxpixels created modified "
    "depictstmsobjectid assistivetext"
).split()

FAST = [
    "--backoff=0.01",
    "--max-backoff=0.05",
    "--retries=2",
    "--timeout=10",
    "--workers=4",
    "--progress-interval=0",
    "--size=48",
    "--max-image-mb=0.01",  # 10 KiB: the test JPEGs are about 1 KiB
]


def jpeg(seed: int, size: tuple[int, int] = (48, 32)) -> bytes:
    """A small JPEG whose colours depend on ``seed``."""
    image = Image.new("RGB", size, ((seed * 53) % 256, (seed * 97) % 256, (seed * 29) % 256))
    image.paste((255 - (seed * 53) % 256, 40, 90), (0, 0, size[0] // 2, size[1] // 2))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue()


def uuid_of(objectid: int) -> str:
    return f"{objectid:08d}-0000-4000-8000-{objectid:012d}"


class NGAServer:
    """The NGA's CSVs and IIIF image service on 127.0.0.1, with chosen failures per image.

    ``kinds[uuid]`` says how the image answers: ``ok``, ``404``, ``500-once`` (then ok),
    ``drop-once`` (half the body, then the connection closes; then ok), ``truncated`` (always
    half of the announced length), ``oversized`` (announced too large), ``oversized-stream``
    (too large, no Content-Length), ``html`` (wrong content type), ``corrupt`` (not a JPEG),
    ``stall-once`` (half the body, then waits for ``release``; then ok), ``redirect`` (a 302 to
    the same size under ``/iiif/moved/``, as a IIIF server may send to its canonical URL),
    ``redirect-out`` (a 302 to the CSVs, outside the image service).
    """

    def __init__(self) -> None:
        self.csvs: dict[str, bytes] = {}
        self.kinds: dict[str, str] = {}
        self.images: dict[str, bytes] = {}
        self.requests: Counter[str] = Counter()
        self.paths: list[str] = []
        self.stalled = threading.Event()
        self.release = threading.Event()
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                with server.lock:
                    server.paths.append(self.path)
                    server.requests[self.path.split("/full/")[0]] += 1
                    count = server.requests[self.path.split("/full/")[0]]
                if self.path.startswith("/data/"):
                    body = server.csvs.get(self.path[len("/data/") :])
                    return self.reply(200, body, "text/csv") if body else self.reply(404, b"")
                parts = self.path.split("/")  # ['', 'iiif', uuid, 'full', '!S,S', '0', ...]
                moved = len(parts) > 3 and parts[2] == "moved"
                uuid = parts[3 if moved else 2] if len(parts) > 2 else ""
                kind = server.kinds.get(uuid)
                body = server.images.get(uuid, b"")
                if kind == "redirect" and not moved:
                    target = f"/iiif/moved/{uuid}/{'/'.join(parts[3:])}"
                    return self.reply(302, b"", location=f"{server.url}{target}")
                if kind == "redirect-out":
                    return self.reply(302, b"", location=f"{server.url}/data/objects.csv")
                if moved:
                    kind = "ok"
                if kind is None or kind == "404":
                    return self.reply(404, b"not found", "text/plain")
                if kind == "500-once" and count == 1:
                    return self.reply(500, b"busy", "text/plain")
                if kind in ("drop-once", "stall-once") and count == 1 or kind == "truncated":
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    if kind == "stall-once":
                        server.stalled.set()
                        server.release.wait(30)
                    self.close_connection = True
                    return None
                if kind == "oversized":
                    return self.reply(200, os.urandom(64 << 10), "image/jpeg")
                if kind == "oversized-stream":
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.end_headers()  # no length: the body ends when the connection closes
                    for _ in range(16):
                        self.wfile.write(b"\xff\xd8\xff" + os.urandom(4 << 10))
                    self.close_connection = True
                    return None
                if kind == "html":
                    return self.reply(200, b"<html>rate limited</html>", "text/html")
                if kind == "corrupt":
                    return self.reply(200, b"\xff\xd8\xff\xe0" + b"\x00" * 300, "image/jpeg")
                return self.reply(200, body, "image/jpeg")

            def reply(
                self, status: int, body: bytes, content_type: str = "text/plain", location=None
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                if location is not None:
                    self.send_header("Location", location)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def image_requests(self, objectid: int) -> int:
        return self.requests[f"/iiif/{uuid_of(objectid)}"]

    def args(self, root: Path) -> list[str]:
        return [
            f"--root={root}",
            f"--csv-base-url={self.url}/data",
            f"--image-base-url={self.url}/iiif",
            *FAST,
        ]

    def publish(self, artworks: list[dict], extra_images: list[dict] = ()) -> None:
        """Serve ``objects.csv`` and ``published_images.csv`` for ``artworks``.

        Each artwork dict has ``objectid`` and optionally ``kind`` (default ``ok``), ``title``,
        ``attribution``, ``classification``, ``medium``, ``beginyear``; ``uuid`` and ``iiifurl``
        override the generated ones (to attack), ``viewtype`` the primary view.
        """
        objects, images = io.StringIO(), io.StringIO()
        object_writer = csv.DictWriter(objects, OBJECT_COLUMNS, quoting=csv.QUOTE_MINIMAL)
        image_writer = csv.DictWriter(images, IMAGE_COLUMNS, quoting=csv.QUOTE_MINIMAL)
        object_writer.writeheader()
        image_writer.writeheader()
        for art in artworks:
            oid = art["objectid"]
            object_writer.writerow(
                {
                    "objectid": oid,
                    "accessioned": 1,
                    "accessionnum": f"1937.1.{oid}",
                    "title": art.get("title", f"Work {oid}"),
                    "displaydate": f"c. {art.get('beginyear', '')}",
                    "beginyear": art.get("beginyear", 1650),
                    "endyear": art.get("beginyear", 1650),
                    "medium": art.get("medium", "oil on canvas"),
                    "attribution": art.get("attribution", "Rembrandt van Rijn"),
                    "classification": art.get("classification", "Painting"),
                    "inscription": "lower left: signed, with a comma, and\na line break",
                }
            )
            uuid = art.get("uuid", uuid_of(oid) if isinstance(oid, int) else "x")
            image_writer.writerow(
                {
                    "uuid": uuid,
                    "iiifurl": art.get("iiifurl", f"{self.url}/iiif/{uuid}"),
                    "iiifthumburl": f"{self.url}/iiif/{uuid}/full/!200,200/0/default.jpg",
                    "viewtype": art.get("viewtype", "primary"),
                    "sequence": 0,
                    "width": 48,
                    "height": 32,
                    "depictstmsobjectid": oid,
                }
            )
            self.kinds[uuid] = art.get("kind", "ok")
            self.images[uuid] = jpeg(oid if isinstance(oid, int) else 0)
        for row in extra_images:
            image_writer.writerow({c: row.get(c, "") for c in IMAGE_COLUMNS})
        self.csvs = {
            "objects.csv": objects.getvalue().encode(),
            "published_images.csv": images.getvalue().encode(),
        }

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")  # never send loopback to a proxy
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    srv = NGAServer()
    yield srv
    srv.close()


# Every failure the issue names, and what the tool must do with it.
GOOD = {
    101: {
        "title": 'The "Mill", at dusk',
        "attribution": "Rembrandt van Rijn",
        "medium": "oil on canvas",
        "beginyear": 1650,
    },
    102: {
        "classification": "Print",
        "attribution": "Albrecht Dürer",
        "medium": "engraving",
        "beginyear": 1514,
    },
    103: {"kind": "500-once"},
    104: {"kind": "drop-once"},
    116: {"classification": "Drawing", "medium": "red chalk", "beginyear": ""},
}
FAILING = {
    105: ("404", "http 404"),
    106: ("truncated", "truncated"),
    107: ("oversized", "too large"),
    108: ("oversized-stream", "too large"),
    109: ("html", "wrong content type"),
    110: ("corrupt", "corrupt image"),
}


def collection(server: NGAServer) -> list[dict]:
    """The CSV rows: good, failing, and three unsafe ones (path traversal, foreign host)."""
    artworks = [{"objectid": oid, **spec} for oid, spec in GOOD.items()]
    artworks += [{"objectid": oid, "kind": kind} for oid, (kind, _) in FAILING.items()]
    artworks += [
        # Path traversal in the uuid and the iiifurl.
        {"objectid": 111, "uuid": "../../../escaped", "iiifurl": f"{server.url}/iiif/../../x"},
        # A well-formed uuid whose iiifurl climbs out of the image service, and one elsewhere.
        {"objectid": 112, "iiifurl": f"{server.url}/iiif/../data/objects.csv"},
        {"objectid": 113, "iiifurl": f"http://example.invalid/iiif/{uuid_of(113)}"},
        # An object id that is not an integer, in both tables.
        {"objectid": "../../114", "uuid": uuid_of(114)},
        # Only an alternate view: not downloaded.
        {"objectid": 115, "viewtype": "alternate"},
    ]
    return artworks


def run_tool(server: NGAServer, root: Path, *extra: str) -> int:
    return nga.main([*server.args(root), *extra])


def files_under(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()}


def test_end_to_end_every_failure_kind(server, tmp_path, capsys):
    server.publish(collection(server))
    root = tmp_path / "nga"
    assert run_tool(server, root) == 0
    out, err = capsys.readouterr()

    good = sorted(GOOD)
    assert files_under(root) == {
        "manifest.jsonl",
        "csv/objects.csv",
        "csv/published_images.csv",
        *(f"images/{oid}.jpg" for oid in good),
    }  # no partial file, and nothing from a failed or unsafe row
    assert files_under(tmp_path) == {f"nga/{f}" for f in files_under(root)}  # nothing escaped
    for oid in good:  # the bytes the server had, whole
        assert (root / f"images/{oid}.jpg").read_bytes() == server.images[uuid_of(oid)]
    assert all("/full/!48,48/0/default.jpg" in p for p in server.paths if p.startswith("/iiif"))

    # Retried: 500 and a dropped connection once each; truncated up to the retry limit.
    assert server.image_requests(103) == 2 and server.image_requests(104) == 2
    assert server.image_requests(106) == 3 and server.image_requests(110) == 3
    # Not retried: 404, oversized, wrong type. Never requested: unsafe rows, alternate views.
    for oid in (105, 107, 108, 109):
        assert server.image_requests(oid) == 1, oid
    assert not any("escaped" in p or "example" in p or "/x" in p for p in server.paths)
    assert server.image_requests(115) == 0

    summary = out.splitlines()[0]
    assert summary == (
        f"nga: 5 of 11 images in {root / 'images'}: 5 downloaded, 0 already present, 6 failed "
        "(too large: 2, corrupt image: 1, http 404: 1, truncated: 1, wrong content type: 1); "
        "4 unsafe CSV rows skipped"
    )
    failed_lines = [line for line in out.splitlines() if line.startswith("nga: failed")]
    assert len(failed_lines) == 5 and "objectid 105: http 404" in failed_lines[0]
    assert "nga: skipped unsafe row (objectid '111'): uuid '../../../escaped' is not a UUID" in out
    assert "example.invalid" in out and "(objectid '../../114'): objectid" in out
    assert f"nga: manifest {root / 'manifest.jsonl'} (5 images)" in out
    assert "nga: 11/11 images (5 downloaded, 0 already present, 6 failed)" in err

    rows = nga_catalog.read_manifest(root)
    assert [r["objectid"] for r in rows] == good
    first = rows[0]
    assert first == {
        "path": "images/101.jpg",
        "objectid": 101,
        "uuid": uuid_of(101),
        "title": 'The "Mill", at dusk',
        "artist": "Rembrandt van Rijn",
        "classification": "Painting",
        "medium": "oil on canvas",
        "year": 1650,
        "displaydate": "c. 1650",
    }
    assert rows[1]["artist"] == "Albrecht Dürer" and rows[1]["classification"] == "Print"
    assert rows[-1]["year"] is None  # no beginyear in the CSV


def test_a_second_run_resumes_and_fetches_only_what_is_missing(server, tmp_path, capsys):
    server.publish(collection(server))
    root = tmp_path / "nga"
    assert run_tool(server, root) == 0
    manifest = (root / "manifest.jsonl").read_bytes()
    mtimes = {p: p.stat().st_mtime_ns for p in (root / "images").iterdir()}
    before = Counter(server.requests)
    capsys.readouterr()

    server.kinds[uuid_of(105)] = "ok"  # the 404 is fixed upstream
    assert run_tool(server, root) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"nga: 6 of 11 images in {root / 'images'}: 1 downloaded, 5 already")
    for oid in GOOD:  # kept, not fetched again
        assert server.requests[f"/iiif/{uuid_of(oid)}"] == before[f"/iiif/{uuid_of(oid)}"]
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())
    rows = nga_catalog.read_manifest(root)
    assert [r["objectid"] for r in rows] == sorted([*GOOD, 105])
    assert (root / "manifest.jsonl").read_bytes().startswith(manifest.split(b"\n")[0])

    server.csvs.clear()  # the tables saved by the last run serve again
    assert run_tool(server, root, "--reuse-csv") == 0
    assert ": 0 downloaded, 6 already present" in capsys.readouterr().out


def test_filters_limit_and_merging_runs_into_one_manifest(server, tmp_path, capsys):
    kinds = {1: "Painting", 2: "Print", 3: "Painting", 4: "Drawing", 5: "Painting", 6: "Painting"}
    server.publish([{"objectid": i, "classification": c} for i, c in kinds.items()])
    root = tmp_path / "nga"
    assert run_tool(server, root, "--classification=print", "--classification=DRAWING") == 0
    assert sorted(os.listdir(root / "images")) == ["2.jpg", "4.jpg"]
    assert run_tool(server, root, "--classification", "Painting,sculpture", "--limit=2") == 0
    paintings = set(os.listdir(root / "images")) - {"2.jpg", "4.jpg"}
    assert len(paintings) == 2 and all(kinds[int(p[:-4])] == "Painting" for p in paintings)
    # The manifest holds both runs' images: the first run's rows were merged, not dropped.
    rows = nga_catalog.read_manifest(root)
    assert sorted(r["path"] for r in rows) == sorted(
        f"images/{p}" for p in os.listdir(root / "images")
    )
    # --limit picks the same artworks every time.
    capsys.readouterr()
    assert run_tool(server, root, "--classification=painting", "--limit=2") == 0
    assert ": 0 downloaded, 2 already present, 0 failed" in capsys.readouterr().out


def test_nothing_to_do_is_a_one_line_error(server, tmp_path, capsys):
    server.publish(collection(server))
    assert run_tool(server, tmp_path / "a", "--classification=tapestry") == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: no artwork with a primary image with classification")
    assert "Painting (" in err and "Print (1)" in err

    server.csvs.pop("objects.csv")
    assert run_tool(server, tmp_path / "b") == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"error: could not fetch objects.csv (http 404): {server.url}/data/objects.csv"

    server.publish([{"objectid": 1, "kind": "404"}])
    assert run_tool(server, tmp_path / "c") == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: not one image could be downloaded (first failure: http 404")


def test_a_csv_without_the_expected_columns_is_a_one_line_error(server, tmp_path, capsys):
    server.publish([{"objectid": 1}])
    server.csvs["objects.csv"] = b"id,name\n1,x\n"
    assert run_tool(server, tmp_path) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        f"error: {tmp_path / 'csv' / 'objects.csv'}: no column 'objectid' (separator ','); its "
        "columns are ['id', 'name']"
    )


def test_the_contrastive_data_command_dispatches_to_the_tool(server, tmp_path, capsys):
    server.publish([{"objectid": 7}])
    cli_main(["data", "nga", *server.args(tmp_path)])
    assert (tmp_path / "images/7.jpg").is_file()
    server.csvs.clear()
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["data", "nga", *server.args(tmp_path / "x")])
    assert exit_info.value.code == 1
    for argv, code in ((["data"], 2), (["data", "nope"], 2), (["data", "--help"], 0)):
        with pytest.raises(SystemExit) as exit_info:
            cli_main(argv)
        assert exit_info.value.code == code
    assert "unknown data tool 'nope'" in capsys.readouterr().err


class _Spawned:
    """The tool in a child process (as a user runs it), its stderr read line by line."""

    def __init__(self, server: NGAServer, root: Path) -> None:
        env = {**os.environ, "no_proxy": "127.0.0.1", "NO_PROXY": "127.0.0.1"}
        args = [sys.executable, "-m", "contrastive.tools.nga", *server.args(root), "--workers=2"]
        self.proc = subprocess.Popen(
            args,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # A shell's background jobs start with SIGINT ignored, and Python then installs
            # no KeyboardInterrupt handler: restore the default, as a terminal would have it.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self.err: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.err.append(line)

    def finish(self, timeout: float = 20.0) -> tuple[int, str, str]:
        self.proc.wait(timeout=timeout)
        self.reader.join(timeout)
        return self.proc.returncode, self.proc.stdout.read(), "".join(self.err)


def _wait_for(condition, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _stalled_collection(server: NGAServer) -> list[int]:
    ids = list(range(201, 209))
    server.publish([{"objectid": i, "kind": "stall-once" if i == 203 else "ok"} for i in ids])
    return ids


def _partial_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.endswith(".part")]


def test_ctrl_c_stops_cleanly_and_a_second_run_resumes(server, tmp_path, capsys):
    ids = _stalled_collection(server)
    root = tmp_path / "nga"
    child = _Spawned(server, root)
    try:
        # Every other image is on disk, 203 is half-way through its body.
        _wait_for(server.stalled.is_set, "the stalled download")
        _wait_for(lambda: len(list(root.glob("images/*.jpg"))) == len(ids) - 1, "the others")
        child.proc.send_signal(signal.SIGINT)
        _wait_for(lambda: any("interrupted" in line for line in child.err), "the interrupt")
        server.release.set()  # the connection closes; the worker sees the stop
        code, out, err = child.finish()
    finally:
        child.proc.kill()
    assert code == 130, err
    assert "run the same command again to resume" in err
    assert files_under(root / "images") == {f"{i}.jpg" for i in ids if i != 203}  # no .part
    assert len(nga_catalog.read_manifest(root)) == len(ids) - 1  # what finished is in the manifest

    assert run_tool(server, root) == 0
    out = capsys.readouterr().out
    assert f": 1 downloaded, {len(ids) - 1} already present, 0 failed" in out
    assert files_under(root / "images") == {f"{i}.jpg" for i in ids}
    assert (root / "images/203.jpg").read_bytes() == server.images[uuid_of(203)]
    assert len(nga_catalog.read_manifest(root)) == len(ids)


def test_a_killed_run_leaves_no_partial_image_and_the_next_run_cleans_up(server, tmp_path):
    ids = _stalled_collection(server)
    root = tmp_path / "nga"
    child = _Spawned(server, root)
    try:
        _wait_for(server.stalled.is_set, "the stalled download")
        _wait_for(lambda: _partial_files(root / "images"), "the temporary file of 203")
        child.proc.kill()  # SIGKILL: no chance to clean up
        child.finish()
    finally:
        child.proc.kill()
    server.release.set()
    left = {p.name.split(".")[1] for p in _partial_files(root / "images")}
    assert "203" in left  # the half image is a temporary file, and never got its name
    assert not any((root / f"images/{oid}.jpg").exists() for oid in left)

    assert run_tool(server, root) == 0
    assert files_under(root / "images") == {f"{i}.jpg" for i in ids}  # the temp file is gone


def test_redirects_under_the_image_base_are_followed_and_others_refused(server, tmp_path, capsys):
    server.publish([{"objectid": 1, "kind": "redirect"}, {"objectid": 2, "kind": "redirect-out"}])
    root = tmp_path / "nga"
    assert run_tool(server, root) == 0
    out = capsys.readouterr().out
    # 1: to /iiif/moved/<uuid>/full/!48,48/0/default.jpg, under the base with IIIF's "!" and ",".
    assert f"/iiif/moved/{uuid_of(1)}/full/!48,48/0/default.jpg" in server.paths
    assert (root / "images/1.jpg").read_bytes() == server.images[uuid_of(1)]
    # 2: to the CSVs, outside the image service: refused, not followed, not retried.
    assert "1 failed (unsafe redirect: 1)" in out
    assert f"failed objectid 2: unsafe redirect: {server.url}/iiif/{uuid_of(2)}/full/" in out
    assert server.paths.count("/data/objects.csv") == 1  # only the tool's own fetch of it
    assert not (root / "images/2.jpg").exists()


def test_files_get_the_users_umask_like_any_other_tool(server, tmp_path):
    server.publish([{"objectid": i} for i in (1, 2)])
    old = os.umask(0o002)  # group-writable, as on a shared project folder
    try:
        (tmp_path / "reference").write_bytes(b"")  # what open() gives under this umask
        assert run_tool(server, tmp_path / "nga") == 0
    finally:
        os.umask(old)
    expected = (tmp_path / "reference").stat().st_mode & 0o777
    assert expected == 0o664
    written = [p for p in (tmp_path / "nga").rglob("*") if p.is_file()]
    assert len(written) == 5  # two images, the manifest and the two tables
    assert {str(p.relative_to(tmp_path)): p.stat().st_mode & 0o777 for p in written} == {
        str(p.relative_to(tmp_path)): expected for p in written
    }


@pytest.mark.parametrize(
    "url, ok",
    [
        ("http://h:1/iiif/abc-123", True),
        ("http://H:1/iiif/a/b.c_d~e", True),
        ("http://h:1/iiif/", False),
        ("http://h:1/iiif", False),
        ("http://h:1/iiifx/abc", False),
        ("http://h:1/iiif/../data", False),
        ("http://h:1/iiif/a/./b", False),
        ("http://h:1/iiif/%2e%2e/x", False),
        ("http://h:1/iiif/a?b=c", False),
        ("http://h:1/iiif/a#b", False),
        ("https://h:1/iiif/a", False),
        ("http://h:2/iiif/a", False),
        ("http://h:1@evil/iiif/a", False),
        ("http://evil/iiif/a", False),
        ("http://h:1/iiif/a\\..\\b", False),
        # IIIF Image API 2 and 3: size, region, rotation, quality and escaped identifiers.
        ("http://h:1/iiif/a/full/!512,512/0/default.jpg", True),
        ("http://h:1/iiif/a/full/^!512,512/!90/default.jpg", True),
        ("http://h:1/iiif/a/pct:10,10,80,80/pct:50/22.5/gray.png", True),
        ("http://h:1/iiif/a/10,20,300,400/300,/0/default.webp", True),
        ("http://h:1/iiif/ark:%2F12025%2F654xz321/full/max/0/default.jpg", True),
        ("http://h:1/iiif/a%20b/info.json", True),
        # Still out: escaped dots and slashes that climb, double escapes, path parameters,
        # empty segments, control characters, a bare "?".
        ("http://h:1/iiif/%2e%2e/data", False),
        ("http://h:1/iiif/a%2F..%2F..%2Fdata", False),
        ("http://h:1/iiif/a%2F%2Fb", False),
        ("http://h:1/iiif/%252e%252e/data", False),
        ("http://h:1/iiif/..;/data", False),
        ("http://h:1/iiif/a;jsessionid=1/b", False),
        ("http://h:1/iiif/a//b", False),
        ("http://h:1/iiif/a%00/b", False),
        ("http://h:1/iiif/a%5c..%5cb", False),
        ("http://h:1/iiif/a?", False),
        ("http://h:1/iiif/a%zz", False),
    ],
)
def test_url_under(url, ok):
    assert url_under(url, "http://h:1/iiif") is ok
    assert url_under(url, "http://h:1/iiif/") is ok


def test_read_manifest_takes_no_path_unchecked(tmp_path):
    rows = [
        {"path": "images/1.jpg", "objectid": 1},
        {"path": "../outside.jpg", "objectid": 2},
        {"path": "images/3.jpg", "objectid": 4},  # a path that is not its own object's
        {"path": "/etc/passwd", "objectid": 5},
        {"path": "images/6.jpg", "objectid": "6"},
        [1, 2],
    ]
    text = "\n".join(json.dumps(r) for r in rows) + "\nnot json\n"
    (tmp_path / "manifest.jsonl").write_text(text)
    assert [r["path"] for r in nga_catalog.read_manifest(tmp_path)] == ["images/1.jpg"]


# ---- the data module ---------------------------------------------------------------------

# 24 artworks: artist frequencies 8, 6, 4, 3 and 3 without an artist; three classifications.
ARTISTS = ["Rembrandt van Rijn"] * 8 + ["Albrecht Dürer"] * 6 + ["Mary Cassatt"] * 4
ARTISTS += ["Winslow Homer"] * 3 + [""] * 3
KINDS = ["Painting", "Print", "Drawing"]
MEDIA = {"Painting": "oil on canvas", "Print": "engraving", "Drawing": "red chalk"}


def make_folder(root: Path, n: int = 24, size: tuple[int, int] = (40, 30)) -> dict[int, dict]:
    """An NGA folder as the tool writes it: images/<objectid>.jpg and manifest.jsonl."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = {}
    for i in range(n):
        oid = 1000 + i
        (root / f"images/{oid}.jpg").write_bytes(jpeg(i, size))
        kind = KINDS[i % 3]
        rows[oid] = {
            "path": f"images/{oid}.jpg",
            "objectid": oid,
            "uuid": uuid_of(oid),
            "title": f"Work {i}",
            "artist": ARTISTS[i % len(ARTISTS)],
            "classification": kind,
            "medium": MEDIA[kind],
            "year": None if i % 5 == 4 else 1450 + 23 * i,
            "displaydate": "",
        }
    nga_catalog.write_manifest(root, rows)
    return rows


def datamodule(root: Path, **kwargs) -> NGADataModule:
    settings = {
        "root": str(root),
        "image_size": 32,
        "num_artists": 2,
        "val_fraction": 0.2,
        "test_fraction": 0.2,
        "batch_size": 4,
        "eval_batch_size": 8,
        "num_bank": 6,
        **kwargs,
    }
    dm = NGADataModule(**settings)
    dm.setup("fit")
    return dm


@pytest.mark.parametrize(
    "year, name",
    [
        (1650, "17th century"),
        (1600, "17th century"),
        (1699, "17th century"),
        (1901, "20th century"),
        (2001, "21st century"),
        (1150, "12th century"),
        (1250, "13th century"),
        (1050, "11th century"),
        (50, "1st century"),
        (-500, "5th century BCE"),
        (-501, "6th century BCE"),
        (-1, "1st century BCE"),
        (None, "unknown"),
    ],
)
def test_century(year, name):
    assert century(year) == name


def test_captions_name_medium_kind_artist_and_year():
    row = {"medium": "oil on canvas", "classification": "Painting", "year": 1650}
    assert caption({**row, "artist": "Rembrandt van Rijn"}) == (
        "Oil on canvas painting by Rembrandt van Rijn, 1650"
    )
    assert caption({**row, "medium": "", "artist": ""}) == "Painting, 1650"
    assert caption({"classification": "Print", "artist": "Albrecht Dürer", "year": None}) == (
        "Print by Albrecht Dürer"
    )
    assert caption({"medium": "bronze", "year": -500}) == "Bronze, 500 BCE"
    assert caption({}) == "Artwork"


def test_labels_class_names_captions_and_metadata(tmp_path):
    rows = make_folder(tmp_path)
    dm = datamodule(tmp_path)
    names = dm.class_names
    assert dm.attributes == ("classification", "artist", "century")
    assert names["classification"] == ("Drawing", "Painting", "Print")
    assert names["artist"] == ("Rembrandt van Rijn", "Albrecht Dürer", "other")  # top 2 + other
    assert names["century"][0] == "15th century" and names["century"][-1] == "unknown"
    assert list(names["century"][:-1]) == sorted(names["century"][:-1])  # chronological here
    assert dm.num_classes == {label: len(n) for label, n in names.items()}

    seen = 0
    for split in ("train", "val", "test"):
        dataset = dm.dataset(split)
        for i in range(len(dataset)):
            item = dataset[i]
            row = rows[int(Path(item["path"]).stem)]
            assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 32, 32)
            assert item["index"] == i and item["path"] == str(tmp_path / row["path"])
            labels = {k: names[k][v] for k, v in item["labels"].items()}
            top = row["artist"] if row["artist"] in names["artist"] else "other"
            assert labels == {
                "classification": row["classification"],
                "artist": top,
                "century": century(row["year"]),
            }
            assert item["caption"] == caption(row)
            meta = dataset.metadata(i)
            assert tuple(meta) == METADATA_FIELDS
            assert meta["artist"] == row["artist"] and meta["medium"] == row["medium"]
            assert meta["century"] == century(row["year"]) and meta["year"] == row["year"]
            seen += 1
    assert seen == len(rows)


def test_splits_are_disjoint_complete_and_seeded(tmp_path):
    rows = make_folder(tmp_path)
    dm = datamodule(tmp_path)
    ids = {s: [r["objectid"] for r in dm.dataset(s).records] for s in ("train", "val", "test")}
    assert (len(ids["val"]), len(ids["test"]), len(ids["train"])) == (5, 5, 14)
    assert sorted(ids["train"] + ids["val"] + ids["test"]) == sorted(rows)
    bank = [r["objectid"] for r in dm.dataset("bank").records]
    assert bank == ids["train"][:6]  # capped by num_bank, taken from the train split
    again = datamodule(tmp_path)
    assert [r["objectid"] for r in again.dataset("val").records] == ids["val"]
    other = datamodule(tmp_path, seed=1)
    assert [r["objectid"] for r in other.dataset("val").records] != ids["val"]
    assert datamodule(tmp_path, num_bank=100).dataset("bank").records == dm.dataset("train").records


def test_loaders_give_bank_and_query_and_skip_bad_images(tmp_path):
    make_folder(tmp_path)
    dm = datamodule(tmp_path)
    bad = dm.dataset("train").records[0]["path"]
    (tmp_path / bad).write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    dm.tokenizer = len  # the loaders tokenize captions when a method sets one
    batches = list(dm.train_dataloader())
    assert len(batches) == 14 // 4
    skipped = [s for b in batches for s in b.get("skipped", [])]
    images = sum(len(b["image"]) for b in batches)
    assert images + len(skipped) == 12
    if skipped:  # the shuffled epoch may leave the bad image in the dropped last batch
        assert skipped[0].source == str(tmp_path / bad) and "image" in skipped[0].reason
    batch = batches[-1]
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape[1:] == (3, 32, 32)
    assert set(batch["labels"]) == {"classification", "artist", "century"}
    assert batch["tokens"] == len(batch["caption"]) and len(batch["path"]) == len(batch["image"])

    bank, query = dm.val_dataloader()
    assert len(bank.dataset) == 6 and query.dataset is dm.dataset("val")
    bank, query = dm.test_dataloader()
    assert query.dataset is dm.dataset("test") and dm.predict_dataloader().dataset is query.dataset
    full = [dm.dataset("train")[i] for i in range(14)]
    assert sum(isinstance(item, Skipped) for item in full) == 1


def test_missing_or_too_small_folders_say_what_to_do(tmp_path):
    with pytest.raises(DataError, match="contrastive data nga --root"):
        datamodule(tmp_path)
    make_folder(tmp_path, n=6)
    with pytest.raises(ValueError, match=r"fewer than batch_size \(8\)"):
        datamodule(tmp_path, batch_size=8)
    with pytest.raises(ValueError, match="val_fraction"):
        NGADataModule(root=str(tmp_path), val_fraction=0.0)


def test_byol_nga_config_trains_and_tests_on_a_tiny_folder(tmp_path, monkeypatch, capsys):
    make_folder(tmp_path / "data/nga", n=32, size=(48, 40))
    monkeypatch.chdir(tmp_path)  # the config's root, data/nga, is relative
    config = Path(__file__).parents[1] / "configs/byol_nga.yaml"
    tiny = [
        f"--config={config}",
        "--model.backbone=small_cnn",
        "--model.backbone_kwargs={width: 4}",
        "--model.augment.init_args.size=32",
        "--trainer.precision=32",
        "--data.image_size=32",
        "--data.batch_size=8",
        "--data.eval_batch_size=16",
        "--data.num_bank=16",
        "--data.num_workers=0",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]
    cli_main(["fit", *tiny, "--trainer.max_steps=2", "--trainer.max_epochs=1"])
    cli_main(["test", *tiny, "--ckpt_path=last"])
    out = capsys.readouterr().out
    assert "What the embedding knows" in out
    for label in ("classification", "artist", "century"):
        assert any(line.startswith(label) for line in out.splitlines()), label
    assert Path("runs/byol_nga/version_0/checkpoints/last.ckpt").is_file()
