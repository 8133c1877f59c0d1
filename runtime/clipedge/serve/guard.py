"""The outermost ASGI layer, before any route:

- request ids, as Azure's inference server: `x-request-id` (the client's when given, printable and at most
  100 characters, else a new UUID) and `x-ms-request-id` (the same), `x-ms-client-request-id` (the
  client's, else the request id), and `x-ms-run-fn-exec-ms` (time in the app, milliseconds);
- the API key (401 before the body is read; `/`, `/health` and `/ready` stay open, as Azure's probes, and
  so does `GET /ui`, a static page with no data that asks for the key itself: see ui.py); the key may be one
  of several (one per client);
- who the client is, for the fair share of work (DESIGN.md, Shared rules): its API key when keys are on,
  else its peer address, or, behind a proxy, the address in a header the operator names and the proxy sets
  (`--client-header`); put in the request's scope as `clipedge.client`;
- the body cap (413, from Content-Length or while streaming, even when a form parser would have turned the
  failure into a 400);
- overload: a JSON request for image work is refused here (503, `Retry-After`, before its body is read)
  when the admitted work is already over the time budget, exactly as `read_json` would refuse it, without
  the cost of FastAPI's layers: under a crowd of retries, each refusal's cost is what the last one waits
  for;
- slow bodies: each part must arrive within `client_timeout` of the previous one, and the body must average
  `min_body_rate` after its first `client_timeout` seconds (408; headers are bounded by
  `clipedge.serve.protocol`);
- per-route request counts and latency for /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any

from .batcher import QueueFull
from .errors import error_bytes

ROUTES = ("/", "/score", "/invocations", "/classify", "/embed/image", "/embed/text", "/health", "/ready", "/metrics")
OPEN_ROUTES = ("/", "/health", "/ready", "/ui")  # probes and the static try-it page; GET/HEAD only (_open)
JSON_IMAGE_ROUTES = ("/", "/score", "/invocations", "/embed/image")  # POST: refused as `read_json` would
REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,100}$")


class BodyTooLarge(Exception):
    pass


class SlowBody(Exception):
    pass


def request_ids(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    """The id headers of a response, as Azure's inference server sets them."""
    request_id = headers.get("x-request-id", "")
    if not REQUEST_ID.match(request_id):
        request_id = str(uuid.uuid4())
    client_id = headers.get("x-ms-client-request-id", "")
    return [
        (b"x-request-id", request_id.encode()),
        (b"x-ms-request-id", request_id.encode()),
        (b"x-ms-client-request-id", (client_id if REQUEST_ID.match(client_id) else request_id).encode()),
    ]


class Exchange:
    """One request through the Guard: a receive that enforces the body limits, a send that adds the id
    headers and, once the body was cut off, drops whatever the app still answers."""

    def __init__(self, guard: Guard, scope: dict, receive: Any, send: Any):
        self.guard, self.scope, self._receive, self._send = guard, scope, receive, send
        self.path = scope.get("path", "")
        self.headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        self.ids = request_ids(self.headers)
        self.start = time.perf_counter()
        self.status, self.started, self.refused = 500, False, 0
        self.received, self.body_done, self.began = 0, False, time.monotonic()

    async def send(self, message: dict) -> None:
        if self.refused:  # the app answers a body we cut off: the Guard answers what really happened
            return
        if message["type"] == "http.response.start":
            elapsed = f"{(time.perf_counter() - self.start) * 1000:.3f}".encode()
            headers = [*message.get("headers", []), *self.ids, (b"x-ms-run-fn-exec-ms", elapsed)]
            message = {**message, "headers": headers}
            self.status, self.started = message["status"], True
        await self._send(message)

    async def receive(self) -> dict:
        if self.body_done:  # e.g. a route waiting for the client to go away: no time limit
            return await self._receive()
        g = self.guard
        try:
            message = await asyncio.wait_for(self._receive(), g.timeout)
        except asyncio.TimeoutError:
            self.refused = 408
            raise SlowBody from None
        if message["type"] != "http.request" or not message.get("more_body"):
            self.body_done = True
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > g.max_body:
                self.refused = 413
                raise BodyTooLarge
            elapsed = time.monotonic() - self.began
            too_slow = elapsed > g.timeout and self.received / elapsed < g.min_rate
            if not self.body_done and (too_slow or elapsed > g.max_seconds):
                self.refused = 408
                raise SlowBody
        return message

    async def reply(self, status: int, code: str, message: str, extra: dict[str, str] | None = None) -> None:
        body = error_bytes(self.path, status, code, message)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
        self.refused = 0
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})


CLIENT = "clipedge.client"  # the scope key of the client's identity


def client_of(scope: Mapping[str, Any]) -> str:
    """The identity the Guard gave a request's client ("" when it did not run)."""
    return str(scope.get(CLIENT, ""))


def api_keys(value: str | None) -> tuple[str, ...]:
    """The keys an API-key setting holds: one, or several separated by commas or spaces (one per client)."""
    return tuple(k for k in (value or "").replace(",", " ").split() if k)


class Guard:
    def __init__(self, app: Any, state: Any):
        config = state.config
        self.app, self.clipedge = app, state
        self.api_keys = api_keys(config.api_key)
        self.client_header = (config.client_header or "").lower()
        self.max_body, self.timeout, self.min_rate = config.max_body_bytes, config.client_timeout, config.min_body_rate
        self.max_seconds = config.max_body_seconds

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        x = Exchange(self, scope, receive, send)
        try:
            await self._handle(x)
        finally:
            m = self.clipedge.metrics
            route = x.path if x.path in ROUTES else "other"
            m.requests.labels(route, str(x.status)).inc()
            m.latency.labels(route).observe(time.perf_counter() - x.start)

    async def _handle(self, x: Exchange) -> None:
        key = self._key(x.headers) if self.api_keys else None
        if self.api_keys and not self._open(x.path, x.scope) and key is None:
            # connection: close on every reply before the body is read: the body is never drained for nothing
            extra = {"www-authenticate": "Bearer", "connection": "close"}
            await x.reply(401, "unauthorized", "missing or wrong API key", extra)
            return
        x.scope[CLIENT] = client = self._client(x, key)
        length = x.headers.get("content-length")
        if length and length.isdigit() and int(length) > self.max_body:
            await x.reply(413, "body_too_large", self._too_large(), {"connection": "close"})
            return
        admission = self.clipedge.admission
        if (
            self.clipedge.ready
            and admission is not None
            and x.path in JSON_IMAGE_ROUTES
            and x.scope.get("method") == "POST"
        ):
            try:
                admission.check(client)
            except QueueFull as e:
                await x.reply(
                    503, "queue_full", e.public_message(), {"retry-after": str(e.retry_after), "connection": "close"}
                )
                return
        with contextlib.suppress(BodyTooLarge, SlowBody):
            await self.app(x.scope, x.receive, x.send)
        if x.refused == 413 and not x.started:
            await x.reply(413, "body_too_large", self._too_large(), {"connection": "close"})
        elif x.refused == 408 and not x.started:
            gap, rate = f"{self.timeout:g} s", f"{self.min_rate:,.0f} bytes/s"
            message = f"request body arrived too slowly (a gap over {gap}, or under {rate})"
            await x.reply(408, "request_timeout", message, {"connection": "close"})

    def _too_large(self) -> str:
        return f"request body exceeds {self.max_body:,} bytes"

    @staticmethod
    def _open(path: str, scope: dict) -> bool:
        return path in OPEN_ROUTES and scope.get("method") in ("GET", "HEAD")

    def _key(self, headers: dict[str, str]) -> int | None:
        """The position of the API key the request holds, or None (every key compared: no timing hint)."""
        given = headers.get("x-api-key") or ""
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = given or auth[7:].strip()
        found = None
        for i, key in enumerate(self.api_keys):
            if hmac.compare_digest(given.encode(), key.encode()) and given:
                found = i
        return found

    def _client(self, x: Exchange, key: int | None) -> str:
        if key is not None:
            return f"key {key}"
        if self.client_header:
            forwarded = x.headers.get(self.client_header, "").split(",")[0].strip()
            if forwarded:
                return forwarded[:100]
        peer = x.scope.get("client")
        return str(peer[0]) if peer else ""
