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


def known_errors(*more: type[Exception]) -> tuple[type[Exception], ...]:
    """The library's one-line errors, and `more` (imported lazily: `clipedge --help` loads nothing heavy)."""
    from ..batch.config import JobError
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
        *more,
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


# -- shared arguments: choices and defaults are the library's (clipedge.options) --------------------------
def add_model_args(p: argparse.ArgumentParser, pool: str = "shared", precision: bool = True) -> None:
    """-m, --precision (unless the command sets precisions itself), --provider, --engine,
    --provider-fallback, --threads, --thread-pool (default `pool`: the CLI owns its process)."""
    from ..options import DEFAULTS, ENGINES, POOLS, PRECISION_CHOICES, PROVIDERS

    p.add_argument(
        "-m",
        "--model",
        default=None,
        help="bundle or edge-pack folder (default: $CLIPEDGE_MODEL, else models/demo in a clipedge checkout)",
    )
    if precision:
        p.add_argument(
            "--precision",
            default=DEFAULTS.precision,
            choices=PRECISION_CHOICES,
            help="auto: the fastest the bundle has where it runs (docs/runtime.md, 'Precision, provider, engine')",
        )
    p.add_argument("--provider", default=DEFAULTS.provider, help=f"{', '.join(PROVIDERS)} (default %(default)s)")
    p.add_argument(
        "--engine",
        default=DEFAULTS.engine,
        choices=ENGINES,
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
        "--threads",
        type=positive_int,
        default=DEFAULTS.threads,
        help="ONNX Runtime intra-op threads (default: all cores)",
    )
    p.add_argument("--thread-pool", default=pool, choices=POOLS,
                   help="ONNX Runtime threads: shared (one spinning pool for the process, lowest latency), "
                        "session (a non-spinning pool per session) or session-spin (default %(default)s)")  # fmt: skip


def add_url_args(p: argparse.ArgumentParser) -> None:
    from ..options import DEFAULTS

    p.add_argument(
        "--allow-private-urls", action="store_true", help="fetch URLs on private, loopback and reserved addresses"
    )
    p.add_argument(
        "--allow-link-local-urls",
        action="store_true",
        help="fetch URLs on link-local addresses too (e.g. 169.254.169.254, cloud metadata)",
    )
    p.add_argument(
        "--fetch-timeout",
        type=positive_float,
        default=DEFAULTS.fetch_timeout,
        help="seconds for a whole URL fetch: DNS, connect, headers and body (default %(default)s)",
    )


def load_options(args: argparse.Namespace):
    """LoadOptions from the parsed arguments: each option a command offers, under the field's own name (the
    bundle from -m/--model, `strict` from --provider-fallback); the others keep the library's defaults."""
    from dataclasses import fields

    from ..options import LoadOptions

    given = vars(args)
    values = {f.name: given[f.name] for f in fields(LoadOptions) if f.name in given}
    values["bundle"] = given.get("model")
    if "provider_fallback" in given:
        values["strict"] = not given["provider_fallback"]
    return LoadOptions(**values)


MULTI_LABEL_HELP = (
    "judge each label on its own against its calibrated threshold (score >= 0.5: present; an image may get none); "
    "needs thresholds from `clipedge calibrate` or a pack made with them"
)


def add_label_args(p: argparse.ArgumentParser, multi_label: str | None = MULTI_LABEL_HELP) -> None:
    """--labels or --labels-file, --label-embeddings, and --multi-label (with its help) unless None."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--labels", help='comma-separated labels, e.g. "cat, dog, bird"')
    g.add_argument("--labels-file", help="text file, one label per line")
    p.add_argument(
        "--label-embeddings",
        help=".npz written by `clipedge labels build` or `clipedge calibrate`: its labels, or with --labels the "
        "subset named (an edge pack has labels of its own)",
    )
    if multi_label:
        p.add_argument("--multi-label", action="store_true", help=multi_label)


def add_template_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--template", type=template, default=None, help='one prompt template, e.g. "a photo of a {}."')
    g.add_argument("--templates", type=template_set, default=None, help="a named template set: none, openai-imagenet")


def templates_arg(args: argparse.Namespace):
    return args.template if args.template else args.templates


def label_request(args: argparse.Namespace):
    """The labels the arguments ask for, as the one LabelRequest every command fills: names from --labels
    or --labels-file (None: the label embeddings' or the model's own), templates, multi-label. Label
    embeddings (--label-embeddings) are a load option: `load_options`. Raises LabelError."""
    from ..label_rules import LabelRequest
    from ..labels import parse_labels, read_labels_file

    names = None
    if getattr(args, "labels_file", None):
        names = read_labels_file(args.labels_file)
    elif getattr(args, "labels", None) is not None:
        names = parse_labels(args.labels)
    return LabelRequest(
        None if names is None else tuple(names), None, templates_arg(args), getattr(args, "multi_label", False)
    )
