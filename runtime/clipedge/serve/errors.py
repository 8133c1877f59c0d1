"""Error bodies, one rule per route family (DESIGN.md, Shared rules):

- Azure's /score and the native routes: {"message": ..., "error": {"code", "message", "row"}} (Azure's
  inference server answers {"message": ...}; clipedge adds the machine-readable code and the row);
- MLflow's /invocations: {"error_code": ..., "message": ...} as MLflow 2.x's scoring server;
- Hugging Face's POST /: {"error": ...} as Hugging Face's inference toolkit.

Messages never carry a stack trace, the request's own strings beyond their length, or credentials.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

MLFLOW_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHENTICATED",
    404: "ENDPOINT_NOT_FOUND",
    405: "BAD_REQUEST",
    408: "REQUEST_TIMEOUT",
    413: "RESOURCE_EXHAUSTED",
    429: "REQUEST_LIMIT_EXCEEDED",
    503: "TEMPORARILY_UNAVAILABLE",
}


class ApiError(Exception):
    """A client error: HTTP status, machine-readable code, message, and the row it concerns (or None)."""

    def __init__(
        self, status: int, code: str, message: str, row: int | None = None, headers: dict[str, str] | None = None
    ):
        super().__init__(message)
        self.status, self.code, self.message, self.row = status, code, message, row
        self.headers = headers or {}

    def body(self, path: str = "/score") -> dict[str, Any]:
        return error_body(path, self.status, self.code, self.message, self.row)


@contextlib.contextmanager
def rows_named(pattern: str) -> Iterator[None]:
    """Errors about a row get its name in their message (`pattern` with {} for the 0-based position, e.g.
    "record {}" or "inputs[{}]"): MLflow's and Hugging Face's error bodies have no field for the row."""
    try:
        yield
    except ApiError as e:
        if e.row is None:
            raise
        raise ApiError(e.status, e.code, f"{pattern.format(e.row)}: {e.message}", e.row, e.headers) from None


def error_body(path: str, status: int, code: str, message: str, row: int | None = None) -> dict[str, Any]:
    """The error body for a route: MLflow's at /invocations, Hugging Face's at POST /, else Azure's + ours."""
    if path.rstrip("/") == "/invocations":
        if code in ("invalid_json", "invalid_input"):
            mlflow_code = "MALFORMED_REQUEST" if code == "invalid_json" else "BAD_REQUEST"
        elif status == 400:
            mlflow_code = "INVALID_PARAMETER_VALUE"
        else:
            mlflow_code = MLFLOW_CODES.get(status, "INTERNAL_ERROR")
        return {"error_code": mlflow_code, "message": message}
    if path == "/":
        return {"error": message}
    return {"message": message, "error": {"code": code, "message": message, "row": row}}


def error_bytes(path: str, status: int, code: str, message: str, row: int | None = None) -> bytes:
    return json.dumps(error_body(path, status, code, message, row)).encode()
