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
# Floors below which a label's threshold is not worth writing (docs/edge.md, "Multi-label scoring"): its best
# F1, and the share of the other classes' images its threshold would tag (a label told apart from nothing
# gets its best F1 by tagging nearly every image)
MIN_F1 = 0.5
MAX_FALSE_POSITIVE_RATE = 0.5


@dataclass(frozen=True)
class LabelFit:
    """One label's threshold and what it gives on the calibration images."""

    threshold: float
    f1: float
    precision: float
    recall: float
    false_positive_rate: float  # the share of the other classes' images it tags

    def problem(self) -> str | None:
        """Why this fit is implausible (below a floor), or None."""
        if self.f1 < MIN_F1:
            return f"its best F1 is {self.f1:.2f} (the floor is {MIN_F1})"
        if self.false_positive_rate > MAX_FALSE_POSITIVE_RATE:
            return (
                f"its threshold tags {self.false_positive_rate:.0%} of the other classes' images (at most "
                f"{MAX_FALSE_POSITIVE_RATE:.0%}); F1 {self.f1:.2f}"
            )
        return None


@dataclass
class Calibration:
    """Fitted thresholds (in `labels`) and the per-label figures on the calibration images."""

    labels: LabelEmbeddings
    images: int
    f1: dict[str, float] = field(default_factory=dict)
    failed: list[tuple[str, str]] = field(default_factory=list)
    fits: dict[str, LabelFit] = field(default_factory=dict)

    def problems(self) -> list[str]:
        """One line per label whose fit is below a floor (`LabelFit.problem`), naming it."""
        return [f"label {name!r}: {p}" for name, fit in self.fits.items() if (p := fit.problem())]


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


def label_fit(cosines: np.ndarray, positive: np.ndarray) -> LabelFit:
    """`fit_threshold`, with the precision, recall and false positive rate the threshold gives."""
    positive = positive.astype(bool)
    t, f1 = fit_threshold(cosines, positive)
    tagged = cosines >= t
    tp = int((tagged & positive).sum())
    negatives = int((~positive).sum())
    return LabelFit(
        threshold=t,
        f1=f1,
        precision=tp / max(1, int(tagged.sum())),
        recall=tp / max(1, int(positive.sum())),
        false_positive_rate=int((tagged & ~positive).sum()) / negatives if negatives else 0.0,
    )


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
    fits: dict[str, LabelFit] = {}
    for j, name in enumerate(names):
        positive = y == classes.index(name)
        if not positive.any():
            raise LabelError(f"label {name!r}: no image of its class folder in {dataset} could be read")
        fits[name] = label_fit(cos[:, j], positive)
    thresholds = [fit.threshold for fit in fits.values()]
    f1 = {name: round(fit.f1, 4) for name, fit in fits.items()}
    info: dict[str, Any] = {
        "vision_precision": clf.precision,
        "objective": OBJECTIVE,
        "score": "sigmoid(logit_scale x (cosine - threshold)); present at 0.5",
        "dataset": Path(dataset).name,  # its name only: label files travel (packs), local paths stay here
        "images": len(kept),
        "classes": len(classes),
        "f1": f1,
        "precision": {name: round(fit.precision, 4) for name, fit in fits.items()},
        "recall": {name: round(fit.recall, 4) for name, fit in fits.items()},
    }
    fitted = replace(label_emb, thresholds=np.asarray(thresholds, np.float32), calibration=info)
    return Calibration(fitted, len(kept), f1, failed, fits)


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
