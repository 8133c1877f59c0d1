"""`clipedge export` (needs the export extra)."""

from __future__ import annotations

import argparse
import sys

from .common import (
    fail,
)


# export ---------------------------------------------------------------------------------------------
def cmd_export(args: argparse.Namespace) -> int:
    try:
        from clipedge_export.errors import ExportError
        from clipedge_export.export import export_bundle
    except ImportError as e:
        return fail(f"export needs the export extra ({e.name} is missing): pip install 'clipedge[export]'")
    try:
        manifest = export_bundle(
            args.source,
            args.output,
            precisions=args.precisions,
            opset=args.opset,
            revision=args.revision,
            calibration=args.calibration,
            log=lambda m: print(m, file=sys.stderr),
        )
    except ExportError as e:
        return fail(str(e))
    except KeyboardInterrupt:
        return fail("interrupted; nothing was written", 130)
    sizes = ", ".join(f"{p} {(v.vision.bytes + v.text.bytes) / 1e6:.1f} MB" for p, v in manifest.precisions.items())
    print(f"wrote {args.output} ({sizes})")
    return 0


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a Hugging Face CLIP checkpoint to a bundle (needs clipedge[export])")
    p.add_argument("source", help="hub id (e.g. openai/clip-vit-base-patch32) or local checkpoint folder")
    p.add_argument("-o", "--output", required=True, help="bundle folder to create (must not exist or be empty)")
    p.add_argument(
        "--precisions",
        default="fp32,int8,fp16,int8-static",
        help="comma-separated from fp32, int8, fp16, int8-static, fp32-unfused (default: all but fp32-unfused)",
    )
    p.add_argument(
        "--calibration",
        default=None,
        help="folder of images to calibrate int8-static on (default: the set shipped with the export extra)",
    )
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    p.set_defaults(func=cmd_export)
