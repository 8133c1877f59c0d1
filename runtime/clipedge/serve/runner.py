"""uvicorn with a graceful drain: on SIGTERM/SIGINT /ready turns 503 at once, in-flight requests finish,
then the process exits with status 0 (uvicorn stops accepting connections and waits up to
`drain_seconds` for the requests in flight)."""

from __future__ import annotations

import uvicorn

from .app import ServeConfig, create_app


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state):
        super().__init__(config)
        self.clipedge_state = state

    def handle_exit(self, sig, frame) -> None:
        self.clipedge_state.draining = True
        super().handle_exit(sig, frame)
        # uvicorn re-raises the signal after its shutdown (exit status -15); a completed drain exits 0 instead
        self._captured_signals.clear()


def run_server(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000, drain_seconds: float = 30.0) -> None:
    app = create_app(config)
    uv = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="info",
        timeout_graceful_shutdown=drain_seconds,
        limit_concurrency=None,
        server_header=False,
    )
    DrainingServer(uv, app.state).run()
