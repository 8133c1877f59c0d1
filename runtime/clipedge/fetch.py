"""Fetching image URLs without becoming an SSRF hole (standard library only).

- http and https only; no credentials in the URL.
- The host is resolved once and every address must be global. Loopback, private, CGNAT, reserved and
  unspecified addresses need `allow_private`; link-local addresses (169.254.169.254, the cloud metadata
  service, and fe80::/10) need `allow_link_local` as well, whatever `allow_private` says; multicast is never
  fetched. IPv6 forms that embed an IPv4 address (IPv4-mapped ::ffff:a.b.c.d, IPv4-compatible ::a.b.c.d,
  NAT64 64:ff9b::/96, 6to4 2002::/16) are judged by the IPv4 address inside.
- The connection goes to the address that was checked (no second DNS lookup to rebind), and each redirect
  hop is checked again (at most `max_redirects`).
- One deadline covers DNS, connect, TLS, headers and body: a watchdog shuts the socket down when it
  passes, so a remote that drips one header line a second cannot hold a fetch past it.
- The body is capped while streaming.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

REDIRECTS = (301, 302, 303, 307, 308)
URL_SAFE = "/%:@!$&'()*+,;=-._~?"  # kept as they are; spaces and non-ASCII characters are percent-encoded
NAT64 = ipaddress.ip_network("64:ff9b::/96")
NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215: the IPv4 address is in the last 32 bits
IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # RFC 2765's IPv4-translated form
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
# Not global whatever the Python version's tables say (IANA special-purpose registries), and the cloud
# metadata addresses outside 169.254.0.0/16, which count as link-local here.
NOT_GLOBAL = [ipaddress.ip_network(n) for n in ("192.0.0.0/24", "fec0::/10", "100::/64", "2001:db8::/32")]
METADATA = [ipaddress.ip_address(a) for a in ("fd00:ec2::254", "192.0.0.192")]
Resolver = Callable[[str, int], list[str]]


@dataclass(frozen=True)
class FetchPolicy:
    allow_private: bool = False
    allow_link_local: bool = False
    timeout: float = 5.0
    max_bytes: int = 20 * 1024 * 1024
    max_redirects: int = 5
    user_agent: str = "clipedge"
    resolver: Resolver | None = None  # (host, port) -> addresses; None: the system resolver (tests fake it)
    hide_addresses: bool = False  # untrusted callers: refusals do not tell which internal address a name has


class FetchError(Exception):
    """A URL that was refused or could not be fetched; the message says why (no body echoed)."""


def embedded_ipv4(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside an IPv6 address that carries one (mapped, compatible, NAT64, 6to4)."""
    if isinstance(addr, ipaddress.IPv4Address):
        return None
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr in NAT64 or addr in NAT64_LOCAL or addr in IPV4_TRANSLATED or (addr in IPV4_COMPATIBLE and int(addr) > 1):
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return addr.sixtofour


def address_kind(ip: str) -> str:
    """ "global", "link-local", "multicast" or "private" (loopback, private, CGNAT, reserved, unspecified)."""
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(ip.split("%", 1)[0])
    addr = embedded_ipv4(addr) or addr
    if addr.is_multicast:
        return "multicast"
    if addr.is_link_local or addr in METADATA:
        return "link-local"
    if any(addr in net for net in NOT_GLOBAL if net.version == addr.version):
        return "private"
    return "global" if addr.is_global else "private"


def check_address(ip: str, policy: FetchPolicy) -> None:
    """Raises FetchError when the policy does not allow connecting to `ip`."""
    kind = address_kind(ip)
    if kind == "global":
        return
    if kind == "private" and policy.allow_private:
        return
    if kind == "link-local" and policy.allow_link_local:
        return
    why = {
        "private": "private, loopback and reserved addresses need --allow-private-urls",
        "link-local": "link-local addresses such as the metadata service need --allow-link-local-urls",
        "multicast": "multicast addresses are never fetched",
    }[kind]
    shown = "" if policy.hide_addresses else f" ({ip})"
    raise FetchError(f"host resolves to a non-public address{shown}; refused ({why})")


def _system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def resolve(host: str, port: int, policy: FetchPolicy, deadline: float) -> str:
    """Resolve once, within the deadline; every address must pass `check_address`. Returns the one to use."""
    resolver = policy.resolver or _system_resolver
    box: dict[str, Any] = {}

    def lookup() -> None:
        try:
            box["addresses"] = resolver(host, port)
        except Exception as e:
            box["error"] = e

    worker = threading.Thread(target=lookup, daemon=True, name="clipedge-dns")
    worker.start()
    worker.join(max(0.0, deadline - time.monotonic()))
    if worker.is_alive():
        raise FetchError(f"timed out after {policy.timeout:g} s resolving the host")
    if "error" in box:
        error = box["error"]
        reason = getattr(error, "strerror", None) or type(error).__name__
        raise FetchError(f"cannot resolve host ({reason})")
    addresses = list(box.get("addresses") or [])
    if not addresses:
        raise FetchError("cannot resolve host")
    for a in addresses:
        check_address(a, policy)
    return addresses[0]


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, ip: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._ip = ip

    def connect(self) -> None:
        self.sock = socket.create_connection((self._ip, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, ip: str, timeout: float):
        self._ssl = ssl.create_default_context()
        super().__init__(host, port, timeout=timeout, context=self._ssl)
        self._ip = ip

    def connect(self) -> None:
        self.sock = sock = socket.create_connection((self._ip, self.port), self.timeout)  # the watchdog sees it
        self.sock = self._ssl.wrap_socket(sock, server_hostname=self.host)


class _Watchdog:
    """Shuts a connection's socket down at the deadline, whatever the connection is waiting for."""

    def __init__(self, conn: http.client.HTTPConnection, seconds: float):
        self.conn, self.fired = conn, False
        self._timer = threading.Timer(max(0.0, seconds), self._fire)
        self._timer.daemon = True

    def _fire(self) -> None:
        self.fired = True
        sock = self.conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


def fetch_url(url: str, policy: FetchPolicy | None = None, deadline: float | None = None) -> bytes:
    """GET `url` under `policy`, within `policy.timeout` (or by the monotonic `deadline` when given, e.g.
    one deadline for every image of a request).

    Returns:
        The body.

    Raises:
        FetchError: refused, failed, timed out or too large; the message never includes the body.
    """
    policy = policy or FetchPolicy()
    deadline = deadline if deadline is not None else time.monotonic() + policy.timeout
    for _ in range(policy.max_redirects + 1):
        try:
            parts = urlsplit(url)
        except ValueError:
            raise FetchError("malformed URL") from None
        if parts.scheme not in ("http", "https"):
            raise FetchError(f"URL scheme {parts.scheme!r} is not allowed (http and https only)")
        if not parts.hostname:
            raise FetchError("URL has no host")
        if parts.username or parts.password:
            raise FetchError("URLs with credentials are not fetched")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise FetchError("URL has an invalid port") from None
        ip = resolve(parts.hostname, port, policy, deadline)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FetchError(f"timed out after {policy.timeout:g} s")
        conn_cls = _PinnedHTTPS if parts.scheme == "https" else _PinnedHTTP
        conn = conn_cls(parts.hostname, port, ip, remaining)
        watchdog = _Watchdog(conn, remaining)
        try:
            with watchdog:
                result = _get(conn, parts, policy, deadline)
            if watchdog.fired:
                raise TimeoutError
        except FetchError:
            if watchdog.fired:
                raise FetchError(f"timed out after {policy.timeout:g} s") from None
            raise
        except (OSError, http.client.HTTPException, ValueError) as e:
            if watchdog.fired or isinstance(e, TimeoutError):
                raise FetchError(f"timed out after {policy.timeout:g} s") from None
            if isinstance(e, ssl.SSLError):
                raise FetchError(f"TLS error ({e.reason or e})") from None
            raise FetchError(f"connection failed ({type(e).__name__})") from None
        finally:
            conn.close()
        if isinstance(result, bytes):
            return result
        try:
            url = urljoin(url, result)
        except ValueError:
            raise FetchError("malformed redirect Location") from None
    raise FetchError(f"more than {policy.max_redirects} redirects")


def _get(conn: http.client.HTTPConnection, parts, policy: FetchPolicy, deadline: float) -> bytes | str:
    """One hop: the body (bytes) or the redirect's Location (str)."""
    path = quote(parts.path or "/", safe=URL_SAFE) + (f"?{quote(parts.query, safe=URL_SAFE)}" if parts.query else "")
    conn.request("GET", path, headers={"User-Agent": policy.user_agent, "Accept": "image/*"})
    resp = conn.getresponse()
    if resp.status in REDIRECTS:
        location = resp.getheader("Location")
        if not location:
            raise FetchError(f"HTTP {resp.status} redirect without a Location")
        return location
    if resp.status != 200:
        raise FetchError(f"HTTP {resp.status} {resp.reason[:60]}".strip())
    length = resp.getheader("Content-Length")
    if length and length.isdigit() and int(length) > policy.max_bytes:
        raise FetchError(f"body of {int(length):,} bytes exceeds the limit of {policy.max_bytes:,}")
    chunks: list[bytes] = []
    total = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        if conn.sock is not None:
            conn.sock.settimeout(remaining)
        chunk = resp.read1(65536)
        if not chunk:
            if length and length.isdigit() and total < int(length):
                raise FetchError(f"connection closed after {total:,} of {int(length):,} bytes")
            return b"".join(chunks)
        total += len(chunk)
        if total > policy.max_bytes:
            raise FetchError(f"body exceeds the limit of {policy.max_bytes:,} bytes")
        chunks.append(chunk)
