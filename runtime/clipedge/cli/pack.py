"""`clipedge pack` (an edge pack: vision tower + fixed labels) and `clipedge calibrate` (multi-label
thresholds)."""

from __future__ import annotations

import argparse
import sys

from .common import (
    add_label_args,
    add_model_args,
    add_template_args,
    fail,
    known_errors,
    label_request,
    load_options,
)


# -- pack -----------------------------------------------------------------------------------------------
def cmd_pack(args: argparse.Namespace) -> int:
    from ..pack import make_pack

    try:
        req = label_request(args)
        out = make_pack(
            args.bundle, args.output, args.precision, req.names, req.templates, args.label_embeddings,
            args.text_precision, req.multi_label,
        )  # fmt: skip
    except OSError as e:
        return fail(f"cannot make the pack: {e.filename or args.output}: {e.strerror or e}")
    except known_errors() as e:
        return fail(str(e))
    files = sorted(p for p in out.iterdir() if p.is_file())
    size = sum(p.stat().st_size for p in files)
    print(f"wrote {out}: {', '.join(p.name for p in files)} ({size / 1e6:.1f} MB)")
    return 0


def add_pack(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pack",
        help="an edge pack: one precision's vision tower and fixed label embeddings (no text tower)",
        description="Write a small folder for a device that classifies against a fixed set of labels: the vision "
        "tower of one precision, the label embeddings (computed here with the fp32 text tower), their thresholds "
        "when the embeddings come from `clipedge calibrate`, and pack.json with every file's sha256 and the source "
        "bundle's hash. Every command that takes -m BUNDLE takes the pack.",
    )
    from ..options import PRECISIONS

    p.add_argument("bundle", help="the source bundle folder")
    add_label_args(p, "a pack for multi-label scoring: its labels must carry calibrated thresholds")
    add_template_args(p)
    p.add_argument(
        "--precision",
        required=True,
        choices=PRECISIONS,
        help="the vision tower to ship: int8 (fastest with ONNX Runtime alone on a CPU), int8-static (OpenVINO, "
        "TensorRT), fp16 (GPUs), fp32",
    )
    p.add_argument("--text-precision", default="fp32", choices=PRECISIONS,
                   help="the text tower that embeds the labels (default %(default)s)")  # fmt: skip
    p.add_argument("-o", "--output", required=True, help="the pack folder to create (new or empty)")
    p.set_defaults(func=cmd_pack)


# -- calibrate ------------------------------------------------------------------------------------------
def cmd_calibrate(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from ..batch.local import progress_bar
    from ..calibrate import MAX_FALSE_POSITIVE_RATE, MIN_F1, calibrate, multi_label_figures
    from ..classifier import ZeroShotClassifier

    bars: list = []  # tqdm's bar on a terminal (its own handling: nothing written into logs), made at the first call

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(progress_bar(total))
        if bars[0] is not None:
            bars[0].update(done - bars[0].n)

    try:
        options = load_options(args)
        req = label_request(args)
        try:
            cal = calibrate(options, args.dataset, req.names, req.templates, args.text_precision, progress)
        finally:
            if bars and bars[0] is not None:
                bars[0].close()
        problems = cal.problems()
        for line in problems:
            print(f"clipedge: {'warning: ' if args.force else ''}{line}", file=sys.stderr)
        if problems and not args.force:
            _print_fits(cal)
            return fail(
                f"{args.output} not written: {len(problems)} label(s) below the floors (best F1 {MIN_F1}, at most "
                f"{MAX_FALSE_POSITIVE_RATE:.0%} of other images tagged); check their class folders, or write it "
                "anyway with --force"
            )
        cal.labels.save(args.output)
        report = {
            "output": args.output,
            "images": cal.images,
            "f1": cal.f1,
            "labels": {name: dataclasses.asdict(fit) for name, fit in cal.fits.items()},
            "failed": len(cal.failed),
            "problems": problems,
        }
        if args.eval:
            report["eval"] = multi_label_figures(ZeroShotClassifier.load(options), cal.labels, args.eval)
    except OSError as e:
        return fail(f"{args.output}: cannot write ({e.strerror or e})")
    except known_errors(ValueError) as e:
        return fail(str(e))
    for path, reason in cal.failed:
        print(f"clipedge: skipped {path}: {reason}", file=sys.stderr)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"wrote {args.output}: thresholds for {len(cal.f1)} labels from {cal.images} images "
          f"(vision {cal.labels.calibration['vision_precision']}, text {cal.labels.precision})")  # fmt: skip
    _print_fits(cal)
    if args.eval:
        fig = report["eval"]
        print(
            f"{args.eval}: labelled classes top-1 {fig['labelled_top1_multi']:.3f} multi-label "
            f"(softmax {fig['labelled_top1_softmax']:.3f}); other classes with no label "
            f"{fig['unlabelled_no_label']:.3f}"
        )
    return 0


def _print_fits(cal) -> None:
    width = max(len(n) for n in cal.fits)
    for name, fit in cal.fits.items():
        print(
            f"  {name:<{width}}  threshold {fit.threshold:.4f}  precision {fit.precision:.3f}  recall {fit.recall:.3f}"
            f"  F1 {fit.f1:.3f}"
        )


def add_calibrate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate",
        help="fit per-label thresholds for multi-label scoring on a labelled image folder",
        description="Each label's threshold maximises its F1 on DATASET (one sub-folder of images per class; "
        "positives are its folder's images, negatives all others, including classes that are not labels). "
        "Writes label embeddings with thresholds, for `classify --multi-label --label-embeddings`, `pack "
        "--label-embeddings` and the endpoint's multi-label mode.",
    )
    from ..options import PRECISIONS

    p.add_argument("dataset", help="image folder: one sub-folder per class (underscores read as spaces)")
    add_label_args(p, multi_label=None)
    add_template_args(p)
    add_model_args(p)
    p.add_argument("--text-precision", default="fp32", choices=PRECISIONS,
                   help="the text tower that embeds the labels (default %(default)s)")  # fmt: skip
    p.add_argument("-o", "--output", required=True, help="output .npz (label embeddings with thresholds)")
    p.add_argument("--eval", default=None, help="a second labelled folder to report multi-label figures on")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--force", action="store_true",
                   help="write the file even when a label's fit is below the floors (best F1 0.5; its threshold "
                        "tagging at most half of the other classes' images)")  # fmt: skip
    p.set_defaults(func=cmd_calibrate)
