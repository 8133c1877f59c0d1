"""`clipedge bench`: arguments into LoadOptions and BenchSettings, clipedge.benchmark, then its report as
Markdown (and a plot)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

from .common import fail, known_errors, load_options, positive_float, positive_int


def batch_sizes(text: str) -> tuple[int, ...]:
    parts = [x.strip() for x in text.split(",") if x.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("no batch sizes (e.g. 1,8,32)")
    return tuple(positive_int(x) for x in parts)


# -- the report: Markdown and a plot -----------------------------------------------------------------------
def _cell(t: dict[str, Any]) -> list[str]:
    return [f"{t['p50_ms']:.1f} ({t['p95_ms']:.1f}/{t['p99_ms']:.1f})", f"{t['img_per_s']:.1f}"]


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: a header line, one table row per combination and path, what was not measured."""
    from ..benchmark import label

    m, v, s = report["machine"], report["versions"], report["settings"]
    engines = ", ".join(f"{k} {v[k]}" for k in ("onnxruntime", "onnxruntime-gpu", "openvino") if k in v)
    images = s["images"]
    what = (
        f"{images['count']} generated {images['size']} JPEGs" if images["source"] == "generated" else images["source"]
    )
    batches = s["batch_sizes"]
    head = ["combination", "path", "cold start s", "RSS MB (first answer / peak)"]
    for b in batches:
        head += [f"b{b} p50 ms (p95/p99)", f"b{b} img/s"]
    lines = [
        f"`clipedge bench` {report['date'][:10]} on {m.get('cpu', '?')} ({m['cpus']} cores), {engines}; "
        f"bundle {report['bundle']['path']} ({report['bundle']['hash'][:12]}); {what}, "
        f"{len(report['rows'][0]['labels'])} labels; at least {s['seconds']:g} s and {s['min_runs']} runs per cell "
        "after warm-up.",
        "",
        "| " + " | ".join(head) + " |",
        "| " + " | ".join("---" for _ in head) + " |",
    ]
    for r in report["rows"]:
        name = label(r) + (" (default)" if r["default"] else "")
        first = [
            name,
            "classify",
            f"{r['cold_start_s']:.2f}",
            f"{r['rss_first_answer_mb']:.0f} / {r['peak_rss_mb']:.0f}",
        ]
        for path, cells in (("classify", first), ("tower", ["", "tower", "", ""])):
            for t in r[path]:
                cells = cells + _cell(t)
            lines.append("| " + " | ".join(cells) + " |")
    reasons: dict[str, list[str]] = {}
    for c in report["skipped"]:
        reasons.setdefault(c["skipped"], []).append(label(c))
    if reasons:
        lines += ["", "Not measured: " + "; ".join(f"{', '.join(n)} ({why})" for why, n in reasons.items()) + "."]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], out: str | Path) -> Path:
    """A PNG bar chart: p50 latency at the smallest batch and throughput at the largest, per combination,
    for the classify path and the tower alone.

    Raises:
        RuntimeError: matplotlib is not installed (the `plot` extra).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install 'clipedge[plot]'") from None
    from ..benchmark import label

    rows = report["rows"]
    names = [label(r) + (" *" if r["default"] else "") for r in rows]
    x = list(range(len(rows)))
    fig, axes = plt.subplots(1, 2, figsize=(4 + 1.6 * len(rows), 4.5))
    for ax, idx, key, title in ((axes[0], 0, "p50_ms", "p50 latency (ms)"), (axes[1], -1, "img_per_s", "images/s")):
        for shift, path, colour in ((-0.2, "classify", "#4C72B0"), (0.2, "tower", "#DD8452")):
            ax.bar([i + shift for i in x], [r[path][idx][key] for r in rows], 0.4, label=path, color=colour)
        ax.set_title(f"{title} at batch {rows[0]['classify'][idx]['batch']}")
        ax.set_xticks(x, names, rotation=20, ha="right", fontsize=8)
        ax.legend(fontsize=8)
    fig.suptitle(f"clipedge bench: {Path(report['bundle']['path']).name} on {report['machine'].get('cpu', '?')}")
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def cmd_bench(args: argparse.Namespace) -> int:
    from ..benchmark import BenchmarkError, BenchSettings, run_benchmark
    from ..labels import LabelError, parse_labels

    if args.plot and importlib.util.find_spec("matplotlib") is None:
        return fail("--plot needs matplotlib: pip install 'clipedge[plot]'")
    try:
        load = load_options(args).resolved()
        labels = None
        if args.labels is not None:
            labels = tuple(parse_labels(args.labels))
            if not labels:
                raise LabelError("no labels: --labels is empty after splitting on commas")
        fields = {"batch_sizes": args.batch_sizes, "images": args.images, "labels": labels}
        if args.seconds is not None:
            fields["seconds"] = args.seconds
        settings = BenchSettings.quick(**fields) if args.quick else BenchSettings(**fields)

        def log(message: str) -> None:
            print(f"clipedge: {message}", file=sys.stderr, flush=True)

        report = run_benchmark(load, settings, log)
    except known_errors(BenchmarkError) as e:
        return fail(str(e))
    text = markdown(report)
    print(text, end="")
    try:
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        if args.markdown:
            Path(args.markdown).write_text(text)
        if args.plot:
            plot(report, args.plot)
    except (OSError, RuntimeError) as e:
        return fail(str(e))
    return 0


def add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="measure every engine, provider and precision this machine runs for a bundle: cold start, "
        "memory, latency and throughput",
    )
    p.add_argument(
        "-m",
        "--model",
        default=None,
        help="bundle folder (default: $CLIPEDGE_MODEL, else models/demo in a clipedge checkout)",
    )
    p.add_argument("--precision", default="auto",
                   choices=["auto", "fp32", "int8", "fp16", "int8-static", "fp32-unfused"],
                   help="measure only this precision (default auto: every one the bundle has)")  # fmt: skip
    p.add_argument("--provider", default="auto", help="only this provider: cpu, cuda, tensorrt (default: every one)")
    p.add_argument("--engine", default="auto", choices=["auto", "onnxruntime", "openvino"],
                   help="only this engine (default: every one installed)")  # fmt: skip
    p.add_argument("--threads", type=positive_int, default=None, help="intra-op threads (default: all cores)")
    p.add_argument("--thread-pool", default="shared", choices=["shared", "session", "session-spin"],
                   help="ONNX Runtime threads, as for classify (default shared)")  # fmt: skip
    p.add_argument("--batch-sizes", type=batch_sizes, default=(1, 8, 32), help="comma-separated (default 1,8,32)")
    p.add_argument(
        "--seconds",
        type=positive_float,
        default=None,
        help="at least this long per batch size and path, after warm-up (default 2; --quick 0.05)",
    )
    p.add_argument("--quick", action="store_true", help="short cells (a smoke test: rough figures)")
    p.add_argument("--images", default=None, help="folder of images to use (default: generated 640x480 JPEGs)")
    p.add_argument("--labels", default=None,
                   help="comma-separated labels (default: the model's own, else a handful)")  # fmt: skip
    p.add_argument("--json", default=None, metavar="FILE", help="write the full report as JSON")
    p.add_argument("--markdown", default=None, metavar="FILE", help="write the Markdown table (also printed)")
    p.add_argument("--plot", default=None, metavar="FILE.png", help="bar chart of latency and throughput (matplotlib)")
    p.set_defaults(func=cmd_bench)
