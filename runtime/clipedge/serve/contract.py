"""The request contracts the endpoint speaks, as pure functions from a parsed JSON body to a ScoreRequest.

- Azure ML model catalog (/score): {"input_data": {"columns": ["image", "text"], "index": [0, 1], "data":
  [["<url or base64>", "label1, label2"], ["<url or base64>"]]}} (pandas "split" orientation; columns in any
  order; index optional). Labels come from the first row's text: split on commas, stripped, empties
  dropped; other rows' text is ignored. Answer: one {"probs": [...], "labels": [...]} per row, in row order.
- MLflow 2.x scoring (/invocations): {"dataframe_split": {...}} (the same split frame) or
  {"dataframe_records": [{"image": ..., "text": ...}, ...]}, as the model's MLflow flavour on Azure takes
  them; answered {"predictions": [...]} with the same rows.
- Hugging Face's zero-shot-image-classification task (POST /): {"inputs": <image or list of images>,
  "parameters": {"candidate_labels": [...] or "a, b", "hypothesis_template": "..."}}; answered
  [{"label", "score"}] best first (a list of those for a list of images).

Every problem is an ApiError naming the field or row (0-based position) and never echoing the payload.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..labels import LabelError, parse_labels
from ..labels import check_labels as checked
from ..templates import TemplateError, is_utf8, validate_template
from .config import Limits
from .errors import ApiError

HF_DEFAULT_TEMPLATE = "This is a photo of {}."  # transformers' ZeroShotImageClassificationPipeline default


@dataclass(frozen=True)
class ScoreRequest:
    images: list[str]
    labels: list[str]
    template: str | None = None  # None: the server's --template


def parse_json(body: bytes) -> Any:
    """The request body as JSON; 400 for invalid JSON, invalid UTF-8, nesting too deep or numbers too long."""
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "invalid_json", "request body is not valid JSON") from None
    except RecursionError:
        raise ApiError(400, "invalid_json", "request body is nested too deeply") from None
    except ValueError as e:  # int() digit limit of huge integers, and the like
        raise ApiError(400, "invalid_json", f"request body holds a value that cannot be read ({str(e)[:80]})") from None


def parse_score_request(payload: Any, limits: Limits) -> ScoreRequest:
    """Validate an Azure /score body; raises ApiError (400) naming the field or row."""
    if not isinstance(payload, dict) or "input_data" not in payload:
        raise ApiError(400, "invalid_input", 'request body must be a JSON object with an "input_data" field')
    return parse_split(payload["input_data"], limits, '"input_data"')


def parse_split(data: Any, limits: Limits, where: str) -> ScoreRequest:
    """A pandas "split" frame with an image column and, in its first row, the labels."""
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_input", f'{where} must be an object with "columns" and "data" (pandas split)')
    columns, rows = data.get("columns"), data.get("data")
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise ApiError(400, "invalid_input", f"{where}.columns must be a list of column names")
    if "image" not in columns:
        raise ApiError(400, "invalid_input", f'{where}.columns must include "image"')
    if not isinstance(rows, list) or not rows:
        raise ApiError(400, "invalid_input", f"{where}.data must be a non-empty list of rows")
    index = data.get("index")
    if index is not None and (not isinstance(index, list) or len(index) != len(rows)):
        raise ApiError(400, "invalid_input", f"{where}.index must list one entry per row when given")
    img_col = columns.index("image")
    text_col = columns.index("text") if "text" in columns else None
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            raise ApiError(400, "invalid_input", f"each row of {where}.data must be a list", row=i)
    images = [row[img_col] if img_col < len(row) else None for row in rows]
    first = rows[0]
    text = first[text_col] if text_col is not None and text_col < len(first) else None
    return _request(images, text, limits)


def parse_records(records: Any, limits: Limits) -> ScoreRequest:
    """MLflow's "dataframe_records": a list of {"image", "text"} objects; labels from the first record."""
    if not isinstance(records, list) or not records:
        raise ApiError(400, "invalid_input", '"dataframe_records" must be a non-empty list of objects')
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise ApiError(400, "invalid_input", "each record must be an object with an image field", row=i)
    return _request([r.get("image") for r in records], records[0].get("text"), limits)


def parse_mlflow_request(payload: Any, limits: Limits) -> ScoreRequest:
    """An MLflow 2.x /invocations body with dataframe_split or dataframe_records."""
    if isinstance(payload, dict) and "dataframe_split" in payload:
        return parse_split(payload["dataframe_split"], limits, '"dataframe_split"')
    if isinstance(payload, dict) and "dataframe_records" in payload:
        return parse_records(payload["dataframe_records"], limits)
    raise ApiError(
        400,
        "invalid_input",
        'request body must be a JSON object with "dataframe_split" or "dataframe_records" (columns "image" and "text")',
    )


def parse_hf_request(payload: Any, limits: Limits) -> tuple[ScoreRequest, bool]:
    """A Hugging Face task body -> (request, whether "inputs" was a list)."""
    if not isinstance(payload, dict) or "inputs" not in payload:
        raise ApiError(400, "invalid_input", 'request body must be a JSON object with "inputs"')
    inputs = payload["inputs"]
    many = isinstance(inputs, list)
    images = inputs if many else [inputs]
    if not images:
        raise ApiError(400, "invalid_input", '"inputs" is an empty list')
    params = payload.get("parameters") or {}
    if not isinstance(params, dict):
        raise ApiError(400, "invalid_input", '"parameters" must be an object')
    candidates = params.get("candidate_labels")
    if isinstance(candidates, str):
        labels = parse_labels(candidates)
    elif isinstance(candidates, list) and all(isinstance(c, str) for c in candidates):
        labels = [c.strip() for c in candidates if c.strip()]
    else:
        raise ApiError(400, "invalid_labels", '"parameters.candidate_labels" must be a list of strings')
    template = params.get("hypothesis_template") or HF_DEFAULT_TEMPLATE  # null or "" (clients send both): the default
    try:
        validate_template(template, "hypothesis_template")
    except TemplateError as e:
        raise ApiError(400, "invalid_template", str(e)) from None
    check_labels(labels, limits)
    return ScoreRequest(_images(images, limits), labels, template), many


def _request(images: list[Any], text: Any, limits: Limits) -> ScoreRequest:
    checked = _images(images, limits)
    if not isinstance(text, str):
        raise ApiError(
            400,
            "invalid_labels",
            'The provided labels cannot be parsed: the first row needs a "text" value with comma-separated labels',
            row=0,
        )
    labels = parse_labels(text)
    check_labels(labels, limits, row=0)
    return ScoreRequest(checked, labels)


def _images(images: list[Any], limits: Limits) -> list[str]:
    if len(images) > limits.max_images:
        raise ApiError(400, "too_many_images", f"{len(images)} images in one request; the limit is {limits.max_images}")
    for i, value in enumerate(images):
        if not isinstance(value, str) or not value.strip():
            raise ApiError(400, "invalid_image", "row has no image (expected a base64 string or an http(s) URL)", row=i)
        if len(value) > limits.max_image_chars:
            raise ApiError(
                400,
                "invalid_image",
                f"image string of {len(value):,} characters exceeds {limits.max_image_chars:,}",
                row=i,
            )
        if not is_utf8(value):
            raise ApiError(400, "invalid_image", "image string is not valid Unicode text", row=i)
    return images


def check_labels(labels: list[str], limits: Limits, row: int | None = None, what: str = "label") -> None:
    """The server's limits (count, length), then the library's label rules (`clipedge.labels.check_labels`:
    visible, no control character, each once), before any image is looked at."""
    if not labels:
        raise ApiError(
            400, "invalid_labels", "The provided labels cannot be parsed: no labels after splitting on commas", row
        )
    if len(labels) > limits.max_labels:
        raise ApiError(400, "too_many_labels", f"{len(labels)} labels; the limit is {limits.max_labels}", row)
    for i, label in enumerate(labels):
        if len(label) > limits.max_label_chars:
            raise ApiError(
                400,
                "label_too_long",
                f"{what} {i} has {len(label)} characters; the limit is {limits.max_label_chars}",
                row,
            )
    try:
        checked(labels, what, unique=what == "label")
    except LabelError as e:
        raise ApiError(400, "invalid_labels", str(e), row) from None


def score_response(labels: list[str], probs: Any) -> list[dict[str, Any]]:
    """One {"probs", "labels"} per row, labels in the given order."""
    return [{"probs": [float(p) for p in row], "labels": list(labels)} for row in probs]


def hf_response(labels: list[str], probs: Any, many: bool) -> list[Any]:
    """Hugging Face's answer: [{"label", "score"}] best first, one such list per image for a list input."""
    rows = [
        [{"label": label, "score": float(p)} for label, p in sorted(zip(labels, row, strict=True), key=lambda x: -x[1])]
        for row in probs
    ]
    return rows if many else rows[0]
