"""uvicorn's h11 protocol with two bounds uvicorn lacks:

- a deadline for request heads: a connection must deliver a complete request line and headers within
  `header_timeout` seconds of opening, or of the first byte of a keep-alive request, else it gets 408 and is
  closed (uvicorn bounds only the idle time between requests, so a client dripping one header byte at a time
  would hold a connection, and its memory, forever);
- a floor on chunk sizes: every chunk of a chunked body costs the event loop the same, however small (h11
  parses it, uvicorn appends it to the body), so a body sent as a million one-byte chunks held the loop for
  seconds and slowed every other connection. Once a body has had MIN_CHUNKS_CHECKED chunks, they must average
  at least MIN_AVERAGE_CHUNK bytes, else the request gets 400 and the connection is closed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .errors import error_bytes

MIN_CHUNKS_CHECKED = 256  # chunks of one body before their average size is checked
MIN_AVERAGE_CHUNK = 256  # bytes a chunk must average from then on


class HeaderTimeoutProtocol(H11Protocol):
    header_timeout: float = 10.0

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm()
        self._chunks = self._chunk_bytes = 0
        next_event = self.conn.next_event

        def counted() -> Any:  # every event h11 hands uvicorn passes here: chunks of a body are counted
            event = next_event()
            if isinstance(event, h11.Request):
                self._chunks = self._chunk_bytes = 0
            elif isinstance(event, h11.Data):
                self._chunks += 1
                self._chunk_bytes += len(event.data)
                if self._chunks >= MIN_CHUNKS_CHECKED and self._chunk_bytes < MIN_AVERAGE_CHUNK * self._chunks:
                    self._refuse_fine_chunks()
                    return h11.PAUSED  # uvicorn stops reading; the connection is closing
            return event

        self.conn.next_event = counted  # type: ignore[method-assign]  # h11 reads it per event: one connection's

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

    def _refuse_fine_chunks(self) -> None:
        average = self._chunk_bytes / max(1, self._chunks)
        message = (
            f"the request body arrives in chunks of {average:.0f} bytes on average; send it in chunks of at "
            f"least {MIN_AVERAGE_CHUNK} bytes"
        )
        path = str(getattr(self, "scope", {}).get("path", "/score"))  # the error body is the route's kind
        self._close_with(400, "Bad Request", "chunks_too_small", message, path)

    def _close_with(self, status: int, reason: str, code: str, message: str, path: str = "/score") -> None:
        """Answer on the socket itself (the app may still be reading the body) and close the connection."""
        if self.transport.is_closing():
            return
        body = error_bytes(path, status, code, message)
        head = (
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        self.transport.close()

    def _expired(self) -> None:
        self._head_timer = None
        if self.conn.their_state is not h11.IDLE or self.transport.is_closing():
            return
        message = f"request headers not received within {self.header_timeout:g} s"
        self._close_with(408, "Request Timeout", "request_timeout", message, "/")


def protocol_class(header_timeout: float) -> type[HeaderTimeoutProtocol]:
    return type("ClipedgeH11Protocol", (HeaderTimeoutProtocol,), {"header_timeout": header_timeout})
