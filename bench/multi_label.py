"""Multi-label scoring on the demo model: does "none of these" work, and what does it cost in top-1?

    python -m bench.multi_label [--bundle models/demo] [--per-class-cal 40] [--per-class-eval 100]

Labels are CLASSES[0::2] of clipedge_export/shapes.py (every colour and every shape on both sides).
Thresholds are calibrated (`clipedge.calibrate`, F1 per label) on a generated set with seed 3000 covering
all 30 classes and evaluated on seed 2000: the share of images of the 15 unlabelled classes that get no
label, and top-1 of the labelled classes' images (best label present and right; no label is wrong)
against softmax over the 15 labels. Each vision precision of the bundle, ONNX Runtime on the CPU.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from clipedge.bundle import load_bundle
from clipedge.calibrate import calibrate, multi_label_figures
from clipedge.classifier import ZeroShotClassifier
from clipedge.options import LoadOptions
from clipedge_export.shapes import CLASSES, write_image_folder


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="models/demo")
    ap.add_argument("--per-class-cal", type=int, default=40)
    ap.add_argument("--per-class-eval", type=int, default=100)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    labels = list(CLASSES[0::2])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cal_set = write_image_folder(Path(tmp) / "cal", args.per_class_cal, seed=3000)
        eval_set = write_image_folder(Path(tmp) / "eval", args.per_class_eval, seed=2000)
        for precision in load_bundle(args.bundle, verify=False).manifest.precisions:
            options = LoadOptions(args.bundle, precision=precision, provider="cpu", engine="onnxruntime")
            fitted = calibrate(options, cal_set, labels)
            figures = multi_label_figures(ZeroShotClassifier.load(options), fitted.labels, eval_set)
            rows.append({"precision": precision, "calibration_f1_min": min(fitted.f1.values()), **figures})
            print(json.dumps(rows[-1]))
    result = {
        "bundle": args.bundle,
        "date": time.strftime("%Y-%m-%d"),
        "labels": labels,
        "calibration": {"seed": 3000, "per_class": args.per_class_cal, "classes": len(CLASSES)},
        "evaluation": {"seed": 2000, "per_class": args.per_class_eval, "classes": len(CLASSES)},
        "rows": rows,
    }
    print(markdown(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


def markdown(rows: list[dict]) -> str:
    lines = [
        "| vision precision | unlabelled classes: no label | labelled classes: top-1 multi-label | "
        "top-1 softmax over the 15 | labels present per labelled image | min calibration F1 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['precision']} | {r['unlabelled_no_label']:.1%} | {r['labelled_top1_multi']:.1%} | "
            f"{r['labelled_top1_softmax']:.1%} | {r['labelled_mean_labels_present']:.3f} | "
            f"{r['calibration_f1_min']:.3f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
