import time

import pytest
from clipedge import fetch
from clipedge.fetch import FetchError, FetchPolicy, fetch_url
from clipedge.images import DecodePolicy, ImageError, load_image

from .httpserver import ImageServer, png_bytes

PRIVATE_OK = FetchPolicy(allow_private=True, timeout=2.0)


@pytest.fixture(scope="module")
def server():
    with ImageServer() as s:
        yield s


def test_fetch_allowed_with_private_opt_in(server):
    assert fetch_url(server.url + "/img.png", PRIVATE_OK) == png_bytes()
    assert fetch_url(server.url + "/redirect", PRIVATE_OK) == png_bytes()
    im = load_image(server.url + "/img.png?x=1", DecodePolicy(fetch=PRIVATE_OK))
    assert im.size == (32, 24)


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:1/x.png", "http://localhost/x.png", "http://169.254.169.254/latest/meta-data/",
     "http://10.0.0.1/a.png", "http://192.168.1.1/a.png", "http://100.64.0.1/a.png", "http://[::1]/a.png",
     "http://[::ffff:127.0.0.1]/a.png", "http://0.0.0.0/a.png"],
)  # fmt: skip
def test_non_public_addresses_refused_without_connecting(url):
    t0 = time.monotonic()
    with pytest.raises(FetchError, match="non-public address"):
        fetch_url(url)
    assert time.monotonic() - t0 < 1.0


def test_local_server_refused_by_default(server):
    with pytest.raises(ImageError, match="non-public address"):
        load_image(server.url + "/img.png")


def test_redirect_to_private_address_refused(server, monkeypatch):
    """The first hop (127.0.0.1) is treated as public here; its redirect to 127.0.0.2 must be re-checked."""
    real = fetch._public
    monkeypatch.setattr(fetch, "_public", lambda ip: ip == "127.0.0.1" or real(ip))
    assert fetch_url(server.url + "/img.png") == png_bytes()
    with pytest.raises(FetchError, match=r"non-public address \(127.0.0.2\)"):
        fetch_url(server.url + "/to-other-loopback")
    with pytest.raises(FetchError, match=r"non-public address \(169.254.169.254\)"):
        fetch_url(server.url + "/to-metadata")


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a.png", "gopher://x/"])
def test_schemes_refused(url):
    with pytest.raises(FetchError, match="scheme .* is not allowed"):
        fetch_url(url, PRIVATE_OK)


def test_limits(server):
    with pytest.raises(FetchError, match="more than 5 redirects"):
        fetch_url(server.url + "/loop", PRIVATE_OK)
    t0 = time.monotonic()
    with pytest.raises(FetchError, match="timed out after 0.5 s"):
        fetch_url(server.url + "/slow", FetchPolicy(allow_private=True, timeout=0.5))
    assert time.monotonic() - t0 < 1.5
    with pytest.raises(FetchError, match="body exceeds the limit of 1,000,000 bytes"):
        fetch_url(server.url + "/big", FetchPolicy(allow_private=True, max_bytes=1_000_000))
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch_url(server.url + "/notfound", PRIVATE_OK)
    with pytest.raises(FetchError, match="credentials"):
        fetch_url("http://user:pw@127.0.0.1/", PRIVATE_OK)


def test_non_image_body_is_clear_image_error(server):
    with pytest.raises(ImageError, match="/text: not an image in an allowed format"):
        load_image(server.url + "/text", DecodePolicy(fetch=PRIVATE_OK))
