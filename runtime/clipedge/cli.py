"""The `clipedge` command: it parses arguments into the library's configuration values (LoadOptions,
BatchJob, ServeConfig) and calls the library. Errors are one line on stderr and a non-zero exit: 2 for a
usage or setup error, 1 when some images failed and the rest were done."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

EXIT_ERROR = 2
EXIT_PARTIAL = 1
EXIT_PIPE = 141  # the reader of stdout went away (`clipedge classify ... | head`), as 128 + SIGPIPE


def _fail(message: str, code: int = EXIT_ERROR) -> int:
    print(f"clipedge: error: {message}", file=sys.stderr)
    return code


def known_errors() -> tuple[type[Exception], ...]:
    """The library's one-line errors (imported lazily: `clipedge --help` loads nothing heavy)."""
    from .batch.sinks import OutputError
    from .batch.sources import InputError
    from .bundle import BundleError
    from .labels import LabelError, LabelFileError
    from .options import NoBundleError
    from .providers import ModelLoadError, ProviderError
    from .templates import TemplateError

    return (
        BundleError,
        ProviderError,
        ModelLoadError,
        LabelError,
        LabelFileError,
        TemplateError,
        NoBundleError,
        InputError,
        OutputError,
    )


# -- shared arguments ---------------------------------------------------------------------------------
def _add_model_args(p: argparse.ArgumentParser, pool: str = "shared") -> None:
    p.add_argument(
        "-m",
        "--model",
        default=None,
        help="bundle folder (default: $CLIPEDGE_MODEL, else models/demo in a clipedge checkout)",
    )
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "int8", "fp16"],
        help="auto: the fastest the bundle has for the provider in effect (int8 on CPU, fp16 on CUDA)",
    )
    p.add_argument("--provider", default="auto", help="auto, cpu, cuda, tensorrt (default auto)")
    p.add_argument(
        "--provider-fallback",
        action="store_true",
        help="warn and run on the CPU instead of failing when the requested provider is missing",
    )
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores)")
    p.add_argument("--thread-pool", default=pool, choices=["shared", "session", "session-spin"],
                   help="ONNX Runtime threads: shared (one spinning pool for the process, lowest latency), "
                        "session (a non-spinning pool per session) or session-spin")  # fmt: skip


def _add_url_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-private-urls", action="store_true", help="fetch URLs on private, loopback and reserved addresses"
    )
    p.add_argument(
        "--allow-link-local-urls",
        action="store_true",
        help="fetch URLs on link-local addresses too (e.g. 169.254.169.254, cloud metadata)",
    )
    p.add_argument("--fetch-timeout", type=float, default=5.0,
                   help="seconds for a whole URL fetch: DNS, connect, headers and body (default 5)")  # fmt: skip


def _load_options(args: argparse.Namespace):
    from .options import LoadOptions

    return LoadOptions(
        bundle=args.model,
        precision=args.precision,
        provider=args.provider,
        threads=args.threads,
        strict=not getattr(args, "provider_fallback", False),
        thread_pool=args.thread_pool,
        fast_jpeg=getattr(args, "fast_jpeg", False),
        max_pixels=getattr(args, "max_pixels", None) or 50_000_000,
        allow_private_urls=getattr(args, "allow_private_urls", False),
        allow_link_local_urls=getattr(args, "allow_link_local_urls", False),
        fetch_timeout=getattr(args, "fetch_timeout", 5.0),
    )


def _add_label_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--labels", help='comma-separated labels, e.g. "cat, dog, bird"')
    g.add_argument("--labels-file", help="text file, one label per line")
    g.add_argument("--label-embeddings", help=".npz written by `clipedge labels build`")


def _add_template_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--template", default=None, help='one prompt template, e.g. "a photo of a {}."')
    g.add_argument("--templates", default=None, help="a named template set: none, openai-imagenet")


def _templates_arg(args: argparse.Namespace):
    return args.template if args.template else args.templates


def _label_names(args: argparse.Namespace) -> list[str] | None:
    """Label texts from --labels or --labels-file; None when neither was given. Raises LabelError."""
    from .labels import LabelError, parse_labels, read_labels_file

    if args.labels_file:
        return read_labels_file(args.labels_file)
    if args.labels is not None:
        names = parse_labels(args.labels)
        if not names:
            raise LabelError("no labels: --labels is empty after splitting on commas")
        return names
    return None


def _resolve_labels(args: argparse.Namespace, clf):
    """LabelEmbeddings from --label-embeddings, --labels-file or --labels. Raises LabelError when none."""
    from .labels import LabelError

    if args.label_embeddings:
        return clf.load_labels(args.label_embeddings)
    names = _label_names(args)
    if names is None:
        raise LabelError("no labels: give --labels 'a, b, c', --labels-file or --label-embeddings")
    return clf.labels(names, _templates_arg(args))


# -- classify -------------------------------------------------------------------------------------------
def _format_table(names: list[str], results: list[dict], top_k: int | None) -> str:
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

    from .classifier import format_result
    from .images import ImageError, describe

    try:
        clf = _load_options(args).load()
        label_emb = _resolve_labels(args, clf)
    except known_errors() as e:
        return _fail(str(e))
    names = [describe(src) for src in args.images]
    prepared = clf.prepare_all(args.images)
    results = clf.classify_prepared(prepared, label_emb)
    failed = 0
    for name, p in zip(names, prepared, strict=True):
        if isinstance(p, ImageError):
            failed += 1
            print(f"clipedge: {p}" if str(p).startswith(name) else f"clipedge: {name}: {p}", file=sys.stderr)
    if args.json:
        out = []
        for name, res in zip(names, results, strict=True):
            row = format_result(res["labels"], res["probs"], args.top_k) if res.get("probs") else dict(res)
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
    from .images import load_image

    ok = [i for i, r in enumerate(results) if r.get("probs")]
    if not ok:
        return 0
    from .plot import plot_results

    try:
        images = [load_image(args.images[i]) for i in ok]
        plot_results(images, [names[i] for i in ok], [results[i] for i in ok], args.plot)
    except (RuntimeError, OSError, ValueError) as e:
        return _fail(str(e))
    print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def add_classify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", help="zero-shot classify images (paths, URLs or base64)")
    p.add_argument("images", nargs="+", help="image files, http(s) URLs or base64 strings")
    _add_label_args(p)
    _add_template_args(p)
    _add_model_args(p)
    p.add_argument("--top-k", type=int, default=None, help="show only the k best labels per image (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--plot", default=None, help="write a PNG: each image beside its label probabilities")
    _add_url_args(p)
    p.add_argument("--fast-jpeg", action="store_true",
                   help="decode large JPEGs at reduced scale (3-10x faster; embeddings change slightly)")  # fmt: skip
    p.set_defaults(func=cmd_classify)


# -- labels build ---------------------------------------------------------------------------------------
def cmd_labels_build(args: argparse.Namespace) -> int:
    import time

    from .labels import read_labels_file

    try:
        labels = read_labels_file(args.labels_file)
        clf = _load_options(args).load()
        t0 = time.perf_counter()
        emb = clf.label_embeddings(labels, _templates_arg(args))
        emb.save(args.output)
    except OSError as e:
        return _fail(f"{args.output}: cannot write ({e.strerror or e})")
    except known_errors() as e:
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


# -- eval -----------------------------------------------------------------------------------------------
def cmd_eval(args: argparse.Namespace) -> int:
    import json

    from .evaluate import evaluate, format_report
    from .options import default_bundle

    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()] if args.precisions else None
    try:
        report = evaluate(
            args.model or default_bundle(),
            args.dataset,
            precisions=precisions,
            templates=_templates_arg(args) or "a photo of a {}.",
            provider=args.provider,
            threads=args.threads,
            limit_per_class=args.limit_per_class,
            thread_pool=args.thread_pool,
        )
    except (*known_errors(), ValueError) as e:
        return _fail(str(e))
    for _, error in report.failed:
        print(f"clipedge: {error}", file=sys.stderr)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return EXIT_PARTIAL if report.failed else 0


def add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="zero-shot top-1 accuracy on an image-folder dataset, per precision")
    p.add_argument("dataset", help="folder with one sub-folder of images per class (folder name = label)")
    p.add_argument("-m", "--model", default=None, help="bundle folder (default: $CLIPEDGE_MODEL, else models/demo)")
    p.add_argument("--precisions", default=None, help="comma-separated (default: all the bundle has)")
    p.add_argument("--provider", default="cpu", help="cpu (default), cuda, auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--thread-pool", default="shared", choices=["shared", "session", "session-spin"])
    p.add_argument("--limit-per-class", type=int, default=None, help="use at most N images per class")
    p.add_argument("--json", action="store_true")
    _add_template_args(p)
    p.set_defaults(func=cmd_eval)


# -- serve ----------------------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from .serve import Limits, ServeConfig, run_server
    except ImportError as e:
        return _fail(f"serve needs the serve extra ({e.name} is missing): pip install 'clipedge[serve]'")
    from .bundle import load_bundle
    from .templates import validate_template

    try:
        load = _load_options(args).resolved()
        load_bundle(load.bundle, verify=False)  # a wrong path fails now; hashes are checked at load
        if args.template is not None:
            validate_template(args.template, "--template")
        api_key = os.environ.get(args.api_key_env) if args.api_key_env else None
    except known_errors() as e:
        return _fail(str(e))
    if args.api_key_env and not api_key:
        return _fail(f"--api-key-env {args.api_key_env}: that environment variable is empty")
    config = ServeConfig(
        load=load,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.queue_size,
        max_queue_ms=args.max_queue_ms,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        limits=Limits(max_images=args.max_images, max_labels=args.max_labels, max_label_chars=args.max_label_chars),
        api_key=api_key,
        cors_origins=tuple(o.strip() for o in (args.cors or "").split(",") if o.strip()),
        template=args.template,
        pixel_budget=args.pixel_budget,
        client_timeout=args.client_timeout,
    )
    error = run_server(config, args.host, args.port, args.drain_seconds)
    return _fail(f"model failed to load: {error}", 1) if error else 0


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="real-time HTTP endpoint (Azure ML contract at /score; needs clipedge[serve])")
    _add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; 0.0.0.0 to expose)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--template", default=None, help='prompt template for labels, e.g. "a photo of a {}."')
    p.add_argument("--max-batch", type=int, default=32, help="images per vision-tower run (default 32)")
    p.add_argument("--max-wait-ms", type=float, default=0.0, help="idle wait for more requests (default 0)")
    p.add_argument("--max-queue-ms", type=float, default=1000.0,
                   help="refuse (503) when the admitted work would take longer than this (default 1000)")  # fmt: skip
    p.add_argument("--queue-size", type=int, default=256, help="images admitted at once at most (default 256)")
    p.add_argument("--max-body-mb", type=float, default=32.0, help="request body cap in MiB (default 32)")
    p.add_argument("--max-images", type=int, default=64, help="images per request (default 64)")
    p.add_argument("--max-labels", type=int, default=1000, help="labels per request (default 1000)")
    p.add_argument("--max-label-chars", type=int, default=300, help="characters per label (default 300)")
    p.add_argument("--max-pixels", type=int, default=50_000_000, help="pixels per image, checked before decoding")
    p.add_argument("--pixel-budget", type=int, default=100_000_000,
                   help="pixels being decoded at once, across requests (default 100 million)")  # fmt: skip
    p.add_argument("--client-timeout", type=float, default=10.0,
                   help="seconds for a request's headers, and for each gap in its body (default 10)")  # fmt: skip
    _add_url_args(p)
    p.add_argument("--api-key-env", default=None, help="name of an environment variable holding the API key")
    p.add_argument("--cors", default=None, help="comma-separated allowed origins (CORS is off by default)")
    p.add_argument("--drain-seconds", type=float, default=30.0, help="graceful shutdown limit (default 30)")
    p.set_defaults(func=cmd_serve)


# -- batch ----------------------------------------------------------------------------------------------
def cmd_batch(args: argparse.Namespace) -> int:
    from .batch import BatchJob, prepare_job, run_job

    try:
        names = _label_names(args)
        job = BatchJob(
            input=args.input,
            output=args.output,
            load=_load_options(args),
            labels=tuple(names) if names else None,
            label_embeddings=args.label_embeddings,
            templates=_templates_arg(args),
            layout=args.layout,
            image_column=args.image_column,
            id_column=args.id_column,
            resume=args.resume,
            batch_size=args.batch_size,
            workers=args.workers,
            progress=False if args.no_progress else None,
            engine=args.engine,
            ray_address=args.ray_address,
        )
        prepared = prepare_job(job)
    except known_errors() as e:
        return _fail(str(e))
    summary, out = run_job(job, prepared)
    for line in summary.errors[:10]:
        print(f"clipedge: {line}", file=sys.stderr)
    print(summary.line(), file=sys.stderr)
    if summary.interrupted:
        print(f"clipedge: interrupted; {out} is valid: run again with --resume to continue", file=sys.stderr)
        return 130
    return EXIT_PARTIAL if summary.failed else 0


def add_batch(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("batch", help="score a folder or table of images into a result file (local or Ray)")
    p.add_argument("input", help="folder of images, .csv/.jsonl/.parquet table, or Azure batch folder of CSVs")
    p.add_argument("-o", "--output", required=True,
                   help="results .jsonl/.csv/.parquet (Azure's layout: a .csv or a folder)")  # fmt: skip
    p.add_argument("--layout", choices=["azure", "native"], default=None,
                   help="azure: Azure's predictions.csv (default for its input); native: our rows")  # fmt: skip
    _add_label_args(p)
    _add_template_args(p)
    _add_model_args(p)
    p.add_argument("--image-column", default="image", help="table column with paths, URLs or base64 (default image)")
    p.add_argument("--id-column", default=None, help="table column to use as the row id (default: row number)")
    p.add_argument("--resume", action="store_true", help="skip rows already in the output and append")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=None, help="decode threads (default: cores, 2..8)")
    p.add_argument("--fast-jpeg", action="store_true", help="decode large JPEGs at reduced scale (faster)")
    _add_url_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--engine", choices=["local", "ray"], default="local")
    p.add_argument("--ray-address", default=None, help="existing Ray cluster (default: RAY_ADDRESS or a local one)")
    p.set_defaults(func=cmd_batch)


# -- export ---------------------------------------------------------------------------------------------
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
    try:
        return args.func(args)
    except BrokenPipeError:
        # stdout was closed by its reader: stop quietly (Python's documented recipe for SIGPIPE)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_PIPE


if __name__ == "__main__":
    sys.exit(main())
