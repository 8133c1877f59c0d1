"""Batch engine throughput and memory, against the vision tower's offline throughput in the same run.

    python -m bench.batch_throughput --bundle BUNDLE [--images 1000] [--memory-bundle models/demo]

1. Writes N JPEGs of mixed sizes (640x480 to 4000x3000, photo content from scikit-image, quality 90).
2. Offline: the vision tower of the default path (what `clipedge batch` loads: engine and precision
   auto, the shared thread pool) on already-preprocessed tensors, best of batch 16/32 (images/s).
3. `clipedge batch` (local engine, in a subprocess) over the folder, exact decoding and --fast-jpeg.
4. Peak RSS of `clipedge batch` on M and 10*M small JPEGs with --memory-bundle: flat means streaming.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from .timing import time_runs

SIZES = [(640, 480), (800, 600), (1024, 768), (1280, 720), (1600, 900), (1920, 1080), (2560, 1440), (3264, 2448),
         (4000, 3000)]  # fmt: skip


def write_jpegs(folder: Path, n: int, sizes=SIZES, seed: int = 0) -> None:
    import skimage.data

    photos = [Image.fromarray(getattr(skimage.data, k)()) for k in ("astronaut", "coffee", "chelsea", "rocket")]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        im = photos[i % len(photos)].resize((w, h), Image.Resampling.BILINEAR)
        noise = rng.integers(-8, 9, (h, w, 3), dtype=np.int16)
        arr = np.clip(np.asarray(im, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"{i:05d}.jpg", quality=90)


def offline(bundle: str, precision: str) -> tuple[float, str]:
    """The tower's images/s on preprocessed tensors (the engine directly: no decoding), and what ran."""
    from clipedge import LoadOptions, ZeroShotClassifier

    clf = ZeroShotClassifier.load(LoadOptions(bundle, precision=precision, provider="cpu", thread_pool="shared"))
    h, w = clf.bundle.manifest.preprocess.crop_size
    best = 0.0
    for b in (16, 32):
        x = np.random.default_rng(0).standard_normal((b, 3, h, w)).astype(np.float32)
        t = time_runs(lambda x=x, b=b: clf.embed(x, batch_size=b), warmup=2, iters=8, min_seconds=3)
        best = max(best, b * 1000 / t["p50_ms"])
    return round(best, 1), f"{clf.encoder.choice.engine} {clf.precision}"


def run_batch(bundle: str, precision: str, folder: Path, out: Path, *extra: str) -> dict:
    cmd = [sys.executable, "-m", "clipedge.cli", "batch", str(folder), "-o", str(out), "-m", bundle,
           "--precision", precision, "--labels", "a cat, a dog, a rocket, a cup of coffee, a person",
           "--no-progress", *extra]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        raise RuntimeError(proc.stderr)
    with open(out) as f:
        rows = sum(1 for _ in f)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "images": rows,
        "seconds": round(seconds, 1),
        "img_per_s": round(rows / seconds, 1),
        "summary": proc.stderr.strip().splitlines()[-1],
        "peak_rss_mb": round(peak / 1024, 1) if peak > before else None,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--memory-bundle", default=None)
    parser.add_argument("--memory-images", type=int, default=300)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    report: dict = {"date": time.strftime("%Y-%m-%d"), "bundle": args.bundle, "precision": args.precision}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        write_jpegs(tmp_path / "mixed", args.images)
        report["offline_img_per_s"], report["default_path"] = offline(args.bundle, args.precision)
        print(json.dumps(report), flush=True)
        for name, extra in (("exact", ()), ("fast_jpeg", ("--fast-jpeg",))):
            r = run_batch(args.bundle, args.precision, tmp_path / "mixed", tmp_path / f"{name}.jsonl", *extra)
            r["vs_offline"] = round(r["img_per_s"] / report["offline_img_per_s"], 3)
            report[f"batch_{name}"] = r
            print(json.dumps({name: r}), flush=True)
        if args.memory_bundle:
            mem = {}
            for n in (args.memory_images, 10 * args.memory_images):
                folder = tmp_path / f"mem{n}"
                write_jpegs(folder, n, sizes=[(640, 480)], seed=n)
                probe = [
                    sys.executable,
                    "-c",
                    MEMORY_PROBE,
                    args.memory_bundle,
                    str(folder),
                    str(tmp_path / f"m{n}.jsonl"),
                ]
                r = subprocess.run(probe, capture_output=True, text=True, check=True)
                mem[n] = json.loads(r.stdout.strip().splitlines()[-1])
                print(json.dumps({"memory": {n: mem[n]}}), flush=True)
            report["peak_rss_by_images"] = mem
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


# one `clipedge batch` in a fresh interpreter, reporting its own peak RSS
MEMORY_PROBE = r"""
import json, resource, sys
from clipedge.cli import main
code = main(["batch", sys.argv[2], "-o", sys.argv[3], "-m", sys.argv[1], "--labels", "a, b, c", "--no-progress"])
print(json.dumps({"exit": code, "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""


if __name__ == "__main__":
    main()
