"""`clipedge classify`, `clipedge labels build` and `clipedge eval`."""

from __future__ import annotations

import argparse
import sys

from .common import (
    EXIT_PARTIAL,
    add_label_args,
    add_model_args,
    add_template_args,
    add_url_args,
    fail,
    known_errors,
    label_request,
    load_options,
    positive_int,
    templates_arg,
)


# classify -------------------------------------------------------------------------------------------
def _format_table(names: list[str], results: list[dict], top_k: int | None) -> str:
    lines = []
    width = max((len(label) for res in results for label in res["labels"]), default=0)
    for name, res in zip(names, results, strict=True):
        lines.append(name)
        if res.get("error"):
            lines.append(f"  error: {res['error']}")
            continue
        multi = "present" in res
        pairs = sorted(zip(res["labels"], res["scores" if multi else "probs"], strict=True), key=lambda lp: -lp[1])
        for label, p in pairs[:top_k]:
            mark = ("  ✓" if p >= 0.5 else "") if multi else ""
            lines.append(f"  {label:<{width}}  {p:6.3f}  {'█' * round(p * 30)}{mark}")
        if multi and not res["present"]:
            lines.append("  (none of these labels)")
    return "\n".join(lines)


def cmd_classify(args: argparse.Namespace) -> int:
    import json

    from ..classifier import ZeroShotClassifier, format_result
    from ..images import ImageError, describe

    try:
        clf = ZeroShotClassifier.load(load_options(args))
        label_emb = clf.labels(label_request(args))
    except known_errors() as e:
        return fail(str(e))
    names = [describe(src) for src in args.images]
    prepared = clf.prepare_all(args.images)
    results = clf.classify_prepared(prepared, label_emb, multi_label=args.multi_label)
    failed = 0
    for name, p in zip(names, prepared, strict=True):
        if isinstance(p, ImageError):
            failed += 1
            print(f"clipedge: {p}" if str(p).startswith(name) else f"clipedge: {name}: {p}", file=sys.stderr)
    if args.json:
        out = []
        for name, res in zip(names, results, strict=True):
            key = "scores" if args.multi_label else "probs"
            row = format_result(res["labels"], res[key], args.top_k, args.multi_label) if res.get(key) else dict(res)
            out.append({"image": name, **row})
        print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        print(_format_table(names, results, args.top_k))
    if args.plot:
        code = _plot(args, names, results)
        if code:
            return code
    return EXIT_PARTIAL if failed else 0


def _plot(args: argparse.Namespace, names: list[str], results: list[dict]) -> int:
    from ..images import load_image

    ok = [i for i, r in enumerate(results) if r.get("probs") or r.get("scores")]
    if not ok:
        return 0
    from ..plot import plot_results

    try:
        images = [load_image(args.images[i]) for i in ok]
        plot_results(images, [names[i] for i in ok], [results[i] for i in ok], args.plot)
    except (RuntimeError, OSError, ValueError) as e:
        return fail(str(e))
    print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def add_classify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", help="zero-shot classify images (paths, URLs or base64)")
    p.add_argument("images", nargs="+", help="image files, http(s) URLs or base64 strings")
    add_label_args(p)
    add_template_args(p)
    add_model_args(p)
    p.add_argument(
        "--top-k", type=positive_int, default=None, help="show only the k best labels per image (default: all)"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--plot", default=None, help="write a PNG: each image beside its label probabilities")
    add_url_args(p)
    p.add_argument("--fast-jpeg", action="store_true",
                   help="decode large JPEGs at reduced scale (faster; embeddings change slightly)")  # fmt: skip
    p.set_defaults(func=cmd_classify)


# -- labels build ---------------------------------------------------------------------------------------
def cmd_labels_build(args: argparse.Namespace) -> int:
    import time

    from ..classifier import ZeroShotClassifier
    from ..labels import read_labels_file

    try:
        labels = read_labels_file(args.labels_file)
        clf = ZeroShotClassifier.load(load_options(args))
        t0 = time.perf_counter()
        emb = clf.label_embeddings(labels, templates_arg(args))
        emb.save(args.output)
    except OSError as e:
        return fail(f"{args.output}: cannot write ({e.strerror or e})")
    except known_errors() as e:
        return fail(str(e))
    print(
        f"wrote {args.output}: {len(labels)} labels x {len(emb.templates)} templates "
        f"({clf.precision}) in {time.perf_counter() - t0:.2f} s"
    )
    return 0


def add_labels(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("labels", help="label embeddings")
    lsub = p.add_subparsers(dest="labels_command", required=True)
    b = lsub.add_parser("build", help="precompute label embeddings into an .npz tied to the bundle")
    b.add_argument("labels_file", help="text file, one label per line")
    b.add_argument("-o", "--output", required=True, help="output .npz")
    add_template_args(b)
    add_model_args(b)
    b.set_defaults(func=cmd_labels_build)


# -- eval -----------------------------------------------------------------------------------------------
def cmd_eval(args: argparse.Namespace) -> int:
    import json

    from ..evaluate import evaluate, format_report

    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()] if args.precisions else None
    try:
        report = evaluate(
            load_options(args),
            args.dataset,
            precisions=precisions,
            templates=templates_arg(args),  # None: the model's fixed labels' own, else "a photo of a {}."
            limit_per_class=args.limit_per_class,
        )
    except known_errors(ValueError) as e:
        return fail(str(e))
    for _, error in report.failed:
        print(f"clipedge: {error}", file=sys.stderr)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return EXIT_PARTIAL if report.failed else 0


def add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="zero-shot top-1 accuracy on an image-folder dataset, per precision")
    p.add_argument("dataset", help="folder with one sub-folder of images per class (folder name = label)")
    p.add_argument("--precisions", default=None, help="comma-separated (default: all the bundle has)")
    add_model_args(p, precision=False)
    p.set_defaults(provider="cpu")  # eval compares precisions on the CPU unless asked otherwise
    p.add_argument("--limit-per-class", type=positive_int, default=None, help="use at most N images per class")
    p.add_argument("--json", action="store_true")
    add_template_args(p)
    p.set_defaults(func=cmd_eval)
