"""The NGA's tables and IIIF image service on a loopback server, for the NGA tool's tests."""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from PIL import Image

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
    "--max_backoff=0.05",
    "--retries=2",
    "--timeout=10",
    "--workers=4",
    "--progress_interval=0",
    "--size=48",
    "--max_image_mb=0.01",  # 10 KiB: the test JPEGs are about 1 KiB
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
    ``redirect-out`` (a 302 to the CSVs, outside the image service). It speaks HTTP/1.1 and
    keeps connections open between requests (but those it breaks on purpose); ``connections``
    counts the connections it accepted.
    """

    def __init__(self) -> None:
        self.csvs: dict[str, bytes] = {}
        self.kinds: dict[str, str] = {}
        self.images: dict[str, bytes] = {}
        self.requests: Counter[str] = Counter()
        self.connections = 0  # TCP connections accepted
        self.paths: list[str] = []
        self.stalled = threading.Event()
        self.release = threading.Event()
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers: connections are counted

            def log_message(self, *args) -> None:  # quiet
                pass

            def setup(self) -> None:
                super().setup()
                with server.lock:
                    server.connections += 1

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
            f"--csv_base_url={self.url}/data",
            f"--image_base_url={self.url}/iiif",
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


# The tool in a child process, for the tests that interrupt it.


class Spawned:
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


def wait_for(condition, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def stalled_collection(server: NGAServer) -> list[int]:
    ids = list(range(201, 209))
    server.publish([{"objectid": i, "kind": "stall-once" if i == 203 else "ok"} for i in ids])
    return ids


def partial_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.endswith(".part")]
