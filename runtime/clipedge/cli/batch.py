"""`clipedge batch`: arguments into a BatchJob, then the job."""

from __future__ import annotations

import argparse
import signal
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
    positive_float,
    positive_int,
)


# batch ----------------------------------------------------------------------------------------------
def cmd_batch(args: argparse.Namespace) -> int:
    from ..batch import BatchJob, prepare_job, run_job

    try:
        job = BatchJob(
            input=args.input,
            output=args.output,
            load=load_options(args),
            labels=label_request(args),
            layout=args.layout,
            image_column=args.image_column,
            id_column=args.id_column,
            resume=args.resume,
            batch_size=args.batch_size,
            workers=args.workers,
            decode_timeout=args.decode_timeout,
            progress=False if args.no_progress else None,
            runner=args.runner,
            ray_address=args.ray_address,
        )
        prepared = prepare_job(job)
    except known_errors() as e:
        return fail(str(e))
    previous = signal.signal(signal.SIGTERM, _stop)  # `kill`, `docker stop`, a pre-empted node: as Ctrl-C
    try:
        summary, out = run_job(job, prepared)
    finally:
        signal.signal(signal.SIGTERM, previous)
    for line in summary.errors[:10]:
        print(f"clipedge: {line}", file=sys.stderr)
    print(summary.line(), file=sys.stderr)
    if summary.interrupted:
        print(f"clipedge: interrupted; {out} is valid: run again with --resume to continue", file=sys.stderr)
        return 130
    return EXIT_PARTIAL if summary.failed or summary.failed_files else 0


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def add_batch(sub: argparse._SubParsersAction) -> None:
    from ..batch.config import LAYOUTS, RUNNERS, BatchJob

    BATCH = BatchJob("", "")  # the library's defaults
    p = sub.add_parser("batch", help="score a folder or table of images into a result file (local or Ray)")
    p.add_argument("input", help="folder of images, .csv/.jsonl/.parquet table, or Azure batch folder of CSVs")
    p.add_argument("-o", "--output", required=True,
                   help="results .jsonl/.csv/.parquet (Azure's layout: a .csv or a folder)")  # fmt: skip
    p.add_argument("--layout", choices=LAYOUTS, default=None,
                   help="azure: Azure's predictions.csv (default for its input); native: our rows")  # fmt: skip
    add_label_args(
        p,
        "score each label on its own against its calibrated threshold: probs are then each label's "
        "score (present at 0.5 or above; they need not sum to 1); needs thresholds from `clipedge calibrate`",
    )
    add_template_args(p)
    add_model_args(p)
    p.add_argument(
        "--image-column", default=BATCH.image_column, help="table column with paths, URLs or base64 (default image)"
    )
    p.add_argument("--id-column", default=None, help="table column to use as the row id (default: row number)")
    p.add_argument("--resume", action="store_true", help="skip rows already in the output and append")
    p.add_argument("--batch-size", type=positive_int, default=BATCH.batch_size, help="default %(default)s")
    p.add_argument("--workers", type=positive_int, default=BATCH.workers,
                   help="threads that fetch URLs and wait for decoding (default: cores, 2..8)")  # fmt: skip
    p.add_argument("--decode-timeout", type=positive_float, default=BATCH.decode_timeout,
                   help="seconds an image's decoding may run, plus 0.05 s a megapixel; then its decoding process "
                        "is killed and replaced, and the image is its row's error (default %(default)s)")  # fmt: skip
    p.add_argument("--fast-jpeg", action="store_true", help="decode large JPEGs at reduced scale (faster)")
    add_url_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--runner", choices=RUNNERS, default=BATCH.runner,
                   help="local (default) or ray (Ray Data; clipedge[ray])")  # fmt: skip
    p.add_argument("--ray-address", default=None, help="existing Ray cluster (default: RAY_ADDRESS or a local one)")
    p.set_defaults(func=cmd_batch)
