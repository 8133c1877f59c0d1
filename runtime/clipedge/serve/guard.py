"""The outermost ASGI layer, before any route:

- request ids, as Azure's inference server: `x-request-id` (the client's when given, printable and at most
  100 characters, else a new UUID) and `x-ms-request-id` (the same), `x-ms-client-request-id` (the
  client's, else the request id), and `x-ms-run-fn-exec-ms` (time in the app, milliseconds);
- the API key (401 before the body is read; `/`, `/health` and `/ready` stay open, as Azure's probes);
- the body cap (413, from Content-Length or while streaming, even when a form parser would have turned the
  failure into a 400);
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
from typing import Any

from .errors import error_bytes

ROUTES = ("/", "/score", "/invocations", "/classify", "/embed/image", "/embed/text", "/health", "/ready", "/metrics")
OPEN_ROUTES = ("/", "/health", "/ready")  # probes answer without the key (POST / needs it: see _open)
REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,100}$")


class BodyTooLarge(Exception):
    pass


class SlowBody(Exception):
    pass


class Guard:
    def __init__(self, app: Any, state: Any):
        config = state.config
        self.app, self.clipedge, self.api_key = app, state, config.api_key
        self.max_body, self.timeout, self.min_rate = config.max_body_bytes, config.client_timeout, config.min_body_rate

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        route = path if path in ROUTES else "other"
        start = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        request_id = headers.get("x-request-id", "")
        if not REQUEST_ID.match(request_id):
            request_id = str(uuid.uuid4())
        client_id = headers.get("x-ms-client-request-id", "")
        ids = [
            (b"x-request-id", request_id.encode()),
            (b"x-ms-request-id", request_id.encode()),
            (b"x-ms-client-request-id", (client_id if REQUEST_ID.match(client_id) else request_id).encode()),
        ]
        status = {"code": 500, "started": False}
        refused = {"status": 0}

        async def tracked_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                if refused["status"]:  # the app answered a body we cut off: answer what really happened
                    return
                elapsed = f"{(time.perf_counter() - start) * 1000:.3f}".encode()
                message = {**message, "headers": [*message.get("headers", []), *ids, (b"x-ms-run-fn-exec-ms", elapsed)]}
                status["code"], status["started"] = message["status"], True
            elif refused["status"]:
                return
            await send(message)

        try:
            if self.api_key and not self._open(path, scope) and not self._authorised(headers):
                extra = {"www-authenticate": "Bearer"}
                await self._reply(tracked_send, path, 401, "unauthorized", "missing or wrong API key", extra)
                return
            length = headers.get("content-length")
            if length and length.isdigit() and int(length) > self.max_body:
                await self._reply(tracked_send, path, 413, "body_too_large", self._too_large())
                return
            received, body_done = 0, False
            began = time.monotonic()

            async def guarded_receive() -> dict:
                nonlocal received, body_done
                if body_done:  # e.g. a route waiting for the client to go away: no time limit
                    return await receive()
                try:
                    message = await asyncio.wait_for(receive(), self.timeout)
                except asyncio.TimeoutError:
                    refused["status"] = 408
                    raise SlowBody from None
                if message["type"] != "http.request" or not message.get("more_body"):
                    body_done = True
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > self.max_body:
                        refused["status"] = 413
                        raise BodyTooLarge
                    elapsed = time.monotonic() - began
                    if not body_done and elapsed > self.timeout and received / elapsed < self.min_rate:
                        refused["status"] = 408
                        raise SlowBody
                return message

            with contextlib.suppress(BodyTooLarge, SlowBody):
                await self.app(scope, guarded_receive, tracked_send)
            if refused["status"] and not status["started"]:
                code = refused["status"]
                refused["status"] = 0
                if code == 413:
                    await self._reply(tracked_send, path, 413, "body_too_large", self._too_large())
                else:
                    message = (
                        f"request body arrived too slowly (a gap over {self.timeout:g} s, or under "
                        f"{self.min_rate:,.0f} bytes/s)"
                    )
                    await self._reply(tracked_send, path, 408, "request_timeout", message, {"connection": "close"})
        finally:
            m = self.clipedge.metrics
            m.requests.labels(route, str(status["code"])).inc()
            m.latency.labels(route).observe(time.perf_counter() - start)

    def _too_large(self) -> str:
        return f"request body exceeds {self.max_body:,} bytes"

    @staticmethod
    def _open(path: str, scope: dict) -> bool:
        return path in OPEN_ROUTES and scope.get("method") in ("GET", "HEAD")

    def _authorised(self, headers: dict[str, str]) -> bool:
        given = headers.get("x-api-key") or ""
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = given or auth[7:].strip()
        return bool(given) and hmac.compare_digest(given.encode(), self.api_key.encode())  # type: ignore[union-attr]

    @staticmethod
    async def _reply(
        send: Any, path: str, status: int, code: str, message: str, extra: dict[str, str] | None = None
    ) -> None:
        body = error_bytes(path, status, code, message)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
