"""Fetching image URLs without becoming an SSRF hole (standard library only).

http and https only; the host is resolved once and every address must be global (loopback, private,
link-local such as 169.254.169.254, CGNAT, multicast and reserved ranges are refused) unless the policy
allows private addresses; the connection goes to the address that was checked (no second DNS lookup to
rebind); each redirect hop is checked again (at most `max_redirects`); one deadline covers the whole fetch;
the body is capped while streaming.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

REDIRECTS = (301, 302, 303, 307, 308)


@dataclass(frozen=True)
class FetchPolicy:
    allow_private: bool = False
    timeout: float = 5.0
    max_bytes: int = 20 * 1024 * 1024
    max_redirects: int = 5
    user_agent: str = "clipedge"


class FetchError(Exception):
    """A URL that was refused or could not be fetched; the message says why (no body echoed)."""


def _public(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_global and not addr.is_multicast


def resolve(host: str, port: int, allow_private: bool) -> str:
    """Resolve once; every address must pass the check. Returns the address to connect to."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise FetchError(f"cannot resolve host {host!r} ({e.strerror})") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not addresses:
        raise FetchError(f"cannot resolve host {host!r}")
    if not allow_private:
        bad = [a for a in addresses if not _public(a)]
        if bad:
            raise FetchError(
                f"host {host!r} resolves to a non-public address ({bad[0]}); refused "
                "(private, loopback, link-local and reserved addresses are not fetched)"
            )
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
        sock = socket.create_connection((self._ip, self.port), self.timeout)
        self.sock = self._ssl.wrap_socket(sock, server_hostname=self.host)


def fetch_url(url: str, policy: FetchPolicy | None = None) -> bytes:
    """GET `url` under `policy`; returns the body or raises FetchError."""
    policy = policy or FetchPolicy()
    deadline = time.monotonic() + policy.timeout
    for _ in range(policy.max_redirects + 1):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise FetchError(f"URL scheme {parts.scheme!r} is not allowed (http and https only)")
        if not parts.hostname:
            raise FetchError("URL has no host")
        if parts.username or parts.password:
            raise FetchError("URLs with credentials are not fetched")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        ip = resolve(parts.hostname, port, policy.allow_private)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FetchError(f"timed out after {policy.timeout:g} s")
        conn_cls = _PinnedHTTPS if parts.scheme == "https" else _PinnedHTTP
        conn = conn_cls(parts.hostname, port, ip, remaining)
        try:
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            conn.request("GET", path, headers={"User-Agent": policy.user_agent, "Accept": "image/*"})
            resp = conn.getresponse()
            if resp.status in REDIRECTS:
                location = resp.getheader("Location")
                if not location:
                    raise FetchError(f"HTTP {resp.status} redirect without a Location")
                url = urljoin(url, location)
                continue
            if resp.status != 200:
                raise FetchError(f"HTTP {resp.status} {resp.reason}".strip())
            length = resp.getheader("Content-Length")
            if length and length.isdigit() and int(length) > policy.max_bytes:
                raise FetchError(f"body of {int(length):,} bytes exceeds the limit of {policy.max_bytes:,}")
            return _read_capped(conn, resp, policy, deadline)
        except TimeoutError:
            raise FetchError(f"timed out after {policy.timeout:g} s") from None
        except ssl.SSLError as e:
            raise FetchError(f"TLS error ({e.reason or e})") from None
        except (OSError, http.client.HTTPException) as e:
            raise FetchError(f"connection failed ({type(e).__name__}: {e})") from None
        finally:
            conn.close()
    raise FetchError(f"more than {policy.max_redirects} redirects")


def _read_capped(conn: http.client.HTTPConnection, resp, policy: FetchPolicy, deadline: float) -> bytes:
    chunks, total = [], 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FetchError(f"timed out after {policy.timeout:g} s")
        if conn.sock is not None:
            conn.sock.settimeout(remaining)
        chunk = resp.read1(65536) if hasattr(resp, "read1") else resp.read(65536)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > policy.max_bytes:
            raise FetchError(f"body exceeds the limit of {policy.max_bytes:,} bytes")
        chunks.append(chunk)
