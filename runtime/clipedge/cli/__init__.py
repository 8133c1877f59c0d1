"""The `clipedge` command: it parses arguments into the library's configuration values (LoadOptions,
BatchJob, ServeConfig) and calls the library, one module per command. Errors are one line on stderr and a
non-zero exit: 2 for a usage or setup error, 1 when some images failed and the rest were done."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from .batch import add_batch
from .bench import add_bench
from .classify import add_classify, add_eval, add_labels
from .common import EXIT_ERROR, EXIT_PARTIAL, EXIT_PIPE
from .export import add_export
from .pack import add_calibrate, add_pack
from .serve import add_serve

__all__ = ["EXIT_ERROR", "EXIT_PARTIAL", "EXIT_PIPE", "build_parser", "main"]

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_classify,
    add_labels,
    add_eval,
    add_batch,
    add_serve,
    add_export,
    add_pack,
    add_calibrate,
    add_bench,
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
    except KeyboardInterrupt:  # Ctrl-C before a command handles it itself: no traceback
        print("clipedge: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # stdout was closed by its reader: stop quietly (Python's documented recipe for SIGPIPE)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_PIPE
