"""What the commands share: exit codes, one-line errors, argument groups and their parsing into
LoadOptions and labels."""

from __future__ import annotations

import argparse
import math
import sys

EXIT_ERROR = 2
EXIT_PARTIAL = 1
EXIT_PIPE = 141  # the reader of stdout went away (`clipedge classify ... | head`), as 128 + SIGPIPE


def fail(message: str, code: int = EXIT_ERROR) -> int:
    print(f"clipedge: error: {message}", file=sys.stderr)
    return code


def known_errors() -> tuple[type[Exception], ...]:
    """The library's one-line errors (imported lazily: `clipedge --help` loads nothing heavy)."""
    from ..batch.job import JobError
    from ..batch.sinks import OutputError
    from ..batch.sources import InputError
    from ..bundle import BundleError
    from ..labels import LabelError, LabelFileError
    from ..options import NoBundleError
    from ..providers import ModelLoadError, ProviderError
    from ..templates import TemplateError

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
        JobError,
    )


# -- argument types: a bad number is a usage error naming the option, never a traceback later
def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be 1 or more")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be a finite number above 0")
    return value


def non_negative_float(text: str) -> float:
    value = 0.0 if text.strip() in ("0", "0.0") else positive_float(text)
    return value


def port(text: str) -> int:
    value = positive_int(text) if text != "0" else 0
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port (0-65535)")
    return value


def template(text: str) -> str:
    from ..templates import TemplateError, validate_template

    try:
        return validate_template(text, "the template")
    except TemplateError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def template_set(text: str) -> str:
    from ..templates import NAMED

    if text not in NAMED:
        raise argparse.ArgumentTypeError(f"unknown template set {text!r} (choose from {', '.join(NAMED)})")
    return text


# -- shared arguments ---------------------------------------------------------------------------------
ENGINES = ["auto", "onnxruntime", "openvino"]


def add_model_args(p: argparse.ArgumentParser, pool: str = "shared", engines: list[str] = ENGINES) -> None:
    p.add_argument(
        "-m",
        "--model",
        default=None,
        help="bundle or edge-pack folder (default: $CLIPEDGE_MODEL, else models/demo in a clipedge checkout)",
    )
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "int8", "fp16", "int8-static", "fp32-unfused"],
        help="auto: the fastest the bundle has where it runs (docs/runtime.md, 'Precision, provider, engine')",
    )
    p.add_argument("--provider", default="auto", help="auto, cpu, cuda, tensorrt (default auto)")
    p.add_argument(
        "--engine",
        default="auto",
        choices=engines,
        help="auto: OpenVINO on int8-static when the openvino extra is installed and the CPU runs it, "
        "else ONNX Runtime",
    )
    p.add_argument(
        "--provider-fallback",
        action="store_true",
        help="warn and run on the CPU (ONNX Runtime) instead of failing when the requested provider or "
        "engine is missing",
    )
    p.add_argument(
        "--threads", type=positive_int, default=None, help="ONNX Runtime intra-op threads (default: all cores)"
    )
    p.add_argument("--thread-pool", default=pool, choices=["shared", "session", "session-spin"],
                   help="ONNX Runtime threads: shared (one spinning pool for the process, lowest latency), "
                        "session (a non-spinning pool per session) or session-spin")  # fmt: skip


def add_url_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-private-urls", action="store_true", help="fetch URLs on private, loopback and reserved addresses"
    )
    p.add_argument(
        "--allow-link-local-urls",
        action="store_true",
        help="fetch URLs on link-local addresses too (e.g. 169.254.169.254, cloud metadata)",
    )
    p.add_argument("--fetch-timeout", type=positive_float, default=5.0,
                   help="seconds for a whole URL fetch: DNS, connect, headers and body (default 5)")  # fmt: skip


def load_options(args: argparse.Namespace):
    from ..options import LoadOptions

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
        engine=getattr(args, "engine", "auto"),
    )


def add_label_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--labels", help='comma-separated labels, e.g. "cat, dog, bird"')
    g.add_argument("--labels-file", help="text file, one label per line")
    g.add_argument(
        "--label-embeddings",
        help=".npz written by `clipedge labels build` or `clipedge calibrate` (an edge pack "
        "needs none of these: it has its labels)",
    )


def add_template_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--template", type=template, default=None, help='one prompt template, e.g. "a photo of a {}."')
    g.add_argument("--templates", type=template_set, default=None, help="a named template set: none, openai-imagenet")


def templates_arg(args: argparse.Namespace):
    return args.template if args.template else args.templates


def label_names(args: argparse.Namespace) -> list[str] | None:
    """Label texts from --labels or --labels-file; None when neither was given. Raises LabelError."""
    from ..labels import LabelError, parse_labels, read_labels_file

    if args.labels_file:
        return read_labels_file(args.labels_file)
    if args.labels is not None:
        names = parse_labels(args.labels)
        if not names:
            raise LabelError("no labels: --labels is empty after splitting on commas")
        return names
    return None


def resolve_labels(args: argparse.Namespace, clf):
    """LabelEmbeddings from --label-embeddings, --labels-file or --labels. Raises LabelError when none."""
    from ..labels import LabelError

    if args.label_embeddings:
        if args.template or args.templates:
            raise LabelError(
                "--template/--templates have no effect with --label-embeddings (the file holds its templates)"
            )
        return clf.load_labels(args.label_embeddings)
    names = label_names(args)
    if names is None and clf.packed_labels is None:  # only an edge pack has labels of its own
        raise LabelError("no labels: give --labels 'a, b, c', --labels-file or --label-embeddings")
    return clf.labels(names, templates_arg(args))
