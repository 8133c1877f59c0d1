"""The label request and its rules: what every entry point (the Python API, the CLI, batch, the endpoint,
packs, calibration) asks for, and the one place that decides how it is answered.

A request names labels, or brings label embeddings (a file from `clipedge labels build` or `calibrate`), with
templates and a multi-label flag. A classifier may carry fixed labels: an edge pack's own, or a label file
given as a load option. Embeddings brought with a request play the part of the fixed labels for it. The
rules, each with one message:

- no names and no embeddings, on a model without fixed labels: refused (NO_LABELS);
- no names: all the embeddings' labels; names: those labels, in that order, taken from the embeddings when
  all of them are there under the same templates, else embedded with the text tower;
- templates default to the embeddings' own (else the bare label); other templates apply only to labels
  given by name on a model with a text tower, and never to calibrated multi-label scores (OTHER_TEMPLATES);
- a name the embeddings lack, where it cannot be embedded (an edge pack; multi-label scoring): refused,
  naming its position (`unknown_label`);
- multi-label scoring needs embeddings with calibrated thresholds (NEEDS_THRESHOLDS);
- what needs the text tower, asked of an edge pack: refused (`no_text_tower`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .bundle import Bundle, BundleError
from .labels import LabelEmbeddings, LabelError, check_labels, parse_labels
from .templates import TemplateError, resolve_templates

NO_LABELS = (
    "no labels given, and this model has none of its own (an edge pack's, or label embeddings loaded with it): "
    "name the labels or give label embeddings"
)
NEEDS_THRESHOLDS = (
    "multi-label scoring needs calibrated thresholds: label embeddings from `clipedge calibrate` "
    "(--label-embeddings FILE), or an edge pack made with them"
)
OTHER_TEMPLATES = (
    "templates other than the label embeddings' own ({own}) apply only to labels given by name, on a model with a "
    "text tower (a full bundle, not an edge pack), and never to calibrated multi-label scores"
)


class NoTextTowerError(LabelError):
    """What needs the text tower (new labels, text embeddings) asked of an edge pack."""


class NoLabelsError(LabelError):
    """No labels given, and the model has none of its own (NO_LABELS)."""


@dataclass(frozen=True)
class LabelRequest:
    """What labels to score against.

    names: label texts, in the order results give them (None: all of the embeddings' labels);
    embeddings: label embeddings brought with the request (loaded, or an .npz path), in place of the
        classifier's fixed labels;
    templates: None (the embeddings' own, else the bare label), a template with one "{}", a list of them, or
        a named set ("openai-imagenet");
    multi_label: score each label on its own against its calibrated threshold.
    """

    names: tuple[str, ...] | None = None
    embeddings: LabelEmbeddings | str | None = None
    templates: str | tuple[str, ...] | None = None
    multi_label: bool = False

    @classmethod
    def of(
        cls,
        labels: Any = None,
        templates: str | Sequence[str] | None = None,
        multi_label: bool = False,
    ) -> LabelRequest:
        """A request from the forms the Python API takes: label names (a list, or one comma-separated string
        as Azure's contract reads them), LabelEmbeddings, an .npz path (a `pathlib.Path`), or None."""
        if isinstance(labels, LabelRequest):
            return labels
        tpl = templates if templates is None or isinstance(templates, str) else tuple(templates)
        if labels is None:
            return cls(None, None, tpl, multi_label)
        if isinstance(labels, LabelEmbeddings | Path):
            return cls(None, labels if isinstance(labels, LabelEmbeddings) else str(labels), tpl, multi_label)
        names = parse_labels(labels) if isinstance(labels, str) else list(labels)
        return cls(tuple(names), None, tpl, multi_label)


@dataclass(frozen=True)
class LabelPlan:
    """How a request is answered: `ready` embeddings, or `names` to embed under `templates`."""

    ready: LabelEmbeddings | None = None
    names: tuple[str, ...] = ()
    templates: tuple[str, ...] = ()


def plan_labels(request: LabelRequest, given: LabelEmbeddings | None, text_tower: bool) -> LabelPlan:
    """Apply the rules (module docstring) to a request, with `given` the embeddings in play (the request's,
    else the classifier's fixed labels) and whether the model has a text tower.

    Raises:
        LabelError: no labels, a bad label, a name the embeddings lack where it cannot be embedded,
            multi-label without thresholds.
        NoTextTowerError: new labels asked of an edge pack.
        TemplateError: a bad template, or other templates where they cannot apply.
    """
    names = None if request.names is None else tuple(check_labels(request.names))
    if given is None:
        if request.multi_label:
            raise LabelError(NEEDS_THRESHOLDS)
        if names is None:
            raise NoLabelsError(NO_LABELS)
        if not text_tower:
            raise NoTextTowerError("this model has no text tower: new labels need a full bundle")
        return LabelPlan(None, names, resolve_templates(request.templates))
    own = given.templates
    templates = own if request.templates is None else resolve_templates(request.templates)
    if request.multi_label and given.thresholds is None:
        raise LabelError(NEEDS_THRESHOLDS)
    if templates != own and (names is None or request.multi_label or not text_tower):
        raise TemplateError(OTHER_TEMPLATES.format(own=_first(own)))
    if templates == own:
        if names is None:
            return LabelPlan(given)
        known = set(given.labels)
        missing = next((i for i, n in enumerate(names) if n not in known), None)
        if missing is None:
            return LabelPlan(given.subset(names))
        if not text_tower:
            raise NoTextTowerError(
                unknown_label(given, missing, "this model is an edge pack (no text tower); new labels need the "
                              "full bundle it was made from")
            )  # fmt: skip
        if request.multi_label:
            raise LabelError(unknown_label(given, missing, "multi-label scoring takes only calibrated labels"))
    assert names is not None
    return LabelPlan(None, names, templates)


def check_distinct(token_ids: np.ndarray) -> None:
    """Labels whose prompts give the same token ids (one row each, padded alike) would get the same
    embedding: refused, naming the first two by position.

    Raises:
        LabelError: two rows are equal.
    """
    first: dict[bytes, int] = {}
    for i, row in enumerate(np.ascontiguousarray(token_ids)):
        j = first.setdefault(row.tobytes(), i)
        if j != i:
            raise LabelError(
                f"labels {j} and {i} give the same tokens (the tokenizer ignores case, and a prompt is cut at "
                f"{token_ids.shape[1]} tokens): they would get the same embedding; make them differ earlier"
            )


def check_nameable(labels: Sequence[str]) -> None:
    """Labels that Azure's /score and /classify can name (they split labels on commas): an edge pack's labels
    are its only ones, so one with a comma could never be asked for there.

    Raises:
        LabelError: a label holds a comma (named by position).
    """
    for i, label in enumerate(labels):
        if "," in label:
            raise LabelError(
                f"label {i} holds a comma: Azure's /score and /classify split labels on commas and could never "
                "name it; use another separator (e.g. ';' or ' or ')"
            )


def unknown_label(given: LabelEmbeddings, position: int, why: str) -> str:
    """A name (at `position`, from 0) the embeddings lack: the message names the first known labels and
    their count, never the request's own text (the endpoint shows it)."""
    known = ", ".join(repr(x) for x in given.labels[:5]) + (", ..." if len(given.labels) > 5 else "")
    return f"label {position} is not one of the {len(given.labels)} fixed labels ({known}): {why}"


def no_text_tower(bundle: Bundle, what: str) -> NoTextTowerError:
    """The error for `what` (e.g. "text embeddings") asked of an edge pack."""
    count = bundle.pack.label_count if bundle.pack is not None else 0
    return NoTextTowerError(  # no path: the endpoint shows this message to its clients
        f"this model is an edge pack (a vision tower and {count} fixed labels, no text tower): "
        f"{what} need the full bundle it was made from"
    )


def load_fixed_labels(bundle: Bundle, label_file: str | None) -> LabelEmbeddings | None:
    """The labels a model carries: a label file given at load (`LoadOptions.label_embeddings`), else an edge
    pack's own, else None. Not yet checked against the classifier (`labels.check_compatible`).

    Raises:
        LabelFileError: the file is missing or malformed. BundleError: a pack whose label count is wrong.
    """
    if label_file:
        return LabelEmbeddings.load(label_file)
    if bundle.pack is None:
        return None
    info = bundle.pack
    labels = LabelEmbeddings.load(bundle.path / info.labels.file, bundle_hash=info.source_bundle_hash)
    if len(labels.labels) != info.label_count:
        raise BundleError(
            f"{bundle.path}: pack.json counts {info.label_count} labels, {info.labels.file} has {len(labels.labels)}"
        )
    return labels


def _first(templates: tuple[str, ...]) -> str:
    return repr(templates[0]) + (f" and {len(templates) - 1} more" if len(templates) > 1 else "")
