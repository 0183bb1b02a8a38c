"""contrastive/tools/fetch.py, connections.py and stream.py: the URL check of confined
redirects, the retry delays, proxies, and a streamed body that resumes where it broke."""

from __future__ import annotations

import base64
import io
import os

import pytest
from loopback import Loopback

from contrastive.tools.fetch import Client, FetchError, backoff_delay, url_under
from contrastive.tools.stream import ResumableStream


@pytest.fixture
def loopback(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    server = Loopback()
    yield server
    server.close()


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


def test_backoff_doubles_honours_retry_after_and_is_capped():
    assert [backoff_delay(i, 0.5, 60.0, None) for i in range(4)] == [0.5, 1.0, 2.0, 4.0]
    assert backoff_delay(0, 0.5, 60.0, 7.0) == 7.0  # the server's wait, when longer
    assert backoff_delay(3, 0.5, 60.0, 1.0) == 4.0  # ours, when longer
    assert backoff_delay(10, 0.5, 60.0, None) == 60.0 and backoff_delay(0, 1, 5, 300) == 5


def fast_client(retries: int = 3) -> Client:
    return Client("test", timeout=10, retries=retries, backoff=0.01, max_backoff=0.02)


def test_plain_http_goes_through_the_proxy_of_the_environment(loopback, tmp_path, monkeypatch):
    """``http_proxy`` (with credentials) is used as urllib would: the whole URL as the target,
    basic authentication, and the kept connection to the proxy reused."""
    monkeypatch.setenv("http_proxy", loopback.url.replace("://", "://ann:s%40cret@"))
    monkeypatch.delenv("no_proxy")
    monkeypatch.delenv("NO_PROXY")
    loopback.files["http://data.invalid/a.csv"] = b"a,b\n1,2\n"
    loopback.files["http://data.invalid/b.csv"] = b"c\n3\n"
    client = fast_client()
    client.download("http://data.invalid/a.csv", tmp_path / "a.csv", 1 << 20)
    client.download("http://data.invalid/b.csv", tmp_path / "b.csv", 1 << 20)
    assert (tmp_path / "b.csv").read_bytes() == b"c\n3\n"
    (target, headers), _ = loopback.requests
    assert target == "http://data.invalid/a.csv" and headers["Host"] == "data.invalid"
    assert headers["Proxy-Authorization"] == "Basic " + base64.b64encode(b"ann:s@cret").decode()
    assert loopback.connections == 1
    client.close()


def test_no_proxy_hosts_are_reached_directly(loopback, tmp_path, monkeypatch):
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # nothing listens there
    loopback.files["/a.csv"] = b"x"
    fast_client().download(f"{loopback.url}/a.csv", tmp_path / "a.csv", 10)
    assert loopback.requests[0][0] == "/a.csv"


def test_progress_reports_the_bytes_and_the_announced_length(loopback, tmp_path):
    loopback.files["/big"] = os.urandom(200_000)
    seen = []
    fast_client().download(
        f"{loopback.url}/big", tmp_path / "big", 1 << 20, progress=lambda *a: seen.append(a)
    )
    assert seen[-1] == (200_000, 200_000) and all(n <= 200_000 for n, _ in seen)


def read_all(stream) -> bytes:
    out = io.BytesIO()
    while chunk := stream.read(5000):
        out.write(chunk)
    return out.getvalue()


@pytest.mark.parametrize("ranges", [True, False])
def test_a_stream_resumes_where_the_connection_dropped(loopback, ranges):
    """Two drops mid-body: the stream reopens at the byte it broke at (206), or, from a server
    that ignores ranges, reads the body again and skips what it had; the reader sees the
    body once, whole."""
    body = os.urandom(300_000)
    loopback.files["/shard.tar"] = body
    loopback.drop["/shard.tar"] = [70_000, 50_000]
    loopback.ranges = ranges
    stream = ResumableStream(fast_client(), f"{loopback.url}/shard.tar")
    assert read_all(stream) == body
    asked = [headers.get("Range") for _, headers in loopback.requests]
    assert asked[0] is None and len(asked) == 3
    if ranges:
        assert asked[1] == "bytes=70000-" and asked[2] == "bytes=120000-"
    stream.close()


def test_a_stream_retries_server_errors_then_gives_up(loopback):
    loopback.files["/s.tar"] = b"t" * 1000
    loopback.fail["/s.tar"] = [503, 503]
    assert read_all(ResumableStream(fast_client(retries=2), f"{loopback.url}/s.tar")) == b"t" * 1000
    loopback.fail["/s.tar"] = [503, 503, 503]
    with pytest.raises(FetchError, match="http 503"):
        read_all(ResumableStream(fast_client(retries=2), f"{loopback.url}/s.tar"))
    with pytest.raises(FetchError, match="http 404"):  # not retried
        read_all(ResumableStream(fast_client(retries=2), f"{loopback.url}/gone.tar"))
    assert [t for t, _ in loopback.requests].count("/gone.tar") == 1
