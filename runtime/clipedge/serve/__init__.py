"""The real-time HTTP endpoint (needs the `serve` extra: fastapi, uvicorn, prometheus-client)."""

from .app import ServeConfig, create_app
from .contract import ApiError, Limits
from .runner import run_server

__all__ = ["ApiError", "Limits", "ServeConfig", "create_app", "run_server"]
