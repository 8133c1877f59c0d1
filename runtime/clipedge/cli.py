"""The `clipedge` command: thin layers over the library. Errors are one line on stderr and a non-zero exit."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

EXIT_ERROR = 2
EXIT_PARTIAL = 1


def _fail(message: str, code: int = EXIT_ERROR) -> int:
    print(f"clipedge: error: {message}", file=sys.stderr)
    return code


def cmd_export(args: argparse.Namespace) -> int:
    try:
        from clipedge_export.errors import ExportError
        from clipedge_export.export import export_bundle
    except ImportError as e:
        return _fail(f"export needs the export extra ({e.name} is missing): pip install 'clipedge[export]'")
    try:
        manifest = export_bundle(
            args.source,
            args.output,
            precisions=args.precisions,
            opset=args.opset,
            revision=args.revision,
            log=lambda m: print(m, file=sys.stderr),
        )
    except ExportError as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        return _fail("interrupted; nothing was written", 130)
    sizes = ", ".join(f"{p} {(v.vision.bytes + v.text.bytes) / 1e6:.1f} MB" for p, v in manifest.precisions.items())
    print(f"wrote {args.output} ({sizes})")
    return 0


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a Hugging Face CLIP checkpoint to a bundle (needs clipedge[export])")
    p.add_argument("source", help="hub id (e.g. openai/clip-vit-base-patch32) or local checkpoint folder")
    p.add_argument("-o", "--output", required=True, help="bundle folder to create (must not exist or be empty)")
    p.add_argument("--precisions", default="fp32,int8,fp16", help="comma-separated: fp32,int8,fp16")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    p.set_defaults(func=cmd_export)


def _read_labels_file(path: str) -> list[str]:
    """One label per line; blank lines and lines starting with # are skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ValueError(f"{path}: cannot read labels file ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: labels file is not UTF-8 text") from None
    labels = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not labels:
        raise ValueError(f"{path}: no labels in the file")
    return labels


def _templates_arg(args: argparse.Namespace):
    return args.template if args.template else args.templates


def _load_classifier(args: argparse.Namespace):
    from .classifier import ZeroShotClassifier
    from .fetch import FetchPolicy
    from .images import DecodePolicy

    policy = DecodePolicy(fetch=FetchPolicy(allow_private=getattr(args, "allow_private_urls", False)))
    return ZeroShotClassifier.load(
        args.model,
        precision=args.precision,
        provider=args.provider,
        threads=args.threads,
        thread_pool=args.thread_pool,
        strict=not args.provider_fallback,
        decode_policy=policy,
        fast_jpeg=getattr(args, "fast_jpeg", False),
    )


def _format_table(names: list[str], results: list[dict], top_k: int) -> str:
    lines = []
    width = max((len(label) for res in results for label in res["labels"]), default=0)
    for name, res in zip(names, results, strict=True):
        lines.append(name)
        if res.get("error"):
            lines.append(f"  error: {res['error']}")
            continue
        pairs = sorted(zip(res["labels"], res["probs"], strict=True), key=lambda lp: -lp[1])[:top_k]
        for label, p in pairs:
            lines.append(f"  {label:<{width}}  {p:6.3f}  {'█' * round(p * 30)}")
    return "\n".join(lines)


def cmd_classify(args: argparse.Namespace) -> int:
    import json

    from .bundle import BundleError
    from .classifier import format_result, load_images
    from .images import ImageError, describe
    from .labels import LabelFileError
    from .providers import ProviderError

    try:
        clf = _load_classifier(args)
        label_emb = _resolve_labels(args, clf)
    except (BundleError, ProviderError, LabelFileError, ValueError) as e:
        return _fail(str(e))
    decoded = load_images(args.images, clf.decode_policy)
    names = [describe(src) for src in args.images]
    failed = 0
    results: list[dict] = [{}] * len(decoded)
    good = [i for i, im in enumerate(decoded) if not isinstance(im, ImageError)]
    for i, im in enumerate(decoded):
        if isinstance(im, ImageError):
            failed += 1
            print(f"clipedge: {im}", file=sys.stderr)
            results[i] = {"labels": list(label_emb.labels), "probs": None, "error": str(im)}
    scored = clf.classify([decoded[i] for i in good], label_emb, errors="return")
    for i, res in zip(good, scored, strict=True):
        if res.get("error"):
            failed += 1
            print(f"clipedge: {names[i]}: {res['error']}", file=sys.stderr)
        results[i] = res
    top_k = args.top_k or min(5, len(label_emb.labels))
    if args.json:
        out = []
        for name, res in zip(names, results, strict=True):
            row = format_result(res["labels"], res["probs"], args.top_k) if res.get("probs") else dict(res)
            out.append({"image": name, **row})
        print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        print(_format_table(names, results, top_k))
    if args.plot:
        ok = [i for i in good if results[i].get("probs")]
        if ok:
            from .plot import plot_results

            try:
                plot_results([decoded[i] for i in ok], [names[i] for i in ok], [results[i] for i in ok], args.plot)
            except (RuntimeError, OSError) as e:
                return _fail(str(e))
            print(f"wrote {args.plot}", file=sys.stderr)
    return EXIT_PARTIAL if failed else 0


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", default="models/demo", help="bundle folder (default: models/demo)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "int8", "fp16"],
                   help="auto: int8 on CPU, fp16 on CUDA, when the bundle has them")  # fmt: skip
    p.add_argument("--provider", default="auto", help="auto, cpu, cuda, tensorrt (default auto)")
    p.add_argument("--provider-fallback", action="store_true",
                   help="warn instead of failing when the requested provider is not in effect")  # fmt: skip
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores)")
    _add_pool_arg(p)


def _add_pool_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--thread-pool", default="shared", choices=["shared", "session", "session-spin"],
                   help="ONNX Runtime threads: shared (default; one spinning pool for the process, "
                        "lowest latency), session (a non-spinning pool per session) or session-spin")  # fmt: skip


def _add_label_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--labels", help='comma-separated labels, e.g. "cat, dog, bird"')
    g.add_argument("--labels-file", help="text file, one label per line")
    g.add_argument("--label-embeddings", help=".npz written by `clipedge labels build`")


def _resolve_labels(args: argparse.Namespace, clf, required: bool = True):
    """LabelEmbeddings from --label-embeddings, --labels-file or --labels; None when none was given and
    none is required. Raises ValueError naming the problem."""
    from .templates import parse_labels

    if args.label_embeddings:
        return clf.load_labels(args.label_embeddings)
    if args.labels_file or args.labels:
        names = _read_labels_file(args.labels_file) if args.labels_file else parse_labels(args.labels)
        if names:
            return clf.label_embeddings(names, _templates_arg(args))
    elif not required:
        return None
    raise ValueError("no labels: give --labels 'a, b, c', --labels-file or --label-embeddings")


def _add_template_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--template", default=None, help='one prompt template, e.g. "a photo of a {}."')
    g.add_argument("--templates", default=None, help="a named template set: none, openai-imagenet")


def add_classify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", help="zero-shot classify images (paths, URLs or base64)")
    p.add_argument("images", nargs="+", help="image files, http(s) URLs or base64 strings")
    _add_label_args(p)
    _add_template_args(p)
    _add_model_args(p)
    p.add_argument("--top-k", type=int, default=None, help="labels to show per image (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--plot", default=None, help="write a PNG: each image beside its label probabilities")
    p.add_argument("--allow-private-urls", action="store_true", help="fetch URLs on private/loopback addresses")
    p.add_argument("--fast-jpeg", action="store_true",
                   help="decode large JPEGs at reduced scale (3-10x faster; embeddings change slightly)")  # fmt: skip
    p.set_defaults(func=cmd_classify)


def cmd_labels_build(args: argparse.Namespace) -> int:
    import time

    from .bundle import BundleError
    from .providers import ProviderError

    try:
        labels = _read_labels_file(args.labels_file)
        clf = _load_classifier(args)
        t0 = time.perf_counter()
        emb = clf.label_embeddings(labels, _templates_arg(args))
        emb.save(args.output)
    except (BundleError, ProviderError, ValueError, OSError) as e:
        return _fail(str(e))
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
    _add_template_args(b)
    _add_model_args(b)
    b.set_defaults(func=cmd_labels_build)


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    from .bundle import BundleError
    from .evaluate import evaluate, format_report
    from .providers import ProviderError

    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()] if args.precisions else None
    try:
        report = evaluate(
            args.model,
            args.dataset,
            precisions=precisions,
            templates=_templates_arg(args) or "a photo of a {}.",
            provider=args.provider,
            threads=args.threads,
            limit_per_class=args.limit_per_class,
            thread_pool=args.thread_pool,
        )
    except (BundleError, ProviderError, ValueError) as e:
        return _fail(str(e))
    for _, error in report.failed:
        print(f"clipedge: {error}", file=sys.stderr)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return EXIT_PARTIAL if report.failed else 0


def add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="zero-shot top-1 accuracy on an image-folder dataset, per precision")
    p.add_argument("dataset", help="folder with one sub-folder of images per class (folder name = label)")
    p.add_argument("-m", "--model", default="models/demo", help="bundle folder (default: models/demo)")
    p.add_argument("--precisions", default=None, help="comma-separated (default: all the bundle has)")
    p.add_argument("--provider", default="cpu", help="cpu (default), cuda, auto")
    p.add_argument("--threads", type=int, default=None)
    _add_pool_arg(p)
    p.add_argument("--limit-per-class", type=int, default=None, help="use at most N images per class")
    p.add_argument("--json", action="store_true")
    _add_template_args(p)
    p.set_defaults(func=cmd_eval)


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    try:
        from .serve import Limits, ServeConfig, run_server
    except ImportError as e:
        return _fail(f"serve needs the serve extra ({e.name} is missing): pip install 'clipedge[serve]'")
    from .bundle import BundleError, load_bundle

    try:
        load_bundle(args.model, verify=False)  # fail fast on a wrong path; hashes are checked at load
    except BundleError as e:
        return _fail(str(e))
    config = ServeConfig(
        bundle=args.model,
        precision=args.precision,
        provider=args.provider,
        threads=args.threads,
        thread_pool=args.thread_pool,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.queue_size,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        limits=Limits(max_images=args.max_images, max_labels=args.max_labels, max_label_chars=args.max_label_chars),
        max_pixels=args.max_pixels,
        allow_private_urls=args.allow_private_urls,
        api_key=os.environ.get(args.api_key_env) if args.api_key_env else None,
        cors_origins=tuple(o.strip() for o in (args.cors or "").split(",") if o.strip()),
        template=args.template,
    )
    if args.api_key_env and not config.api_key:
        return _fail(f"--api-key-env {args.api_key_env}: that environment variable is empty")
    run_server(config, args.host, args.port, args.drain_seconds)
    return 0


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="real-time HTTP endpoint (Azure ML contract at /score; needs clipedge[serve])")
    _add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; 0.0.0.0 to expose)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--template", default=None, help='prompt template for labels, e.g. "a photo of a {}."')
    p.add_argument("--max-batch", type=int, default=32, help="images per vision-tower run (default 32)")
    p.add_argument("--max-wait-ms", type=float, default=0.0, help="idle wait for more requests (default 0)")
    p.add_argument("--queue-size", type=int, default=256, help="images waiting before 503 (default 256)")
    p.add_argument("--max-body-mb", type=float, default=32.0, help="request body cap in MiB (default 32)")
    p.add_argument("--max-images", type=int, default=64, help="images per request (default 64)")
    p.add_argument("--max-labels", type=int, default=1000, help="labels per request (default 1000)")
    p.add_argument("--max-label-chars", type=int, default=300, help="characters per label (default 300)")
    p.add_argument("--max-pixels", type=int, default=50_000_000, help="pixels per image, checked before decoding")
    p.add_argument("--allow-private-urls", action="store_true", help="fetch URLs on private/loopback addresses")
    p.add_argument("--api-key-env", default=None, help="name of an environment variable holding the API key")
    p.add_argument("--cors", default=None, help="comma-separated allowed origins (CORS is off by default)")
    p.add_argument("--drain-seconds", type=float, default=30.0, help="graceful shutdown limit (default 30)")
    p.set_defaults(func=cmd_serve)


def cmd_batch(args: argparse.Namespace) -> int:
    from .batch import InputError, OutputError, check_output, done_ids, open_input
    from .bundle import BundleError
    from .labels import LabelFileError
    from .providers import ProviderError

    try:
        if args.engine == "ray":
            from .batch.ray_engine import check_output_dir

            out = check_output_dir(args.output, args.format, args.resume)
        else:
            out = check_output(args.output, args.resume)
        groups = open_input(args.input, args.image_column, args.id_column)
        azure = all(g.labels is not None for g in groups)
        clf = _load_classifier(args)
        labels = _resolve_labels(args, clf, required=not azure)
    except (InputError, OutputError, BundleError, ProviderError, LabelFileError, ValueError) as e:
        return _fail(str(e))
    if args.engine == "ray":
        from .batch.ray_engine import run_ray

        summary = run_ray(args, clf, groups, labels, out)
    else:
        summary = _run_local(args, clf, groups, labels, out, done_ids(out) if args.resume else set())
    for line in summary.errors[:10]:
        print(f"clipedge: {line}", file=sys.stderr)
    print(summary.line(), file=sys.stderr)
    if summary.interrupted:
        print(f"clipedge: interrupted; {out} is valid: run again with --resume to continue", file=sys.stderr)
        return 130
    return EXIT_PARTIAL if summary.failed else 0


def _run_local(args, clf, groups, labels, out, skip):
    from .batch import LocalEngine, Writer
    from .batch.local import progress_bar
    from .batch.sources import count_items

    total = count_items(args.input)
    bar = progress_bar(None if total is None else max(0, total - len(skip)), False if args.no_progress else None)
    writer = Writer(out)
    try:
        engine = LocalEngine(clf, batch_size=args.batch_size, workers=args.workers)
        return engine.run(groups, labels, _templates_arg(args), writer, skip, bar.update if bar else None)
    finally:
        writer.close()
        if bar:
            bar.close()


def add_batch(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("batch", help="score a folder or table of images into a result file (local or Ray)")
    p.add_argument("input", help="folder of images, .csv/.jsonl/.parquet table, or Azure batch folder of CSVs")
    p.add_argument("-o", "--output", required=True, help="results .jsonl/.csv/.parquet (Ray: an output folder)")
    _add_label_args(p)
    _add_template_args(p)
    _add_model_args(p)
    p.add_argument("--image-column", default="image", help="table column with paths, URLs or base64 (default image)")
    p.add_argument("--id-column", default=None, help="table column to use as the row id (default: row number)")
    p.add_argument("--resume", action="store_true", help="skip rows already in the output and append")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=None, help="decode threads (default: cores, 2..8)")
    p.add_argument("--fast-jpeg", action="store_true", help="decode large JPEGs at reduced scale (faster)")
    p.add_argument("--allow-private-urls", action="store_true", help="fetch URLs on private/loopback addresses")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--engine", choices=["local", "ray"], default="local")
    p.add_argument("--ray-address", default=None, help="existing Ray cluster (default: RAY_ADDRESS or a local one)")
    p.add_argument("--format", choices=["parquet", "jsonl", "csv"], default="parquet", help="Ray output files")
    p.set_defaults(func=cmd_batch)


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_classify,
    add_labels,
    add_eval,
    add_batch,
    add_serve,
    add_export,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipedge", description="CLIP zero-shot classification on ONNX Runtime")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
