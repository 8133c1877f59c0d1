"""The outermost ASGI layer: API key (401 before the body is read), body cap (413, from Content-Length or
while streaming), and per-route request counts and latency for /metrics."""

from __future__ import annotations

import hmac
import json
import time
from typing import Any

ROUTES = ("/score", "/classify", "/embed/image", "/embed/text", "/health", "/ready", "/metrics")
OPEN_ROUTES = ("/health", "/ready")  # probes answer without the key


class BodyTooLarge(Exception):
    pass


class Guard:
    def __init__(self, app: Any, state: Any, api_key: str | None, max_body_bytes: int):
        self.app, self.state, self.api_key, self.max_body = app, state, api_key, max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        route = path if path in ROUTES else "other"
        start = time.perf_counter()
        status = {"code": 500, "started": False}

        async def tracked_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
            await send(message)

        try:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            if self.api_key and path not in OPEN_ROUTES and not self._authorised(headers):
                await _reply(
                    tracked_send, 401, "unauthorized", "missing or wrong API key", {"www-authenticate": "Bearer"}
                )
                return
            length = headers.get("content-length")
            if length and length.isdigit() and int(length) > self.max_body:
                await _reply(tracked_send, 413, "body_too_large", f"request body exceeds {self.max_body:,} bytes")
                return
            received = 0

            async def capped_receive() -> dict:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > self.max_body:
                        raise BodyTooLarge
                return message

            try:
                await self.app(scope, capped_receive, tracked_send)
            except BodyTooLarge:
                if not status["started"]:
                    await _reply(tracked_send, 413, "body_too_large", f"request body exceeds {self.max_body:,} bytes")
        finally:
            m = self.state.metrics
            m.requests.labels(route, str(status["code"])).inc()
            m.latency.labels(route).observe(time.perf_counter() - start)

    def _authorised(self, headers: dict[str, str]) -> bool:
        given = headers.get("x-api-key") or ""
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = given or auth[7:].strip()
        return bool(given) and hmac.compare_digest(given.encode(), self.api_key.encode())  # type: ignore[union-attr]


async def _reply(send: Any, status: int, code: str, message: str, extra: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": {"code": code, "message": message, "row": None}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
