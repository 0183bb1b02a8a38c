"""contrastive/tools/fetch.py: the URL check of confined redirects and the retry delays."""

from __future__ import annotations

import pytest

from contrastive.tools.fetch import backoff_delay, url_under


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
