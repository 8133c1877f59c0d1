"""`clipedge serve`: arguments into a ServeConfig, then the server."""

from __future__ import annotations

import argparse
import os

from .common import (
    add_model_args,
    add_url_args,
    fail,
    known_errors,
    load_options,
    non_negative_float,
    port,
    positive_float,
    positive_int,
)


# serve ----------------------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from ..serve import Limits, ServeConfig, run_server
    except ImportError as e:
        return fail(f"serve needs the serve extra ({e.name} is missing): pip install 'clipedge[serve]'")
    from ..bundle import load_bundle
    from ..templates import validate_template

    try:
        load = load_options(args).resolved()
        load_bundle(str(load.bundle), verify=False)  # a wrong path fails now; hashes are checked at load
        if args.template is not None:
            validate_template(args.template, "--template")
        if args.label_embeddings:
            from ..labels import LabelEmbeddings

            LabelEmbeddings.load(args.label_embeddings)  # a wrong file fails now; its bundle is checked at load
        api_key = os.environ.get(args.api_key_env) if args.api_key_env else None
    except known_errors() as e:
        return fail(str(e))
    if args.api_key_env and not api_key:
        return fail(f"--api-key-env {args.api_key_env}: that environment variable is empty")
    try:
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
            max_request_pixels=args.max_request_pixels,
            decode_timeout=args.decode_timeout,
            **({"decode_workers": args.decode_workers} if args.decode_workers else {}),
            client_timeout=args.client_timeout,
            client_header=args.client_header,
        )
    except ValueError as e:  # a value the endpoint refuses (e.g. more decoding processes than this machine takes)
        return fail(str(e).removeprefix("ServeConfig: ").replace("decode_workers", "--decode-workers"))
    error = run_server(config, args.host, args.port, args.drain_seconds)
    return fail(f"model failed to load: {error}", 1) if error else 0


def add_serve(sub: argparse._SubParsersAction) -> None:
    from ..options import DEFAULTS
    from ..serve.config import DRAIN_SECONDS, HOST, PORT, Limits, ServeConfig

    serve, limits = ServeConfig(decode_workers=1), Limits()  # the library's defaults (decode_workers: per core)
    mib = 1024 * 1024
    p = sub.add_parser("serve", help="real-time HTTP endpoint (Azure ML contract at /score; needs clipedge[serve])")
    add_model_args(p)
    p.add_argument("--host", default=HOST, help="bind address (default %(default)s; 0.0.0.0 to expose)")
    p.add_argument("--port", type=port, default=PORT, help="default %(default)s")
    p.add_argument("--template", default=serve.template, help='prompt template for labels, e.g. "a photo of a {}."')
    p.add_argument("--label-embeddings", default=DEFAULTS.label_embeddings,
                   help="labels known in advance (.npz from `labels build` or `calibrate`): no text-tower work for "
                        "them; with thresholds, multi-label requests (an edge pack's labels need no flag)")  # fmt: skip
    p.add_argument("--max-batch", type=positive_int, default=serve.max_batch,
                   help="images per vision-tower run (default %(default)s)")  # fmt: skip
    p.add_argument("--max-wait-ms", type=non_negative_float, default=serve.max_wait_ms,
                   help="idle wait for more requests (default %(default)s)")  # fmt: skip
    p.add_argument("--max-queue-ms", type=positive_float, default=serve.max_queue_ms,
                   help="refuse (503) when the admitted work would take longer than this "
                        "(default %(default)s)")  # fmt: skip
    p.add_argument("--queue-size", type=positive_int, default=serve.max_queue,
                   help="images admitted at once at most (default %(default)s)")  # fmt: skip
    p.add_argument("--max-body-mb", type=positive_float, default=serve.max_body_bytes / mib,
                   help="request body cap in MiB (default %(default)s)")  # fmt: skip
    p.add_argument("--max-images", type=positive_int, default=limits.max_images,
                   help="images per request (default %(default)s)")  # fmt: skip
    p.add_argument("--max-labels", type=positive_int, default=limits.max_labels,
                   help="labels per request (default %(default)s)")  # fmt: skip
    p.add_argument("--max-label-chars", type=positive_int, default=limits.max_label_chars,
                   help="characters per label (default %(default)s)")  # fmt: skip
    p.add_argument("--max-pixels", type=positive_int, default=DEFAULTS.max_pixels,
                   help="pixels per image, checked before decoding (default %(default)s)")  # fmt: skip
    p.add_argument("--pixel-budget", type=positive_int, default=serve.pixel_budget,
                   help="pixels being decoded at once, across requests (default %(default)s)")  # fmt: skip
    p.add_argument("--max-request-pixels", type=positive_int, default=serve.max_request_pixels,
                   help="pixels in one request's images, read from their headers before decoding (400 above; "
                        "default %(default)s)")  # fmt: skip
    p.add_argument("--decode-timeout", type=positive_float, default=serve.decode_timeout,
                   help="seconds a decoding job may run, plus 0.05 s a megapixel; then its decoder is killed and "
                        "replaced, and the image that hung it gets a 400 (default %(default)s)")  # fmt: skip
    p.add_argument("--decode-workers", type=positive_int, default=None,
                   help="processes decoding and preprocessing images (default one per core, at most 4; about "
                        "40 MB each; more than the cores warns, more than twice the cores is refused)")  # fmt: skip
    p.add_argument("--client-timeout", type=positive_float, default=serve.client_timeout,
                   help="seconds for a request's headers, and for each gap in its body "
                        "(default %(default)s)")  # fmt: skip
    add_url_args(p)
    p.add_argument("--api-key-env", default=None,
                   help="name of an environment variable holding the API key, or several separated by commas (one "
                        "per client: clients are told apart by their key)")  # fmt: skip
    p.add_argument("--client-header", default=None,
                   help="behind a reverse proxy that sets it: the header whose first address names the client "
                        "(e.g. X-Forwarded-For), for the fair share of work; never set it without such a proxy "
                        "(clients could then pick their own identity)")  # fmt: skip
    p.add_argument("--cors", default=None, help="comma-separated allowed origins (CORS is off by default)")
    p.add_argument("--drain-seconds", type=positive_float, default=DRAIN_SECONDS,
                   help="graceful shutdown limit (default %(default)s)")  # fmt: skip
    p.set_defaults(func=cmd_serve)
