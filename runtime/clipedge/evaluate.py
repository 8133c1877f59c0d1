"""Zero-shot accuracy of a bundle on an image-folder dataset (one sub-folder per class), in each precision.

Each image is decoded and preprocessed once; every precision's vision tower runs on the same pixels, so
top-1 agreement with fp32 measures what quantisation changes and nothing else. The class text is the
folder name (underscores read as spaces) in the chosen template(s).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .bundle import load_bundle
from .classifier import ZeroShotClassifier
from .images import IMAGE_EXTENSIONS, ImageError
from .options import LoadOptions
from .templates import DEFAULT_TEMPLATE


@dataclass
class EvalReport:
    dataset: str
    classes: list[str]
    images: int
    failed: list[tuple[str, str]] = field(default_factory=list)
    accuracy: dict[str, float] = field(default_factory=dict)
    agreement_with_fp32: dict[str, float] = field(default_factory=dict)
    cosine_to_fp32: dict[str, dict[str, float]] = field(default_factory=dict)  # image embeddings: min, mean
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "classes": len(self.classes),
            "images": self.images,
            "failed": [{"file": f, "error": e} for f, e in self.failed],
            "top1_accuracy": self.accuracy,
            "top1_agreement_with_fp32": self.agreement_with_fp32,
            "image_cosine_to_fp32": self.cosine_to_fp32,
            "vision_seconds": self.seconds,
        }


def image_folder(root: str | Path, limit_per_class: int | None = None) -> tuple[list[str], list[Path], np.ndarray]:
    """(class names, image paths, class index per image) of an image-folder dataset."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: no such dataset folder")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(folders) < 2:
        raise ValueError(f"{root}: expected one sub-folder per class (found {len(folders)})")
    classes, paths, targets = [], [], []
    for k, folder in enumerate(folders):
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not files:
            raise ValueError(f"{folder}: class folder has no images")
        files = files[:limit_per_class] if limit_per_class else files
        classes.append(folder.name.replace("_", " "))
        paths += files
        targets += [k] * len(files)
    return classes, paths, np.asarray(targets)


def evaluate(
    model: LoadOptions | str | Path,
    dataset: str | Path,
    precisions: Sequence[str] | None = None,
    templates: str | Sequence[str] | None = None,
    chunk: int = 256,
    limit_per_class: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EvalReport:
    """Top-1 accuracy per precision and top-1 agreement with fp32, on an image-folder dataset.

    Args:
        model: load options (their precision is replaced by each of `precisions`), or a bundle folder
            (then on the CPU provider).
        dataset: one sub-folder of images per class; the folder name (underscores read as spaces) is the
            class text.
        precisions: the precisions to compare (default: every one the bundle has).
        templates: prompt template(s) for the class texts (None: the model's fixed labels' own, e.g. an edge
            pack's, else "a photo of a {}.").
        chunk: images decoded at a time.
        limit_per_class: use at most this many images per class.
        progress: called with (done, total) after each chunk.

    Returns:
        The report; images that cannot be decoded are listed in `failed` and left out of the figures.

    Raises:
        ValueError: the dataset is not an image folder. Load errors as `ZeroShotClassifier.load`.
    """
    options = model if isinstance(model, LoadOptions) else LoadOptions(str(model), provider="cpu")
    options = options.resolved()
    classes, paths, targets = image_folder(dataset, limit_per_class)
    names = list(precisions or load_bundle(str(options.bundle), verify=False).manifest.precisions)
    clfs = {p: ZeroShotClassifier.load(options, precision=p, engine=_engine_for(options.engine, p)) for p in names}
    first = clfs[names[0]]
    if templates is None and first.fixed_labels is None:
        templates = DEFAULT_TEMPLATE
    labels = {p: c.labels(classes, templates) for p, c in clfs.items()}
    report = EvalReport(str(dataset), classes, len(paths))
    preds: dict[str, list[np.ndarray]] = {p: [] for p in names}
    cosines: dict[str, list[np.ndarray]] = {p: [] for p in names if p != "fp32"}
    kept: list[int] = []
    for start in range(0, len(paths), chunk):
        batch = paths[start : start + chunk]
        prepared = first.prepare_all(batch)  # decoded and preprocessed once, for every precision
        ok = [i for i, p in enumerate(prepared) if not isinstance(p, ImageError)]
        report.failed += [(str(batch[i]), str(p)) for i, p in enumerate(prepared) if isinstance(p, ImageError)]
        if not ok:
            continue
        stacked = np.stack([p for p in prepared if isinstance(p, np.ndarray)])
        embs = {}
        for p, clf in clfs.items():
            t0 = time.perf_counter()
            embs[p] = emb = clf.embed(stacked, batch_size=64)
            report.seconds[p] = report.seconds.get(p, 0.0) + time.perf_counter() - t0
            preds[p].append(clf.score(emb, labels[p]).argmax(axis=1))
        if "fp32" in embs:
            for p in cosines:
                cosines[p].append((embs[p] * embs["fp32"]).sum(axis=1))
        kept += [start + i for i in ok]
        if progress:
            progress(min(start + chunk, len(paths)), len(paths))
    y = targets[kept]
    for p in names:
        pred = np.concatenate(preds[p]) if preds[p] else np.zeros(0, dtype=int)
        report.accuracy[p] = float((pred == y).mean()) if len(y) else float("nan")
        if "fp32" in preds and p != "fp32" and len(y):
            report.agreement_with_fp32[p] = float((pred == np.concatenate(preds["fp32"])).mean())
            cos = np.concatenate(cosines[p])
            report.cosine_to_fp32[p] = {"min": float(cos.min()), "mean": float(cos.mean())}
    return report


def _engine_for(engine: str, precision: str) -> str:
    """--engine openvino: OpenVINO for the precisions it runs, ONNX Runtime for the others (the reference)."""
    from .openvino_engine import ENGINE_PRECISIONS

    return engine if engine != "openvino" or precision in ENGINE_PRECISIONS else "onnxruntime"


def format_report(report: EvalReport) -> str:
    lines = [
        f"{report.dataset}: {len(report.classes)} classes, {report.images} images, {len(report.failed)} failed",
        f"{'precision':<10} {'top-1':>7} {'agree fp32':>11} {'min cos fp32':>13} {'vision img/s':>13}",
    ]
    scored = report.images - len(report.failed)
    for p, acc in report.accuracy.items():
        agree = report.agreement_with_fp32.get(p)
        cos = report.cosine_to_fp32.get(p, {}).get("min")
        rate = scored / report.seconds[p] if report.seconds.get(p) else float("nan")
        lines.append(
            f"{p:<10} {acc * 100:6.2f}% {'' if agree is None else f'{agree * 100:10.2f}%':>11} "
            f"{'' if cos is None else f'{cos:.6f}':>13} {rate:13.1f}"
        )
    return "\n".join(lines)
