"""The real-time HTTP endpoint (needs the `serve` extra: fastapi, uvicorn, prometheus-client)."""

from .app import create_app, create_guarded_app
from .contract import Limits
from .errors import ApiError
from .runner import run_server
from .state import ServeConfig

__all__ = ["ApiError", "Limits", "ServeConfig", "create_app", "create_guarded_app", "run_server"]
