"""Every HTTP request the data tools make: retries with backoff, size caps, safe redirects.

:class:`Client` is the one HTTP helper of :mod:`contrastive.tools`: ``contrastive data nga``
downloads files with it (:meth:`Client.download`: atomic, checked, resumable by the caller) and
``contrastive data triplets`` asks a chat endpoint with it (:meth:`Client.post_json`). Both get
the same behaviour:

- Timeouts, dropped connections, truncated bodies and HTTP 408/425/429/5xx are retried with
  exponential backoff (:func:`backoff_delay`; ``Retry-After: N`` honoured up to
  ``max_backoff``); other statuses, a wrong content type and an oversized body are not.
- Failures are :class:`FetchError` with a short ``reason`` the tools count them by.
- A stop event (Ctrl-C) ends retry waits and downloads at once, raising :class:`Interrupted`;
  a JSON answer on its way is still read (it has been paid for).
- Redirects may be confined under a base URL (:func:`url_under`).

Only the standard library does HTTP: ``http.client`` connections kept open across requests,
one per thread and server (:mod:`contrastive.tools.connections`; urllib would open a new
TCP and TLS connection for every image). :class:`~contrastive.tools.stream.ResumableStream`
reads a body as a file that resumes where a dropped connection broke it (webdataset shards over
http).
"""

from __future__ import annotations

import http.client
import io
import json
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from contrastive.files import atomic_writer
from contrastive.tools.connections import ConnectionPool, UnsupportedURL

# Statuses worth another try: request timeout, too early, rate limited, server errors.
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
MB = 1 << 20
_CHUNK = 1 << 16
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 10
_DISCARD_LIMIT = 1 << 16  # an error body longer than this closes the connection
# A path segment of an RFC 3986 path, less ";" (path parameters: "..;/" reaches the parent on
# some servers) and "%25" (an escaped "%", decoded twice by some), plus IIIF's "^" (upscaling
# in Image API 3). IIIF sizes and regions use "!", ",", ":" ("!512,512", "pct:50", "x,y,w,h").
_SEGMENT = re.compile(r"(?:[A-Za-z0-9._~!$&'()*+,=:@^-]|%(?!25)[0-9A-Fa-f]{2})+")


class FetchError(Exception):
    """One request failed.

    Attributes:
        reason: A few words that group failures in a summary (``"http 404"``, ``"too large"``).
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
    """Raised in a request's thread when the run is being stopped (Ctrl-C)."""


def url_under(url: str, base: str) -> bool:
    """Whether ``url`` names a resource strictly below ``base``.

    Same scheme and host (user info and ports included), no query or fragment, and a path
    below ``base``'s path whose segments are non-empty runs of RFC 3986 path characters (IIIF's
    ``!``, ``,``, ``:`` and ``^`` included; ``;`` and a backslash not). Percent escapes are
    allowed, but not ``%25`` (a ``%``), and once decoded the path may hold no ``.`` or ``..``
    segment, no empty segment, no backslash, ``;`` or control character: nothing a server
    could read as a way out of ``base``.
    """
    u, b = urllib.parse.urlsplit(url), urllib.parse.urlsplit(base)
    if (u.scheme.lower(), u.netloc.lower()) != (b.scheme.lower(), b.netloc.lower()):
        return False
    if u.query or u.fragment or "?" in url or "#" in url:
        return False
    prefix = b.path.rstrip("/") + "/"
    if not u.path.startswith(prefix):
        return False
    tail = u.path[len(prefix) :]
    if not all(_SEGMENT.fullmatch(s) for s in tail.split("/")):
        return False
    decoded = urllib.parse.unquote(tail, errors="strict") if "%" in tail else tail
    if any(c in decoded for c in "\\;") or any(ord(c) < 32 or ord(c) == 127 for c in decoded):
        return False
    return not any(s in ("", ".", "..") for s in decoded.split("/"))


def retry_after(headers) -> float | None:
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


class Client:
    """HTTP GET into files and POST of JSON, with retries and backoff;
    thread-safe, one keep-alive connection per thread and server.

    Args:
        user_agent: The ``User-Agent`` header: which tool asks.
        timeout: Seconds a connection or a read may block.
        retries: Further attempts after a retryable failure.
        backoff: Seconds before the first retry, doubled for each next one.
        max_backoff: Longest wait between attempts, ``Retry-After`` included.
        redirect_base: Follow redirects only to URLs under this one; any when ``None``.
        stop: When set, retry waits and downloads stop (raising :class:`Interrupted`); no new
            request starts.

    Attributes:
        requests: Requests sent so far, retries and redirects included.
        connections: The :class:`~contrastive.tools.connections.ConnectionPool`; its ``opened``
            counts the connections made.
    """

    def __init__(
        self,
        user_agent: str,
        timeout: float = 30.0,
        retries: int = 4,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        redirect_base: str | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        if timeout <= 0 or retries < 0 or backoff < 0 or max_backoff < 0:
            raise ValueError(
                f"expected timeout > 0, retries >= 0, backoff >= 0 and max_backoff >= 0, got "
                f"{timeout}, {retries}, {backoff}, {max_backoff}"
            )
        self.user_agent = user_agent
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.redirect_base = redirect_base
        self.stop = stop or threading.Event()
        self.connections = ConnectionPool(timeout)
        self._lock = threading.Lock()
        self.requests = 0

    def close(self) -> None:
        """Close every open connection (each thread's)."""
        self.connections.close()

    def download(
        self,
        url: str,
        dest: Path,
        max_bytes: int,
        content_type: str | None = None,
        check: Callable[[Path], None] | None = None,
        progress: Callable[[int, int | None], None] | None = None,
    ) -> None:
        """Fetch ``url`` to ``dest``: a temporary file beside it, checked, then renamed.

        Args:
            url: What to fetch.
            dest: The final file; replaced only by a complete, checked download.
            max_bytes: Larger bodies fail (``"too large"``) without being read further.
            content_type: The media type required (``"image/jpeg"``); any when ``None``.
            check: Called on the complete temporary file; raises :class:`FetchError` to reject.
            progress: Called after each chunk with the bytes received so far in this attempt
                (a retry starts again at 0) and the announced length (``None`` if unknown).

        Raises:
            FetchError: After the last attempt, or at once for a failure not worth retrying.
            Interrupted: When ``stop`` was set.
        """

        def checked(path: Path) -> None:
            if check is not None:
                check(path)
            if self.stop.is_set():
                raise Interrupted()

        def attempt() -> None:
            with atomic_writer(dest, binary=True, check=checked) as out:
                with self._exchange("GET", url) as response:
                    got_type = response.headers.get_content_type()
                    if content_type is not None and got_type != content_type:
                        raise FetchError("wrong content type", f"{got_type} from {url}")
                    _copy(response, out, max_bytes, url, self.stop, progress)

        self._with_retries(attempt)

    def post_json(
        self,
        url: str,
        payload: object,
        headers: dict[str, str] | None = None,
        max_bytes: int = 16 * MB,
    ) -> object:
        """POST ``payload`` as JSON to ``url``; the decoded JSON answer.

        Raises:
            FetchError: After the last attempt, at once for a failure not worth retrying, or
                (``"malformed answer"``) when the body is not JSON.
            Interrupted: When ``stop`` was set.
        """
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json", **(headers or {})}

        def attempt() -> object:
            out = io.BytesIO()
            with self._exchange("POST", url, body, headers) as response:
                # Read to the end even when stopped: an answer on its way has been paid for.
                _copy(response, out, max_bytes, url, None, None)
            try:
                return json.loads(out.getvalue())
            except ValueError:
                raise FetchError("malformed answer", f"not JSON from {url}") from None

        return self._with_retries(attempt)

    def _with_retries(self, attempt: Callable[[], object]) -> object:
        tries = 0
        while True:
            if self.stop.is_set():
                raise Interrupted()
            try:
                return attempt()
            except FetchError as err:
                tries = self.wait_to_retry(err, tries)

    def wait_to_retry(self, err: FetchError, tries: int) -> int:
        """Re-raise ``err`` unless it may be retried (``tries`` so far); else wait the
        backoff and return ``tries + 1``."""
        if not err.retry or tries >= self.retries:
            raise err
        delay = backoff_delay(tries, self.backoff, self.max_backoff, err.retry_after)
        if self.stop.wait(delay):
            raise Interrupted() from None
        return tries + 1

    @contextmanager
    def _exchange(
        self,
        method: str,
        url: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Iterator[http.client.HTTPResponse]:
        """One request's successful response, redirects followed; the connection is kept for
        the next request when the body was read to its end without error, else closed."""
        conn, response = self.request(method, url, body, headers or {})
        try:
            yield response
        except BaseException:
            conn.close()  # a truncated body, a wrong type, a stop: start afresh
            raise
        if not response.isclosed():
            conn.close()

    def request(
        self, method: str, url: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send one request (no retry), follow GET redirects (under ``redirect_base``); the
        connection and its 2xx response, to be read to its end or the connection closed.

        Raises:
            FetchError: A status other than 2xx (retryable for :data:`RETRY_STATUSES`), an
                unsafe redirect, or a network error.
        """
        headers = {"User-Agent": self.user_agent, **headers}
        for _ in range(_MAX_REDIRECTS + 1):
            with self._lock:
                self.requests += 1
            try:
                conn, response = self.connections.send(method, url, body, headers)
            except UnsupportedURL as err:
                raise FetchError("unsupported url", str(err)) from None
            except (OSError, http.client.HTTPException) as err:  # timeouts, resets, refusals
                raise network_error(url, err) from None
            status = response.status
            if 200 <= status < 300:
                return conn, response
            location = response.headers.get("Location")
            _discard(conn, response)
            if status in _REDIRECTS and location and method == "GET":
                target = urllib.parse.urljoin(url, location)
                if self.redirect_base is not None and not url_under(target, self.redirect_base):
                    raise FetchError("unsafe redirect", f"{url} -> {target[:200]}")
                url = target
                continue
            wait = retry_after(response.headers)
            raise FetchError(f"http {status}", url, status in RETRY_STATUSES, wait)
        raise FetchError("too many redirects", url)


def _discard(conn: http.client.HTTPConnection, response: http.client.HTTPResponse) -> None:
    """Read a small error or redirect body to its end, so the connection is kept; close it
    when the body is large or the read fails."""
    try:
        response.read(_DISCARD_LIMIT)
    except (OSError, http.client.HTTPException):
        pass
    if not response.isclosed():
        conn.close()


def _copy(
    response: http.client.HTTPResponse,
    out: BinaryIO,
    max_bytes: int,
    url: str,
    stop: threading.Event | None,
    progress: Callable[[int, int | None], None] | None,
) -> None:
    """Copy ``response``'s body to ``out``, checking its size against the cap and its
    announced length; stop (:class:`Interrupted`) when ``stop`` is set."""
    length_header = response.headers.get("Content-Length", "")
    length = int(length_header) if length_header.strip().isdigit() else None
    if length is not None and length > max_bytes:
        raise FetchError("too large", f"{length} bytes > {max_bytes} from {url}")
    total = 0
    while True:
        if stop is not None and stop.is_set():
            raise Interrupted()
        try:
            chunk = response.read1(_CHUNK)  # one system call: stop is seen promptly
        except (OSError, http.client.HTTPException) as err:
            raise network_error(url, err) from None
        if not chunk:
            break
        total += len(chunk)
        if total > max_bytes:
            raise FetchError("too large", f"more than {max_bytes} bytes from {url}")
        out.write(chunk)
        if progress is not None:
            progress(total, length)
    if length is not None and total < length:
        raise FetchError("truncated", f"{total} of {length} bytes from {url}", True)
    if not response.isclosed() and response.length == 0:
        # The body was read to its end, but read1 does not mark it so (Python 3.11-3.13):
        # closing the response frees its connection for the next request.
        response.close()


def network_error(url: str, err: Exception) -> FetchError:
    """A retryable :class:`FetchError`: ``"timeout"`` or ``"network error"``."""
    reason = getattr(err, "reason", err)
    kind = "timeout" if isinstance(reason, TimeoutError) else "network error"
    return FetchError(kind, f"{url} ({reason})", True)
