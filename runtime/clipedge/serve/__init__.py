"""The real-time HTTP endpoint (needs the `serve` extra: fastapi, uvicorn, prometheus-client). Names load on
first use: `clipedge.serve.config` (ServeConfig, Limits) needs no web framework."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_attributes

if TYPE_CHECKING:
    from .app import create_app, create_guarded_app
    from .config import Limits, ServeConfig
    from .errors import ApiError
    from .runner import run_server

_WHERE = {
    "ApiError": ".errors",
    "Limits": ".config",
    "ServeConfig": ".config",
    "create_app": ".app",
    "create_guarded_app": ".app",
    "run_server": ".runner",
}
__all__ = ["ApiError", "Limits", "ServeConfig", "create_app", "create_guarded_app", "run_server"]

__getattr__ = lazy_attributes(__name__, _WHERE)
