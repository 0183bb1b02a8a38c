"""Keep-alive HTTP connections, one per thread and server, for the tools' HTTP client.

urllib opens a new TCP (and TLS) connection for every request and asks the server to close it
(``Connection: close``); downloading thousands of small images that way spends more time in
handshakes than in transfer. :class:`ConnectionPool` keeps one ``http.client`` connection per
thread and origin (scheme, host, port) open across requests, so a download worker makes one
connection and reuses it for every image. A connection the server closed while it sat idle is
noticed when the next request fails before any answer, and that request is sent again once on a
new connection (as urllib3 does); any other failure is the caller's to retry.

Proxies are those urllib would use (``http_proxy``, ``https_proxy``, ``no_proxy`` and the
platform's settings): plain HTTP through the proxy with the full URL as the request target,
HTTPS through a ``CONNECT`` tunnel; ``user:password@`` in the proxy URL is sent as basic
authentication.
"""

from __future__ import annotations

import base64
import http.client
import ssl
import threading
import urllib.parse
import urllib.request
from typing import NamedTuple

# Failures that, on a connection used before, mean the server closed it while idle.
_STALE = (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine)


class _Route(NamedTuple):
    """How this thread reaches one origin: its connection, headers for a proxy, and whether
    the request target is the whole URL (plain HTTP through a proxy)."""

    conn: http.client.HTTPConnection
    headers: dict[str, str]
    absolute: bool


class UnsupportedURL(ValueError):
    """A URL that is not ``http://`` or ``https://`` with a host."""


def _proxy_for(parts: urllib.parse.SplitResult) -> urllib.parse.SplitResult | None:
    """The proxy urllib would use for this URL, or ``None`` to connect directly."""
    proxy = urllib.request.getproxies().get(parts.scheme)
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")


def _proxy_auth(proxy: urllib.parse.SplitResult) -> dict[str, str]:
    if proxy.username is None:
        return {}
    user = urllib.parse.unquote(proxy.username)
    password = urllib.parse.unquote(proxy.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return {"Proxy-Authorization": f"Basic {token}"}


class ConnectionPool:
    """One open ``http.client`` connection per thread and origin; thread-safe.

    Args:
        timeout: Seconds a connection attempt or a read may block.

    Attributes:
        opened: Connections opened so far (TCP connects, TLS handshakes included).
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[http.client.HTTPConnection] = []
        self._tls = ssl.create_default_context()
        self.opened = 0

    def send(
        self, method: str, url: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send one request on this thread's connection to ``url``'s origin; its response.

        Read the response to its end before the next request on this thread, or close the
        connection (``conn.close()``; the next request opens a new one).

        Raises:
            UnsupportedURL: The URL is not http(s) with a host.
            OSError, http.client.HTTPException: The request could not be sent or answered.
        """
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UnsupportedURL(f"not an http(s) URL: {url[:200]}")
        conn, proxy_headers, absolute = self._connection(parts)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        if absolute:
            target = urllib.parse.urlunsplit(parts._replace(fragment=""))
        headers = {"Host": parts.netloc.rpartition("@")[2], **proxy_headers, **headers}
        for attempt in range(2):
            reused = conn.sock is not None
            if not reused:
                with self._lock:
                    self.opened += 1
            try:
                conn.request(method, target, body=body, headers=headers)
                return conn, conn.getresponse()
            except _STALE:
                conn.close()
                if not reused or attempt:
                    raise
            except BaseException:
                conn.close()
                raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close every connection of every thread."""
        with self._lock:
            for conn in self._all:
                conn.close()

    def _connection(self, parts: urllib.parse.SplitResult) -> _Route:
        routes = self._local.__dict__.setdefault("routes", {})
        key = (parts.scheme, parts.netloc)
        if key not in routes:
            host, port, proxy = parts.hostname, parts.port, _proxy_for(parts)
            if proxy is None:
                route = _Route(self._new(parts.scheme, host, port), {}, False)
            elif parts.scheme == "https":  # a CONNECT tunnel, TLS to the origin inside it
                conn = self._new("https", proxy.hostname, proxy.port)
                conn.set_tunnel(host, port, headers=_proxy_auth(proxy))
                route = _Route(conn, {}, False)
            else:  # the whole URL as the target, to the proxy
                conn = self._new("http", proxy.hostname, proxy.port)
                route = _Route(conn, _proxy_auth(proxy), True)
            routes[key] = route
            with self._lock:
                self._all.append(route.conn)
        return routes[key]

    def _new(self, scheme: str, host: str, port: int | None) -> http.client.HTTPConnection:
        if scheme == "https":
            return http.client.HTTPSConnection(host, port, timeout=self.timeout, context=self._tls)
        return http.client.HTTPConnection(host, port, timeout=self.timeout)
