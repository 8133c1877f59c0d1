"""`python -m bench`: latency, throughput, memory, cold start and fidelity of every provider x precision,
with the PyTorch eager baseline in the same run; JSON + Markdown + PNG plots, optionally into the README.

    python -m bench                                  # demo bundle + ViT-B/32 architecture (random weights)
    python -m bench --bundle B [--checkpoint CKPT]   # any bundle (CKPT: its Hugging Face folder, for eager)
    python -m bench --vitb32 --threads 1,2 --pools shared,session,session-spin --doc docs/benchmarks.md --section cpu

The ViT-B/32 model is the exact architecture with random weights, built and exported offline on first use
(about a minute) into --cache. Latency does not depend on weight values; fidelity on random weights is not
informative, so agreement is judged on the trained demo model.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from clipedge.threads import POOLS

from .suite import PROVIDERS, ROOT, Model, run


def csv(kind=str):
    return lambda s: [kind(x.strip()) for x in s.split(",") if x.strip()]


def build_vitb32(cache: Path, log) -> Model:
    """The exact ViT-B/32 architecture with random weights, exported once into `cache` and reused."""
    ckpt, bundle = cache / "vitb32-checkpoint", cache / "vitb32-bundle"
    # in child processes: the export peaks at ~5 GB, which would stay in this process for the whole run
    if not (ckpt / "config.json").is_file():
        log(f"building a random-weight ViT-B/32 checkpoint in {ckpt}")
        subprocess.run([sys.executable, "-m", "clipedge_export.random_checkpoint", str(ckpt)], check=True)
    if not (bundle / "manifest.json").is_file():
        log(f"exporting it to {bundle} (about a minute)")
        subprocess.run([sys.executable, "-m", "clipedge.cli", "export", str(ckpt), "-o", str(bundle)], check=True)
    return Model("vit-b-32", bundle, ckpt, "exact ViT-B/32 architecture, random weights (timings only)", True)


def bundle_model(path: str, checkpoint: str | None) -> Model:
    from clipedge.bundle import load_bundle

    bundle = load_bundle(path, verify=False)
    ckpt = Path(checkpoint) if checkpoint else None
    source = Path(bundle.manifest.source.id)
    if ckpt is None and bundle.manifest.source.kind == "local" and (source / "config.json").is_file():
        ckpt = source
    return Model(bundle.path.name, bundle.path, ckpt)


def heldout_set(cache: Path, per_class: int) -> Path:
    """The demo model's generated held-out set (seed 2000, never seen in training), made once."""
    from clipedge_export.shapes import write_image_folder

    folder = cache / f"heldout-{per_class}"
    if not (folder / ".complete").is_file():
        write_image_folder(folder, per_class=per_class, seed=2000)
        (folder / ".complete").touch()
    return folder


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--bundle", action="append", default=[], help="a bundle folder (repeatable)")
    p.add_argument("--checkpoint", action="append", default=[], help="its Hugging Face folder (same order)")
    p.add_argument("--demo", action="store_true", help="the shipped demo bundle (models/demo)")
    p.add_argument("--vitb32", action="store_true", help="ViT-B/32 architecture, random weights")
    p.add_argument("--providers", type=csv(), default=list(PROVIDERS), help=f"from {','.join(PROVIDERS)}")
    p.add_argument("--precisions", type=csv(), default=["fp32", "int8", "fp16"])
    p.add_argument("--all-pairs", action="store_true", help="also fp16 on CPU, int8 on CUDA/TensorRT/OpenVINO")
    p.add_argument("--batches", type=csv(int), default=[1, 8, 32])
    p.add_argument("--threads", type=csv(int), default=[os.cpu_count() or 1], help="CPU thread counts")
    p.add_argument("--pools", type=csv(), default=["shared"], help="CPU thread pools: shared,session,session-spin")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--min-seconds", type=float, default=2.0)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--attention", default="sdpa", help="transformers attn_implementation of the baseline")
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--no-cold", action="store_true", help="skip cold start / classify RSS")
    p.add_argument("--heldout", default=None, help="image-folder set for fidelity (default: generated)")
    p.add_argument("--heldout-per-class", type=int, default=20, help="generated set size per class (30 classes)")
    p.add_argument("--no-fidelity", action="store_true")
    p.add_argument("--peers-rounds", type=int, default=5,
                   help="interleaved rounds of the peer study (bench.peers) on ViT-B/32; 0 skips it")  # fmt: skip
    p.add_argument("--cache", default=str(ROOT / ".cache" / "bench"))
    p.add_argument("--out", default=None, help="report folder (default bench/results/bench-DATE)")
    p.add_argument("--doc", "--readme", dest="doc", default=None,
                   help="write the Markdown into this file's bench section (e.g. docs/benchmarks.md)")  # fmt: skip
    p.add_argument("--section", default="cpu", help="section name (<!-- bench:NAME:start -->)")
    args = p.parse_args(argv)
    problem = check_args(args)
    if problem:
        p.error(problem)
    return args


def check_args(args: argparse.Namespace) -> str | None:
    """The first problem with the arguments (checked before any long work), or None."""
    from clipedge.bundle import BundleError

    from .report import check_doc

    unknown = [x for x in args.providers if x not in PROVIDERS]
    if unknown:
        return f"unknown provider {', '.join(unknown)} (choose from {', '.join(PROVIDERS)})"
    bad = [x for x in args.pools if x not in POOLS]
    if bad:
        return f"unknown thread pool {', '.join(bad)} (choose from {', '.join(POOLS)})"
    if len(args.checkpoint) > len(args.bundle):
        return "more --checkpoint than --bundle (give them in pairs, same order)"
    if args.heldout and not Path(args.heldout).is_dir():
        return f"--heldout {args.heldout}: no such folder"
    try:
        if args.doc:
            check_doc(Path(args.doc), args.section)
        for b in args.bundle:
            bundle_model(b, None)
    except (BundleError, ValueError) as e:
        return str(e)
    return None


def models_to_run(args: argparse.Namespace, cache: Path, log) -> list[Model]:
    checkpoints = args.checkpoint + [None] * (len(args.bundle) - len(args.checkpoint))
    models = [bundle_model(b, c) for b, c in zip(args.bundle, checkpoints, strict=True)]
    if args.demo or not (args.bundle or args.vitb32):
        models.append(bundle_model(str(ROOT / "models" / "demo"), None))
        models[-1].note = "trained demo model shipped in models/demo"
    has_torch = importlib.util.find_spec("torch") is not None
    if args.vitb32 or (has_torch and not (args.bundle or args.demo)):
        models.append(build_vitb32(cache, log))
    return models


def run_options(args: argparse.Namespace, heldout: Path | None) -> dict:
    return {
        "batches": args.batches,
        "iters": args.iters,
        "min_seconds": args.min_seconds,
        "warmup": args.warmup,
        "attention": args.attention,
        "baseline": not args.no_baseline,
        "cold": not args.no_cold,
        "all_pairs": args.all_pairs,
        "heldout": str(heldout or ""),
        "heldout_per_class": None if args.heldout else args.heldout_per_class,
    }


def peer_study(models: list[Model], args: argparse.Namespace, log) -> dict:
    """bench.peers on the ViT-B/32 model of this run: clipedge's paths against PyTorch and OpenVINO+NNCF,
    interleaved; or why it did not run."""
    vit = next((m for m in models if m.random_weights and m.checkpoint), None)
    if args.peers_rounds <= 0 or vit is None:
        return {"skipped": "no ViT-B/32 model with a checkpoint in this run" if vit is None else "--peers-rounds 0"}
    from . import peers

    threads = max(t or 0 for t in args.threads) or (os.cpu_count() or 2)
    report = peers.run(str(vit.bundle), str(vit.checkpoint), threads, args.peers_rounds, 20, log)
    report["ceiling"] = peers.ceiling(str(vit.bundle), threads)
    peers.ratios(report, report["ceiling"]["img_s"])
    report["targets"] = peers.targets(report)
    report.update(date=_dt.date.today().isoformat(), rounds=args.peers_rounds, model=f"{vit.name} ({vit.note})")
    report["machine"] = {"cpu": peers._cpu_name(), "cores": os.cpu_count()}
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    models = models_to_run(args, cache, log)
    heldout = None
    if not args.no_fidelity:
        heldout = Path(args.heldout) if args.heldout else heldout_set(cache, args.heldout_per_class)
    image = ROOT / "models" / "demo" / "examples" / "red_circle.png"
    opts = run_options(args, heldout)
    report = run(models, args.providers, args.precisions, args.threads, args.pools, opts, heldout, image, log)
    report["peers"] = peer_study(models, args, log)

    from .report import write_outputs

    out = Path(args.out or ROOT / "bench" / "results" / f"bench-{_dt.date.today().isoformat()}")
    print(write_outputs(report, out, Path(args.doc) if args.doc else None, args.section))
    log(f"wrote {out}: report.json, report.md, plots" + (f"; {args.doc}" if args.doc else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
