"""Edge packs: for a device that classifies against a fixed set of labels, the text tower and tokenizer are
dead weight. A pack is a folder with one precision's vision tower, the label embeddings (computed once, by
default with the fp32 text tower), their thresholds when calibrated, and `pack.json`: a manifest of its own
kind with every file's sha256 and the source bundle's hash.

`load_bundle` (and so every entry point) reads a pack where a bundle is accepted; whatever needs the text
tower (new labels, `/embed/text`, `labels build`) is refused with a message that says it is a pack.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .bundle import Bundle, BundleError, FileEntry, Manifest, check_file_names, file_entry, load_bundle
from .labels import LabelEmbeddings, LabelError, check_compatible, parse_labels

PACK_MANIFEST = "pack.json"
PACK_KIND = "clipedge-pack"
PACK_FORMAT = 1
LABELS_FILE = "labels.npz"


class NoTextTowerError(LabelError):
    """What needs the text tower (new labels, text embeddings) asked of an edge pack."""


@dataclass(frozen=True)
class PackInfo:
    """What a pack adds to the bundle view: its labels file, where it came from, its own hash."""

    labels: FileEntry
    label_count: int
    has_thresholds: bool
    source_bundle_hash: str
    source_name: str
    pack_hash: str


def no_text_tower(bundle: Bundle, what: str) -> NoTextTowerError:
    """The error for `what` (e.g. "new labels") asked of a pack."""
    info: PackInfo = bundle.pack
    return NoTextTowerError(  # no path: the endpoint shows this message to its clients
        f"this model is an edge pack (a vision tower and {info.label_count} fixed labels, no text tower): "
        f"{what} need the full bundle it was made from"
    )


def make_pack(
    bundle: str | Path,
    out: str | Path,
    precision: str,
    labels: Sequence[str] | None = None,
    templates: str | Sequence[str] | None = None,
    label_embeddings: LabelEmbeddings | None = None,
    text_precision: str = "fp32",
) -> Path:
    """Write an edge pack.

    Args:
        bundle: the source bundle folder (verified).
        out: the pack folder to create (must not exist, or be empty).
        precision: the vision tower's precision (one the bundle has).
        labels: the fixed label texts (with `templates`), embedded with the `text_precision` text tower; or
        label_embeddings: ready label embeddings of this bundle (e.g. from `clipedge calibrate`, thresholds
            included), instead of `labels`.
        text_precision: the text tower that embeds `labels` (fp32 by default: the best label embeddings,
            paid for once at pack time).

    Returns:
        The pack folder.

    Raises:
        BundleError: the source is not a bundle (or is a pack) or lacks the precision; `out` is not empty.
        LabelError, TemplateError, LabelFileError: bad labels, templates, or embeddings of another bundle.
    """
    from .classifier import ZeroShotClassifier

    if (labels is None) == (label_embeddings is None):
        raise LabelError("give the pack's labels (with templates) or label embeddings: one of the two")
    if isinstance(labels, str):
        labels = parse_labels(labels)  # "a, b", as everywhere else
    src = load_bundle(bundle, verify=False)
    if src.pack is not None:
        raise BundleError(f"{bundle}: is already an edge pack; make packs from the full bundle")
    src.verify(precision)  # only the files this pack takes, not every precision of the bundle
    if labels is not None and text_precision != precision:
        src.verify(text_precision)  # the text tower that embeds the labels
    variant = src.variant(precision)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BundleError(f"{out}: exists and is not an empty folder")
    if label_embeddings is None:
        clf = ZeroShotClassifier.load(src.path, precision=text_precision, provider="cpu", engine="onnxruntime")
        label_embeddings = clf.label_embeddings(list(labels or []), templates)
    else:
        # the one entry check (same source bundle, same size), against the vision tower the pack will run
        check_compatible(label_embeddings, src.bundle_hash, src.manifest.architecture.embed_dim, precision)

    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        _write(out, src, precision, variant, label_embeddings)
    except BaseException:  # no half-written pack left behind (the next run would refuse the folder)
        for p in out.iterdir():
            p.unlink()
        if created:
            out.rmdir()
        raise
    return out


def _write(out: Path, src: Bundle, precision: str, variant: Any, label_embeddings: LabelEmbeddings) -> None:
    shutil.copyfile(src.path / variant.vision.file, out / variant.vision.file)
    label_embeddings.save(out / LABELS_FILE)
    manifest = replace(src.manifest, precisions={precision: replace(variant, text=None)})
    meta: dict[str, Any] = {
        "kind": PACK_KIND,
        "format_version": PACK_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source_bundle": {"name": src.manifest.name, "hash": src.bundle_hash},  # no local path: packs travel
        "precision": precision,
        "labels": {
            **dataclasses.asdict(file_entry(out, LABELS_FILE)),
            "count": len(label_embeddings.labels),
            "templates": list(label_embeddings.templates),
            "text_precision": label_embeddings.precision,
            "thresholds": label_embeddings.thresholds is not None,
        },
        "manifest": manifest.to_dict(),
    }
    (out / PACK_MANIFEST).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def load_pack(folder: str | Path, verify: str | bool | None = True) -> Bundle:
    """Read a pack folder as a vision-only bundle (see `clipedge.bundle.load_bundle`).

    Raises:
        BundleError: no or malformed pack.json, another kind or format, or a file that fails verification.
    """
    folder = Path(folder)
    path = folder / PACK_MANIFEST
    raw = path.read_bytes()
    try:
        meta = json.loads(raw)
        if meta.get("kind") != PACK_KIND:
            raise BundleError(f"{path}: not a clipedge edge pack (kind {meta.get('kind')!r})")
        if meta.get("format_version") != PACK_FORMAT:
            raise BundleError(
                f"{path}: pack format_version {meta.get('format_version')!r} is not supported "
                f"(this clipedge reads {PACK_FORMAT}; upgrade clipedge)"
            )
        manifest = Manifest.from_dict(meta["manifest"])
        lab = meta["labels"]
        info = PackInfo(
            labels=FileEntry(lab["file"], lab["sha256"], int(lab["bytes"])),
            label_count=int(lab["count"]),
            has_thresholds=bool(lab.get("thresholds")),
            source_bundle_hash=str(meta["source_bundle"]["hash"]),
            source_name=str(meta["source_bundle"].get("name", "")),
            pack_hash=hashlib.sha256(raw).hexdigest(),
        )
    except json.JSONDecodeError as e:
        raise BundleError(f"{path}: not valid JSON ({e})") from None
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        if isinstance(e, BundleError):
            raise
        raise BundleError(f"{path}: malformed pack manifest ({type(e).__name__}: {e})") from None
    # the files are the ones a pack has, by name: a pack.json cannot point anywhere else
    precision = meta.get("precision")
    if list(manifest.precisions) != [precision]:
        raise BundleError(f"{path}: a pack holds exactly one precision, the one named by 'precision'")
    vision = manifest.precisions[precision].vision.file
    if info.labels.file != LABELS_FILE or vision != f"vision.{precision}.onnx":
        raise BundleError(f"{path}: a pack's files are {LABELS_FILE} and vision.{precision}.onnx")
    check_file_names(manifest, str(path))
    bundle = Bundle(folder, manifest, info.source_bundle_hash, pack=info)
    if verify:
        bundle.verify(verify if isinstance(verify, str) else None)
    return bundle


def pack_labels(bundle: Bundle) -> LabelEmbeddings:
    """A pack's fixed label embeddings (thresholds included when it has them)."""
    info: PackInfo = bundle.pack
    labels = LabelEmbeddings.load(bundle.path / info.labels.file, bundle_hash=info.source_bundle_hash)
    if len(labels.labels) != info.label_count:
        raise BundleError(
            f"{bundle.path}: pack.json counts {info.label_count} labels, {LABELS_FILE} has {len(labels.labels)}"
        )
    return labels
