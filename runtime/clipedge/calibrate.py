"""Multi-label scoring: per-label thresholds fitted on a labelled image folder.

Softmax always sums to one, so an image of none of the labels still gets a confident winner. In multi-label
mode each label is judged on its own: its score is sigmoid(logit_scale x (cosine - threshold)), 0.5 at the
label's threshold, and an image may get no label at all.

The threshold of each label maximises its F1 on the calibration images: positives are the images of that
label's class folder, negatives every other image, including images of classes that are not labels (the
"none of these" examples; the more such images, the fewer false tags). Thresholds are stored with the label
embeddings (`LabelEmbeddings.thresholds`) and record the vision precision they were fitted with.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .classifier import ZeroShotClassifier
from .evaluate import image_folder
from .images import ImageError
from .labels import LabelEmbeddings, LabelError, parse_labels
from .options import LoadOptions
from .templates import DEFAULT_TEMPLATE

OBJECTIVE = "per-label F1 on the calibration images (positives: the label's class folder; negatives: all others)"


@dataclass
class Calibration:
    """Fitted thresholds (in `labels`) and the per-label figures on the calibration images."""

    labels: LabelEmbeddings
    images: int
    f1: dict[str, float] = field(default_factory=dict)
    failed: list[tuple[str, str]] = field(default_factory=list)


def embed_paths(
    clf: ZeroShotClassifier,
    paths: Sequence[Path],
    chunk: int = 256,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
    """Image embeddings of `paths` (unreadable ones left out): (embeddings [n, D], kept indices, failures)."""
    embs, kept, failed = [], [], []
    for start in range(0, len(paths), chunk):
        batch = paths[start : start + chunk]
        prepared = clf.prepare_all(batch)
        ok = [i for i, p in enumerate(prepared) if not isinstance(p, ImageError)]
        failed += [(str(batch[i]), str(p)) for i, p in enumerate(prepared) if isinstance(p, ImageError)]
        if ok:
            embs.append(clf.embed(np.stack([p for p in prepared if isinstance(p, np.ndarray)]), batch_size=64))
            kept += [start + i for i in ok]
        if progress:
            progress(min(start + chunk, len(paths)), len(paths))
    dim = clf.bundle.manifest.architecture.embed_dim
    return (np.concatenate(embs) if embs else np.zeros((0, dim), np.float32)), kept, failed


def fit_threshold(cosines: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    """The cosine threshold with the best F1 (ties: the highest), and that F1.

    Candidates lie halfway between consecutive distinct scores, so a threshold never sits on an image's
    score. A label with no positive image cannot be calibrated (ValueError).
    """
    positive = positive.astype(bool)
    if not positive.any():
        raise ValueError("no positive image")
    order = np.argsort(-cosines, kind="stable")
    s, pos = cosines[order], positive[order]
    tp = np.cumsum(pos)  # predicting the first k+1 images (the k+1 best scores) as positive
    fp = np.cumsum(~pos)
    f1 = 2 * tp / (2 * tp + fp + (pos.sum() - tp))
    last_of_run = np.r_[s[:-1] != s[1:], True]  # cut only between distinct scores
    f1 = np.where(last_of_run, f1, -1.0)
    best = float(f1.max())
    k = int(np.flatnonzero(f1 == best)[0])  # the fewest images tagged among the best cuts
    t = (s[k] + s[k + 1]) / 2 if k + 1 < len(s) else s[k] - 1e-3
    return float(t), best


def calibrate(
    model: LoadOptions | str | Path,
    dataset: str | Path,
    labels: Sequence[str] | str | None = None,
    templates: str | Sequence[str] | None = None,
    text_precision: str | None = "fp32",
    progress: Callable[[int, int], None] | None = None,
) -> Calibration:
    """Fit per-label thresholds for multi-label scoring (see the module docstring).

    Args:
        model: load options (the vision precision the thresholds are fitted for), or a bundle folder (then
            on the CPU).
        dataset: one sub-folder of images per class; the folder name (underscores read as spaces) is the
            class text.
        labels: the labels to calibrate (default: every class, or the model's fixed labels, e.g. an edge
            pack's); each must be a class of the dataset. The other classes' images are negatives only.
        templates: prompt template(s) for the labels (None: the fixed labels' own, else "a photo of a {}.").
        text_precision: the text tower that embeds the labels (fp32 by default, as packs do); None: the
            load options' (by default the vision tower's precision).
        progress: called with (done, total) while images are embedded.

    Returns:
        The calibration: `labels` holds the label embeddings with their thresholds.

    Raises:
        ValueError: the dataset is not an image folder. LabelError: a label that is not a class of it, and
            what the label rules refuse (`clipedge.label_rules`).
    """
    options = model if isinstance(model, LoadOptions) else LoadOptions(str(model), provider="cpu")
    if text_precision:
        options = options.replace(text_precision=text_precision)
    classes, paths, targets = image_folder(dataset)
    clf = ZeroShotClassifier.load(options)
    if labels:
        names = parse_labels(labels) if isinstance(labels, str) else list(labels)
    else:  # every class, or the model's fixed labels
        names = list(clf.fixed_labels.labels) if clf.fixed_labels is not None else classes
    missing = [n for n in names if n not in classes]
    if missing:
        raise LabelError(
            f"label {missing[0]!r} has no class folder in {dataset} (classes: {', '.join(classes[:5])}, ...)"
        )
    if templates is None and clf.fixed_labels is None:
        templates = DEFAULT_TEMPLATE
    label_emb = clf.labels(names, templates)
    emb, kept, failed = embed_paths(clf, paths, progress=progress)
    y = targets[kept]
    cos = emb @ label_emb.embeddings.T
    thresholds, f1 = [], {}
    for j, name in enumerate(names):
        t, score = fit_threshold(cos[:, j], y == classes.index(name))
        thresholds.append(t)
        f1[name] = round(score, 4)
    info: dict[str, Any] = {
        "vision_precision": clf.precision,
        "objective": OBJECTIVE,
        "score": "sigmoid(logit_scale x (cosine - threshold)); present at 0.5",
        "dataset": Path(dataset).name,  # its name only: label files travel (packs), local paths stay here
        "images": len(kept),
        "classes": len(classes),
        "f1": f1,
    }
    fitted = replace(label_emb, thresholds=np.asarray(thresholds, np.float32), calibration=info)
    return Calibration(fitted, len(kept), f1, failed)


def multi_label_figures(clf: ZeroShotClassifier, labels: LabelEmbeddings, dataset: str | Path) -> dict[str, Any]:
    """How multi-label scoring does on a labelled image folder whose classes include the labels and others.

    Returns:
        {"labelled_top1_multi"}: images of labelled classes whose best label is present and right (no
        label counts as wrong); {"labelled_top1_softmax"}: softmax over the labels, for comparison;
        {"unlabelled_no_label"}: images of the other classes that get no label; plus counts.
    """
    classes, paths, targets = image_folder(dataset)
    emb, kept, _ = embed_paths(clf, paths)
    y = targets[kept]
    index = {c: i for i, c in enumerate(classes)}
    label_class = np.array([index.get(n, -1) for n in labels.labels])
    scores = clf.score_multi(emb, labels)
    probs = clf.score(emb, labels)
    labelled = np.isin(y, label_class)
    best = scores.argmax(axis=1)
    right = label_class[best] == y
    present = scores.max(axis=1) >= 0.5
    return {
        "labelled_images": int(labelled.sum()),
        "unlabelled_images": int((~labelled).sum()),
        "labelled_top1_multi": float((right & present)[labelled].mean()),
        "labelled_top1_softmax": float((label_class[probs.argmax(axis=1)] == y)[labelled].mean()),
        "unlabelled_no_label": float((~present)[~labelled].mean()),
        "labelled_mean_labels_present": float((scores >= 0.5)[labelled].sum(axis=1).mean()),
    }
