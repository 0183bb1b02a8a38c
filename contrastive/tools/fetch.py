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

Only the standard library (``urllib``) does HTTP, one connection per request: connection
pooling and a download progress bar would go here.
"""

from __future__ import annotations

import http.client
import io
import json
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from contrastive.files import atomic_writer

# Statuses worth another try: request timeout, too early, rate limited, server errors.
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
MB = 1 << 20
_CHUNK = 1 << 16
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


class _RedirectsUnder(urllib.request.HTTPRedirectHandler):
    """Follows redirects only to URLs under one base URL."""

    def __init__(self, base: str) -> None:
        self.base = base

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if not url_under(newurl, self.base):
            fp.close()
            raise FetchError("unsafe redirect", f"{req.full_url} -> {newurl[:200]}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class Client:
    """HTTP GET into files and POST of JSON, with retries and backoff; thread-safe.

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
        requests: Requests sent so far, retries included.
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
        self.stop = stop or threading.Event()
        handlers = [] if redirect_base is None else [_RedirectsUnder(redirect_base)]
        self._opener = urllib.request.build_opener(*handlers)
        self._lock = threading.Lock()
        self.requests = 0

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

        def checked(path: Path) -> None:
            if check is not None:
                check(path)
            if self.stop.is_set():
                raise Interrupted()

        def attempt() -> None:
            with atomic_writer(dest, binary=True, check=checked) as out:
                self._get(url, out, max_bytes, content_type)

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
            request = urllib.request.Request(url, data=body, headers=headers, method="POST")
            out = io.BytesIO()
            # Read to the end even when stopped: an answer on its way has been paid for.
            self._read(self._open(request), out, max_bytes, None, interruptible=False)
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
                if not err.retry or tries >= self.retries:
                    raise
                delay = backoff_delay(tries, self.backoff, self.max_backoff, err.retry_after)
                tries += 1
                if self.stop.wait(delay):
                    raise Interrupted() from None

    def _open(self, request: urllib.request.Request):
        request.add_header("User-Agent", self.user_agent)
        url = request.full_url
        with self._lock:
            self.requests += 1
        try:
            return self._opener.open(request, timeout=self.timeout)
        except urllib.error.HTTPError as err:
            wait = retry_after(err.headers)
            err.close()
            raise FetchError(f"http {err.code}", url, err.code in RETRY_STATUSES, wait) from None
        except (OSError, http.client.HTTPException) as err:  # URLError, timeouts, resets
            raise _network_error(url, err) from None

    def _get(self, url: str, out: BinaryIO, max_bytes: int, content_type: str | None) -> None:
        response = self._open(urllib.request.Request(url))
        got_type = response.headers.get_content_type()
        if content_type is not None and got_type != content_type:
            response.close()
            raise FetchError("wrong content type", f"{got_type} from {url}")
        self._read(response, out, max_bytes, url)

    def _read(
        self, response, out: BinaryIO, max_bytes: int, url: str | None, interruptible=True
    ) -> None:
        """Copy ``response``'s body to ``out``, checking its size against the cap and its
        announced length; closes the response. ``interruptible``: stop when ``stop`` is set."""
        url = url or response.geturl()
        with response:
            length_header = response.headers.get("Content-Length", "")
            length = int(length_header) if length_header.strip().isdigit() else None
            if length is not None and length > max_bytes:
                raise FetchError("too large", f"{length} bytes > {max_bytes} from {url}")
            total = 0
            while True:
                if interruptible and self.stop.is_set():
                    raise Interrupted()
                try:
                    chunk = response.read1(_CHUNK)  # one system call: stop is seen promptly
                except (OSError, http.client.HTTPException) as err:
                    raise _network_error(url, err) from None
                if not chunk:
                    break
                total += len(chunk)
                if total > max_bytes:
                    raise FetchError("too large", f"more than {max_bytes} bytes from {url}")
                out.write(chunk)
        if length is not None and total < length:
            raise FetchError("truncated", f"{total} of {length} bytes from {url}", True)


def _network_error(url: str, err: Exception) -> FetchError:
    """A retryable :class:`FetchError`: ``"timeout"`` or ``"network error"``."""
    reason = getattr(err, "reason", err)
    kind = "timeout" if isinstance(reason, TimeoutError) else "network error"
    return FetchError(kind, f"{url} ({reason})", True)
