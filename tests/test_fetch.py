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
    real = fetch.address_kind
    monkeypatch.setattr(fetch, "address_kind", lambda ip: "global" if ip == "127.0.0.1" else real(ip))
    assert fetch_url(server.url + "/img.png") == png_bytes()
    with pytest.raises(FetchError, match=r"non-public address \(127.0.0.2\)"):
        fetch_url(server.url + "/to-other-loopback")
    with pytest.raises(FetchError, match=r"non-public address \(169.254.169.254\).*link-local"):
        fetch_url(server.url + "/to-metadata")


def fake_dns(*addresses):
    """A resolver that answers `addresses` for every host, and records that it was asked."""
    asked = []

    def resolver(host, port):
        asked.append(host)
        return list(addresses)

    resolver.asked = asked
    return resolver


EMBEDDED_PRIVATE = [
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:10.1.2.3",
    "::127.0.0.1",  # IPv4-compatible
    "::a9fe:a9fe",  # IPv4-compatible 169.254.169.254
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "64:ff9b::c0a8:101",  # NAT64 of 192.168.1.1
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    "2002:0a00:0001::",  # 6to4 of 10.0.0.1
]


@pytest.mark.parametrize("address", EMBEDDED_PRIVATE)
def test_ipv6_forms_embedding_ipv4_are_judged_by_the_ipv4(address):
    dns = fake_dns(address)
    with pytest.raises(FetchError, match="non-public address"):
        fetch_url("http://images.example.com/a.png", FetchPolicy(resolver=dns))
    assert dns.asked == ["images.example.com"]


@pytest.mark.parametrize(
    "address, kind",
    [("8.8.8.8", "global"), ("64:ff9b::808:808", "global"), ("2002:808:808::1", "global"), ("::ffff:8.8.8.8", "global"),
     ("2606:4700::1111", "global"), ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
     ("fe80::1%eth0", "link-local"), ("::ffff:169.254.169.254", "link-local"), ("10.0.0.1", "private"),
     ("100.64.0.1", "private"), ("fc00::1", "private"), ("0.0.0.0", "private"), ("::1", "private"),
     ("224.0.0.1", "multicast"), ("ff02::1", "multicast"), ("192.0.0.192", "link-local"),
     ("fd00:ec2::254", "link-local"), ("64:ff9b:1::7f00:1", "private"), ("::ffff:0:7f00:1", "private"),
     ("fec0::1", "private"), ("192.0.0.8", "private")],
)  # fmt: skip
def test_address_kinds(address, kind):
    assert fetch.address_kind(address) == kind


def test_private_opt_in_does_not_open_link_local():
    metadata = fake_dns("169.254.169.254")
    for policy in (FetchPolicy(resolver=metadata), FetchPolicy(resolver=metadata, allow_private=True)):
        with pytest.raises(FetchError, match="link-local addresses .* need --allow-link-local-urls"):
            fetch.resolve("metadata.example", 80, policy, time.monotonic() + 1)
    both = FetchPolicy(resolver=metadata, allow_private=True, allow_link_local=True)
    assert fetch.resolve("metadata.example", 80, both, time.monotonic() + 1) == "169.254.169.254"
    private = FetchPolicy(resolver=fake_dns("10.0.0.1"), allow_private=True)
    assert fetch.resolve("intranet.example", 80, private, time.monotonic() + 1) == "10.0.0.1"
    mixed = FetchPolicy(resolver=fake_dns("8.8.8.8", "10.0.0.1"))  # every address must pass
    with pytest.raises(FetchError, match=r"non-public address \(10.0.0.1\)"):
        fetch.resolve("mixed.example", 80, mixed, time.monotonic() + 1)
    with pytest.raises(FetchError, match="multicast addresses are never fetched"):
        policy = FetchPolicy(resolver=fake_dns("224.0.0.1"), allow_private=True)
        fetch.resolve("m.example", 80, policy, time.monotonic() + 1)


def test_one_deadline_covers_dns_and_headers(server):
    def slow_dns(host, port):
        time.sleep(30)
        return ["127.0.0.1"]

    # timing margins of 10x the configured deadline (Shared rules); the remotes take 30 s and 60 s
    t0 = time.monotonic()
    with pytest.raises(FetchError, match="timed out after 0.5 s resolving"):
        fetch_url("http://slow-dns.example/a.png", FetchPolicy(timeout=0.5, resolver=slow_dns))
    assert time.monotonic() - t0 < 5
    t0 = time.monotonic()  # a status line, then one header line a second: the deadline still holds
    with pytest.raises(FetchError, match="timed out after 1 s"):
        fetch_url(server.url + "/drip-headers", FetchPolicy(allow_private=True, timeout=1.0))
    assert time.monotonic() - t0 < 10
    with pytest.raises(FetchError, match="connection closed after 10 of 1,000 bytes"):
        fetch_url(server.url + "/short-body", PRIVATE_OK)


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
    assert time.monotonic() - t0 < 5  # 10x the deadline; the remote takes 20 s
    with pytest.raises(FetchError, match="body exceeds the limit of 1,000,000 bytes"):
        fetch_url(server.url + "/big", FetchPolicy(allow_private=True, max_bytes=1_000_000))
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch_url(server.url + "/notfound", PRIVATE_OK)
    with pytest.raises(FetchError, match="credentials"):
        fetch_url("http://user:pw@127.0.0.1/", PRIVATE_OK)


def test_non_image_body_is_clear_image_error(server):
    with pytest.raises(ImageError, match="/text: not an image in an allowed format"):
        load_image(server.url + "/text", DecodePolicy(fetch=PRIVATE_OK))


def test_malformed_and_non_ascii_urls(server):
    with pytest.raises(FetchError, match="malformed URL"):
        fetch_url("http://[::1/x.png")
    with pytest.raises(ImageError, match="malformed URL"):
        load_image("http://[::1/x.png")
    assert fetch_url(server.url + "/img café é.png", PRIVATE_OK) == png_bytes()  # percent-encoded on the wire


def test_untrusted_callers_do_not_learn_internal_addresses():
    policy = FetchPolicy(resolver=fake_dns("10.1.2.3"), hide_addresses=True)
    with pytest.raises(FetchError) as refused:
        fetch.resolve("intranet.example", 80, policy, time.monotonic() + 1)
    assert "10.1.2.3" not in str(refused.value) and "non-public address" in str(refused.value)
