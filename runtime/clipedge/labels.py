"""Label embeddings: an artefact computed once per (bundle, precision, templates, label), cached, saved.

One text pass per label-template pair, ever: texts are sorted by token length and run in batches padded to
the longest text of the batch; each label's template embeddings are averaged and re-normalised. An LRU
cache keeps single labels, so a new label set that shares labels with an old one only pays for the new ones.
A saved .npz carries the bundle's hash and is refused by any other bundle. It may also carry per-label
thresholds for multi-label scoring (`clipedge calibrate`), keyed to the vision precision they were fitted on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .scoring import l2_normalise
from .templates import fill, is_utf8
from .tokenizer import Tokens

FILE_FORMAT = 1
log = logging.getLogger("clipedge")


class LabelFileError(ValueError):
    """A label-embedding file that is malformed or made for another bundle."""


class LabelError(ValueError):
    """Labels that cannot be used (none, empty, not text); the message names the label's position."""


def parse_labels(text: str) -> list[str]:
    """Labels as Azure's endpoint reads them: split on commas, stripped, empties dropped."""
    return [part.strip() for part in text.split(",") if part.strip()]


def read_labels_file(path: str | Path) -> list[str]:
    """One label per line; blank lines and lines starting with # are skipped.

    Raises:
        LabelError: the file cannot be read, is not UTF-8, or holds no labels.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise LabelError(f"{path}: cannot read labels file ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise LabelError(f"{path}: labels file is not UTF-8 text (byte {e.start})") from None
    labels = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not labels:
        raise LabelError(f"{path}: no labels in the file")
    return labels


def check_labels(labels: Sequence[object], what: str = "label", unique: bool = True) -> list[str]:
    """The labels as a list of UTF-8 strings with something visible and no control character, each given
    once (`unique`; spaces normalised). `what` names them in messages (e.g. "text"); messages name
    positions, never the labels' text (the endpoint shows them).

    Raises:
        LabelError: no labels, or a label that is empty (or invisible), not a string, not valid Unicode,
            holds a control character, or repeats an earlier one.
    """
    items = list(labels)
    if not items:
        raise LabelError(f"no {what}s given: the list is empty")
    out: list[str] = []
    seen: dict[str, int] = {}
    for i, label in enumerate(items):
        if not isinstance(label, str) or not label.strip():
            raise LabelError(f"{what} {i} is empty or not a string")
        if not is_utf8(label):
            raise LabelError(f"{what} {i} is not valid Unicode text (a lone surrogate?)")
        if any(unicodedata.category(c) == "Cc" and not c.isspace() for c in label):
            raise LabelError(f"{what} {i} holds a control character (NUL, escape, ...)")
        if all(c.isspace() or unicodedata.category(c) == "Cf" for c in label):
            raise LabelError(f"{what} {i} has nothing visible (only spaces and zero-width characters)")
        key = " ".join(label.split())
        if unique and key in seen:
            raise LabelError(f"{what}s {seen[key]} and {i} are the same {what}: give each once")
        seen.setdefault(key, i)
        out.append(label)
    return out


@dataclass(frozen=True)
class LabelEmbeddings:
    """Unit text embeddings of labels (templates averaged), made with one bundle and precision."""

    labels: tuple[str, ...]
    templates: tuple[str, ...]
    embeddings: np.ndarray  # float32 [len(labels), D], unit rows
    bundle_hash: str
    precision: str
    # multi-label scoring (clipedge.calibrate): a cosine threshold per label, and how they were fitted
    # ({"vision_precision", "objective", "images", "f1", ...}); None when not calibrated
    thresholds: np.ndarray | None = None
    calibration: dict[str, Any] = field(default_factory=dict)

    def unknown_message(self, position: int) -> str:
        """The message for a requested label (at `position`, from 0) that is not among these: it names the
        first known labels and their count, never the request's own text (the endpoint shows it)."""
        known = ", ".join(repr(x) for x in self.labels[:5]) + (", ..." if len(self.labels) > 5 else "")
        return f"label {position} is not one of the {len(self.labels)} fixed labels ({known})"

    def subset(self, names: Sequence[str]) -> LabelEmbeddings:
        """These embeddings (and thresholds) for `names`, in that order.

        Raises:
            LabelError: a name that is not among these labels (the message names the first known ones).
        """
        index = {label: i for i, label in enumerate(self.labels)}
        unknown = [i for i, n in enumerate(names) if n not in index]
        if unknown:
            raise LabelError(self.unknown_message(unknown[0]))
        rows = [index[n] for n in names]
        thresholds = None if self.thresholds is None else self.thresholds[rows]
        return LabelEmbeddings(
            tuple(names), self.templates, self.embeddings[rows], self.bundle_hash, self.precision, thresholds,
            self.calibration,
        )  # fmt: skip

    def save(self, path: str | Path) -> None:
        """Write an .npz (embeddings + labels, templates, bundle hash, precision).

        Raises:
            OSError: the file cannot be written.
        """
        meta = {
            "format": FILE_FORMAT,
            "bundle_hash": self.bundle_hash,
            "precision": self.precision,
            "labels": list(self.labels),
            "templates": list(self.templates),
            "calibration": self.calibration,
        }
        arrays = {"embeddings": self.embeddings.astype(np.float32), "meta": np.array(json.dumps(meta))}
        if self.thresholds is not None:
            arrays["thresholds"] = np.asarray(self.thresholds, dtype=np.float32)
        with open(path, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as its allow_pickle flag

    @classmethod
    def load(cls, path: str | Path, bundle_hash: str | None = None) -> LabelEmbeddings:
        """Read a file written by `save`.

        Args:
            path: the .npz.
            bundle_hash: when given, the file must have been made with this bundle.

        Returns:
            The label embeddings.

        Raises:
            LabelFileError: missing, malformed, of an unknown format, or made with another bundle.
        """
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                emb = np.asarray(data["embeddings"], dtype=np.float32)
                thresholds = np.asarray(data["thresholds"], dtype=np.float32) if "thresholds" in data else None
        except FileNotFoundError:
            raise LabelFileError(f"{path}: no such label-embedding file") from None
        except (OSError, ValueError, KeyError) as e:
            if "Object arrays" in str(e):  # numpy's own messages advise loading pickles unsafely: never
                raise LabelFileError(
                    f"{path}: holds pickled Python objects, which clipedge never loads (files from `clipedge labels "
                    "build` or `calibrate` hold none)"
                ) from None
            reason = "not an .npz archive" if "allow_pickle" in str(e) else str(e)
            raise LabelFileError(f"{path}: not a clipedge label-embedding file ({reason})") from None
        if meta.get("format") != FILE_FORMAT:
            raise LabelFileError(f"{path}: unsupported label-embedding file format {meta.get('format')!r}")
        if bundle_hash is not None and meta.get("bundle_hash") != bundle_hash:
            raise LabelFileError(
                f"{path}: label embeddings were computed with another bundle "
                f"({str(meta.get('bundle_hash'))[:12]}, this one is {bundle_hash[:12]}); rebuild them "
                "with `clipedge labels build`"
            )
        if emb.ndim != 2 or len(emb) != len(meta["labels"]):
            raise LabelFileError(f"{path}: embeddings do not match the label list")
        if thresholds is not None and thresholds.shape != (len(emb),):
            raise LabelFileError(f"{path}: thresholds do not match the label list")
        return cls(
            tuple(meta["labels"]), tuple(meta["templates"]), emb, meta["bundle_hash"], meta["precision"], thresholds,
            dict(meta.get("calibration") or {}),
        )  # fmt: skip


def check_compatible(labels: LabelEmbeddings, bundle_hash: str, embed_dim: int, precision: str) -> None:
    """The one entry check for label embeddings (DESIGN.md, Shared rules): they must come from the same
    source bundle (its hash) and have its embedding size. Thresholds fitted with another vision precision, and
    embeddings from a text tower other than fp32 or the vision tower's precision, are allowed with a warning.

    Raises:
        LabelFileError: made with another bundle, or of another embedding size.
    """
    if labels.bundle_hash != bundle_hash:
        raise LabelFileError(
            f"label embeddings were computed with another bundle ({labels.bundle_hash[:12]}, this one is "
            f"{bundle_hash[:12]}); rebuild them with `clipedge labels build`"
        )
    if labels.embeddings.ndim != 2 or labels.embeddings.shape[1] != embed_dim:
        raise LabelFileError(
            f"label embeddings have size {labels.embeddings.shape[-1]}, this bundle's embeddings have {embed_dim}"
        )
    fitted_on = labels.calibration.get("vision_precision")
    if labels.thresholds is not None and fitted_on and fitted_on != precision:
        log.warning(
            "thresholds were calibrated with the %s image tower; the image tower runs in %s (recalibrate with "
            "`clipedge calibrate --precision %s` for exact thresholds)",
            fitted_on,
            precision,
            precision,
        )
    if labels.precision not in (precision, "fp32"):  # fp32 text is the default pairing, not a choice to flag
        log.warning(
            "label embeddings were computed with the %s text tower; the image tower runs in %s",
            labels.precision,
            precision,
        )


def templates_key(templates: Sequence[str]) -> str:
    return hashlib.sha256("\x1f".join(templates).encode()).hexdigest()[:16]


class LabelCache:
    """LRU of single label embeddings keyed by (bundle hash, precision, template set, label)."""

    def __init__(self, max_entries: int = 16384):
        self.max_entries = max_entries
        self._data: OrderedDict[tuple[str, str, str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: tuple[str, str, str, str]) -> np.ndarray | None:
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: tuple[str, str, str, str], value: np.ndarray) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


def embed_label_texts(
    labels: Sequence[str],
    templates: Sequence[str],
    tokenize: Callable[[list[str]], Tokens],
    embed_tokens: Callable[[Tokens], np.ndarray],
    batch_size: int = 256,
) -> np.ndarray:
    """Template-ensembled unit embeddings [len(labels), D]: every label x template text embedded once, in
    batches of similar length (each cut to its longest text, unless the family's padding is fixed)."""
    texts = [fill(t, label) for label in labels for t in templates]
    tokens = tokenize(texts)
    order = np.argsort(tokens.lengths, kind="stable")
    out: np.ndarray | None = None
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        emb = embed_tokens(tokens.take(rows))
        if out is None:
            out = np.empty((len(texts), emb.shape[1]), dtype=np.float32)
        out[rows] = emb
    assert out is not None
    per_label = out.reshape(len(labels), len(templates), -1).mean(axis=1)
    return l2_normalise(per_label)
