"""uvicorn, run the way the endpoint needs:

- a graceful drain: on SIGTERM/SIGINT /ready turns 503 at once, in-flight requests finish, then the
  process exits with status 0 (uvicorn stops accepting connections and waits up to `drain_seconds`);
- a model that cannot load stops the server: exit status 1 with a one-line reason (no idling "loading");
- request heads within `client_timeout` (clipedge.serve.protocol);
- freed memory returned to the system (glibc keeps large freed blocks otherwise: after eight 49-megapixel
  decodes the process stayed at 1.1 GB); the decoding processes do the same.
"""

from __future__ import annotations

import logging

import uvicorn

from ..decoders import return_freed_memory
from .app import create_guarded_app
from .config import DRAIN_SECONDS, HOST, PORT, ServeConfig
from .protocol import protocol_class

log = logging.getLogger("clipedge.serve")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state):
        super().__init__(config)
        self.clipedge_state = state

    def handle_exit(self, sig, frame) -> None:
        self.clipedge_state.draining = True
        super().handle_exit(sig, frame)
        # uvicorn re-raises the signal after its shutdown (exit status -15); a completed drain exits 0 instead
        self._captured_signals.clear()


def run_server(
    config: ServeConfig, host: str = HOST, port: int = PORT, drain_seconds: float = DRAIN_SECONDS
) -> str | None:
    """Serve until stopped. Returns None after a drain, or the one-line reason the model failed to load
    (the server stops at once then; `clipedge serve` exits with status 1)."""
    return_freed_memory()
    app = create_guarded_app(config)
    state = app.state.clipedge
    uv = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="info",
        timeout_graceful_shutdown=drain_seconds,  # type: ignore[arg-type]  # uvicorn's stub says int; it waits a float
        limit_concurrency=None,
        server_header=False,
        http=protocol_class(config.client_timeout),
    )
    server = DrainingServer(uv, state)

    def stop() -> None:
        server.should_exit = True

    state.on_load_failed = stop
    server.run()
    return state.load_error
