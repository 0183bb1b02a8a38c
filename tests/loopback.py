"""A small HTTP/1.1 server on 127.0.0.1 for the HTTP client's tests: files by path, chosen
breaks, ``Range`` requests, and a record of every request and connection."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Loopback:
    """Serves ``files[path]`` (``path`` as the request target names it: ``/a.tar``, or the
    whole URL when the server acts as a proxy).

    Attributes:
        files: The bodies by path.
        drop: Paths whose next answers stop after this many body bytes and close the
            connection (``{path: [bytes, bytes, ...]}``, one entry used per request).
        fail: Paths whose next answers are this status (``{path: [503, ...]}``).
        ranges: Whether ``Range: bytes=N-`` is answered with 206 (else the whole body, 200).
        requests: ``(target, headers)`` of every request.
        connections: Connections accepted.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.drop: dict[str, list[int]] = {}
        self.fail: dict[str, list[int]] = {}
        self.ranges = True
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.connections = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                with server.lock:
                    server.connections += 1

            def do_GET(self) -> None:
                with server.lock:
                    server.requests.append((self.path, dict(self.headers)))
                    fails = server.fail.get(self.path) or []
                    status = fails.pop(0) if fails else None
                    drops = server.drop.get(self.path) or []
                    cut = drops.pop(0) if drops else None
                body = server.files.get(self.path)
                if status is not None or body is None:
                    payload = b"no" if body is None else b"busy"
                    self.send_response(status or 404)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                start, code = 0, 200
                asked = self.headers.get("Range", "")
                if server.ranges and asked.startswith("bytes=") and asked.endswith("-"):
                    start, code = int(asked[6:-1]), 206
                part = body[start:]
                self.send_response(code)
                self.send_header("Content-Type", "application/x-tar")
                self.send_header("Content-Length", str(len(part)))
                if code == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.end_headers()
                if cut is not None:
                    self.wfile.write(part[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(part)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
