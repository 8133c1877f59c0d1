"""uvicorn's h11 protocol with a deadline for request heads: a connection must deliver a complete request
line and headers within `header_timeout` seconds of opening, or of the first byte of a keep-alive
request, else it gets 408 and is closed. uvicorn itself bounds only the idle time between requests, so a
client dripping one header byte at a time would hold a connection (and its memory) forever."""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .errors import error_bytes


class HeaderTimeoutProtocol(H11Protocol):
    header_timeout: float = 10.0

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._arm()  # a request head has started but is not complete
        else:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _expired(self) -> None:
        self._head_timer = None
        if self.conn.their_state is not h11.IDLE or self.transport.is_closing():
            return
        body = error_bytes(
            "/", 408, "request_timeout", f"request headers not received within {self.header_timeout:g} s"
        )
        head = (
            "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        self.transport.close()


def protocol_class(header_timeout: float) -> type[HeaderTimeoutProtocol]:
    return type("ClipedgeH11Protocol", (HeaderTimeoutProtocol,), {"header_timeout": header_timeout})
