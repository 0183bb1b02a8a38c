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
from PIL import Image

from contrastive.cli import main as cli_main
from contrastive.tools import nga
from contrastive.tools.nga import url_under

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
    ``stall-once`` (half the body, then waits for ``release``; then ok).
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
                uuid = parts[2] if len(parts) > 2 else ""
                kind = server.kinds.get(uuid)
                body = server.images.get(uuid, b"")
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

            def reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
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
    assert "unsafe" in out and "escaped" in out and "example.invalid" in out
    assert f"nga: manifest {root / 'manifest.jsonl'} (5 images)" in out
    assert "nga: 11/11 images (5 downloaded, 0 already present, 6 failed)" in err

    rows = nga.read_manifest(root)
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
    rows = nga.read_manifest(root)
    assert [r["objectid"] for r in rows] == sorted([*GOOD, 105])
    assert (root / "manifest.jsonl").read_bytes().startswith(manifest.split(b"\n")[0])


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
    rows = nga.read_manifest(root)
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
    assert err.startswith("error: objects.csv lacks the column(s) ['objectid', 'title'")


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
            args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
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
    assert len(nga.read_manifest(root)) == len(ids) - 1  # what finished is in the manifest

    assert run_tool(server, root) == 0
    out = capsys.readouterr().out
    assert f": 1 downloaded, {len(ids) - 1} already present, 0 failed" in out
    assert files_under(root / "images") == {f"{i}.jpg" for i in ids}
    assert (root / "images/203.jpg").read_bytes() == server.images[uuid_of(203)]
    assert len(nga.read_manifest(root)) == len(ids)


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
    assert [r["path"] for r in nga.read_manifest(tmp_path)] == ["images/1.jpg"]
