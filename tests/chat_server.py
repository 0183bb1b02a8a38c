"""A loopback stub of an OpenAI-compatible chat endpoint, for the describer's tests."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GOOD = ["same color", "both are squares"]


def pair_of(body: dict) -> tuple[str, str]:
    """The two images of a request, each named by a hash of its data URL."""
    parts = body["messages"][0]["content"][1:]
    return tuple(hashlib.sha256(p["image_url"]["url"].encode()).hexdigest()[:16] for p in parts)


def phrases_for(body: dict) -> list[str]:
    """What ``"by-pair"`` answers: phrases that differ from pair to pair."""
    a, b = pair_of(body)
    return [f"alike in {a[:4]}", f"both {b[:4]}"]


class ChatServer:
    """An OpenAI-compatible ``/v1/chat/completions`` on 127.0.0.1 answering by a plan.

    Each request takes the next entry of ``plan`` (the last one repeats): ``("ok", content)``,
    ``"by-pair"`` (ok, with :func:`phrases_for` the pair), ``"500"``, ``"429"``
    (``Retry-After: retry_after``), ``"400"``, or ``"delay"`` (answers only after ``delay``
    seconds, longer than the client's timeout). With ``hold_after = N``, the requests after
    the first N wait for ``release`` before answering (``held`` counts them).
    """

    def __init__(self) -> None:
        self.plan: list = [("ok", json.dumps(GOOD))]
        self.requests: list[tuple[dict, dict]] = []  # (headers, body)
        self.answered: list[dict] = []  # bodies of the requests answered with 200
        self.retry_after = "0"
        self.delay = 1.0
        self.hold_after: int | None = None
        self.held = 0
        self.passed = 0  # requests let through before holding starts
        self.release = threading.Event()
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append((dict(self.headers), body))
                    step = server.plan.pop(0) if len(server.plan) > 1 else server.plan[0]
                    hold = server.hold_after is not None and server.passed >= server.hold_after
                    server.held += hold
                    server.passed += not hold
                if self.path != "/v1/chat/completions":
                    return self.reply(404, b"{}")
                if hold:
                    server.release.wait(60)
                if step == "delay":
                    server.release.wait(server.delay)
                    step = ("ok", json.dumps(GOOD))
                if step == "by-pair":
                    step = ("ok", json.dumps(phrases_for(body)))
                if step in ("500", "400"):
                    return self.reply(int(step), b'{"error": "no"}')
                if step == "429":
                    return self.reply(429, b'{"error": "slow down"}', server.retry_after)
                answer = {"choices": [{"message": {"role": "assistant", "content": step[1]}}]}
                with server.lock:
                    server.answered.append(body)
                return self.reply(200, json.dumps(answer).encode())

            def reply(self, status: int, body: bytes, retry_after: str | None = None) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    if retry_after is not None:
                        self.send_header("Retry-After", retry_after)
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:  # the client timed out and left
                    pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address) -> None:  # quiet
                pass

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.start()

    def asked(self) -> list[tuple[str, str]]:
        """The image pair of every request so far, in arrival order."""
        with self.lock:
            return [pair_of(body) for _, body in self.requests]

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
