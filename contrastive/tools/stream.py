"""Reading an HTTP body as a file that survives dropped connections (webdataset shards)."""

from __future__ import annotations

import http.client
import io
import re

from contrastive.tools.fetch import Client, FetchError, Interrupted, network_error

_SKIP_CHUNK = 1 << 16


class ResumableStream(io.RawIOBase):
    """A GET body read as a file, from start to end, that reopens where it broke.

    A connection that drops or a body cut short is reopened at the byte it broke at (a
    ``Range`` request; or the body again from the start, skipping what was read, when the
    server ignores ranges), with ``client``'s retries and backoff for each break. Wrap it in
    ``io.BufferedReader`` for small reads.

    Raises (from ``read``):
        FetchError: On opening or reading, after the last attempt.
        Interrupted: When the client's ``stop`` was set.
    """

    def __init__(self, client: Client, url: str) -> None:
        self.client, self.url = client, url
        self.offset = 0  # bytes handed to the reader
        self._conn: http.client.HTTPConnection | None = None
        self._response: http.client.HTTPResponse | None = None
        self._end: int | None = None  # the body's length, when announced

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        tries = 0
        while True:
            if self.client.stop.is_set():
                raise Interrupted()
            try:
                if self._response is None:
                    self._open()
                n = self._response.readinto(buffer)
                if n == 0 and buffer and self._end is not None and self.offset < self._end:
                    raise FetchError(
                        "truncated", f"{self.offset} of {self._end} bytes from {self.url}", True
                    )
                self.offset += n
                return n
            except (OSError, http.client.HTTPException) as err:
                error = network_error(self.url, err)
            except FetchError as err:
                error = err
            self._drop()
            tries = self.client.wait_to_retry(error, tries)

    def _open(self) -> None:
        headers = {"Range": f"bytes={self.offset}-"} if self.offset else {}
        self._conn, self._response = self.client.request("GET", self.url, None, headers)
        length = self._response.headers.get("Content-Length", "").strip()
        length = int(length) if length.isdigit() else None
        if self._response.status == 206:
            start = _range_start(self._response.headers.get("Content-Range", ""))
            if start != self.offset:
                self._drop()
                raise FetchError("bad range", f"asked from byte {self.offset} of {self.url}")
            self._end = None if length is None else self.offset + length
            return
        self._end = length
        skip = self.offset  # the server sent the whole body again: skip what was read
        while skip:
            chunk = self._response.read(min(skip, _SKIP_CHUNK))
            if not chunk:
                raise FetchError("truncated", f"shorter than before from {self.url}", True)
            skip -= len(chunk)

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = self._response = None

    def close(self) -> None:
        if self._response is not None and not self._response.isclosed():
            self._drop()  # not read to its end: the connection cannot be reused
        super().close()


def _range_start(content_range: str) -> int | None:
    """The first byte of ``Content-Range: bytes START-END/TOTAL``."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(?:\d+|\*)\s*", content_range)
    return int(match.group(1)) if match else None
