"""The Azure ML model-catalog contract for zero-shot image classification, as pure functions.

Request: {"input_data": {"columns": ["image", "text"], "index": [0, 1], "data": [["<url or base64>",
"label1, label2"], ["<url or base64>"]]}} (pandas "split" orientation; columns in any order; index
optional). Labels come from the first row's text: split on commas, stripped, empties dropped; other rows'
text is ignored. Answer: one {"probs": [...], "labels": [...]} per row, in row order.
Every problem is an ApiError naming the row (0-based position in `data`) and never echoing the payload.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..templates import parse_labels


class ApiError(Exception):
    """A client error: HTTP status, machine-readable code, message, and the row it concerns (or None)."""

    def __init__(self, status: int, code: str, message: str, row: int | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.row = status, code, message, row

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "row": self.row}}


@dataclass(frozen=True)
class Limits:
    max_images: int = 64
    max_labels: int = 1000
    max_label_chars: int = 300
    max_image_chars: int = 16 * 1024 * 1024  # one base64 string or URL


@dataclass(frozen=True)
class ScoreRequest:
    images: list[str]
    labels: list[str]


def parse_score_request(payload: Any, limits: Limits) -> ScoreRequest:
    """Validate an Azure /score body; raises ApiError (400) naming the field or row."""
    if not isinstance(payload, dict) or "input_data" not in payload:
        raise ApiError(400, "invalid_input", 'request body must be a JSON object with an "input_data" field')
    data = payload["input_data"]
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_input", '"input_data" must be an object with "columns" and "data" (pandas split)')
    columns, rows = data.get("columns"), data.get("data")
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise ApiError(400, "invalid_input", '"input_data.columns" must be a list of column names')
    if "image" not in columns:
        raise ApiError(400, "invalid_input", '"input_data.columns" must include "image"')
    if not isinstance(rows, list) or not rows:
        raise ApiError(400, "invalid_input", '"input_data.data" must be a non-empty list of rows')
    if len(rows) > limits.max_images:
        raise ApiError(400, "too_many_images", f"{len(rows)} images in one request; the limit is {limits.max_images}")
    index = data.get("index")
    if index is not None and (not isinstance(index, list) or len(index) != len(rows)):
        raise ApiError(400, "invalid_input", '"input_data.index" must list one entry per row when given')
    img_col = columns.index("image")
    text_col = columns.index("text") if "text" in columns else None
    images: list[str] = []
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            raise ApiError(400, "invalid_input", "each row of input_data.data must be a list", row=i)
        value = row[img_col] if img_col < len(row) else None
        if not isinstance(value, str) or not value.strip():
            raise ApiError(400, "invalid_image", "row has no image (expected a base64 string or an http(s) URL)", row=i)
        if len(value) > limits.max_image_chars:
            raise ApiError(
                400,
                "invalid_image",
                f"image string of {len(value):,} characters exceeds {limits.max_image_chars:,}",
                row=i,
            )
        images.append(value)
    first = rows[0]
    text = first[text_col] if text_col is not None and text_col < len(first) else None
    if not isinstance(text, str):
        raise ApiError(
            400,
            "invalid_labels",
            'The provided labels cannot be parsed: the first row needs a "text" value with comma-separated labels',
            row=0,
        )
    labels = parse_labels(text)
    check_labels(labels, limits, row=0)
    return ScoreRequest(images, labels)


def check_labels(labels: list[str], limits: Limits, row: int | None = None) -> None:
    if not labels:
        raise ApiError(
            400, "invalid_labels", "The provided labels cannot be parsed: no labels after splitting on commas", row
        )
    if len(labels) > limits.max_labels:
        raise ApiError(400, "too_many_labels", f"{len(labels)} labels; the limit is {limits.max_labels}", row)
    long = next((label for label in labels if len(label) > limits.max_label_chars), None)
    if long is not None:
        raise ApiError(
            400,
            "label_too_long",
            f"a label of {len(long)} characters exceeds the limit of {limits.max_label_chars}",
            row,
        )


def score_response(labels: list[str], probs: Any) -> list[dict[str, Any]]:
    """One {"probs", "labels"} per row, labels in the given order."""
    return [{"probs": [float(p) for p in row], "labels": list(labels)} for row in probs]
