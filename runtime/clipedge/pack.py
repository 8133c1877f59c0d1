"""Making edge packs: for a device that classifies against a fixed set of labels, the text tower and tokenizer
are dead weight. A pack is a folder with one precision's vision tower, the label embeddings (computed once,
by default with the fp32 text tower), their thresholds when calibrated, and `pack.json`: a manifest of its
own kind with every file's sha256 and the source bundle's hash.

Packs are read by `clipedge.bundle.load_bundle` (so by every entry point, wherever a bundle is accepted);
what needs the text tower is refused by the label rules (`clipedge.label_rules`). The pack's labels come
through the classifier's one label door, under the same rules as every other entry point's.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from .bundle import LABELS_FILE, PACK_FORMAT, PACK_KIND, PACK_MANIFEST, Bundle, BundleError, Variant, load_bundle
from .classifier import ZeroShotClassifier
from .label_rules import LabelRequest, check_nameable
from .labels import LabelEmbeddings, parse_labels
from .manifest import file_entry


def make_pack(
    bundle: str | Path,
    out: str | Path,
    precision: str,
    labels: Sequence[str] | str | None = None,
    templates: str | Sequence[str] | None = None,
    label_embeddings: LabelEmbeddings | str | None = None,
    text_precision: str = "fp32",
    multi_label: bool = False,
) -> Path:
    """Write an edge pack.

    Args:
        bundle: the source bundle folder (the files the pack takes are verified).
        out: the pack folder to create (must not exist, or be empty).
        precision: the vision tower's precision (one the bundle has).
        labels: the fixed label names (a list, or "a, b"), embedded under `templates` with the
            `text_precision` text tower; with `label_embeddings`, the subset of them to take.
        label_embeddings: ready label embeddings of this bundle (or an .npz path), e.g. from `clipedge
            calibrate` (thresholds included).
        text_precision: the text tower that embeds `labels` (fp32 by default: the best label embeddings,
            paid for once at pack time).
        multi_label: the pack is for multi-label scoring: its labels must carry calibrated thresholds.

    Returns:
        The pack folder.

    Raises:
        BundleError: the source is not a bundle (or is a pack) or lacks the precision; `out` is not empty.
        LabelError, TemplateError, LabelFileError: refused by the label rules (`clipedge.label_rules`).
    """
    names = parse_labels(labels) if isinstance(labels, str) else None if labels is None else list(labels)
    tpl = templates if templates is None or isinstance(templates, str) else tuple(templates)
    request = LabelRequest(None if names is None else tuple(names), label_embeddings, tpl, multi_label)
    src = load_bundle(bundle, verify=False, packs=False)
    variant = src.variant(precision)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BundleError(f"{out}: exists and is not an empty folder")
    # the vision tower the pack will run (its files verified), the labels through the one door
    clf = ZeroShotClassifier.load(
        src.path, precision=precision, text_precision=text_precision, provider="cpu", engine="onnxruntime"
    )
    fixed = clf.labels(request)
    check_nameable(fixed.labels)

    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        _write(out, src, precision, variant, fixed)
    except BaseException:  # no half-written pack left behind (the next run would refuse the folder)
        for p in out.iterdir():
            p.unlink()
        if created:
            out.rmdir()
        raise
    return out


def _write(out: Path, src: Bundle, precision: str, variant: Variant, label_embeddings: LabelEmbeddings) -> None:
    shutil.copyfile(src.path / variant.vision.file, out / variant.vision.file)
    label_embeddings.save(out / LABELS_FILE)
    source = src.manifest.source
    if source.kind == "local":  # packs travel: the checkpoint's folder name, never a local path
        source = replace(source, id=Path(source.id).name)
    manifest = replace(src.manifest, source=source, precisions={precision: replace(variant, text=None)})
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
