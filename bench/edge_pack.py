"""Edge pack against a full bundle: files on disk, cold start to the first answer, peak RSS.

    python -m bench.edge_pack --bundle models/demo --precision int8 --labels-from-demo
    python -m bench.edge_pack --bundle .cache/bench/vitb32-bundle --precision int8 --labels 100

Three ways to classify one image against a fixed label set with `clipedge classify` in a fresh process
(the user's cold start: interpreter, imports, model load, labels, decode, answer):
- pack: `clipedge pack` output (vision tower + label embeddings);
- bundle + labels: the full bundle, labels embedded by its text tower at start;
- bundle + --label-embeddings: the full bundle, labels from a file made by `clipedge labels build`.
Each is run --repeats times (median wall time; peak RSS of the child from getrusage). Disk: the pack
folder, the full bundle, and the bundle's files a device needs for one precision (vision + text +
tokenizer + manifest).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from clipedge.benchmark import cpu_model
from clipedge.bundle import load_bundle

RUSAGE_CHILD = "import resource,subprocess,sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); " \
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"  # fmt: skip


def size(paths: list[Path]) -> int:
    return sum(p.stat().st_size for p in paths if p.is_file())


def run_cold(cmd: list[str], repeats: int) -> dict:
    """Median wall seconds and max peak RSS (MB) of `cmd`, each run in a fresh process."""
    walls, rss = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", RUSAGE_CHILD, *cmd], check=True, capture_output=True, text=True)
        walls.append(time.perf_counter() - t0)
        rss.append(int(out.stdout.split()[-1]) / 1024)  # ru_maxrss is KiB on Linux
    return {"cold_start_s": round(statistics.median(walls), 3), "peak_rss_mb": round(max(rss), 1)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--precision", default="int8")
    ap.add_argument("--labels", type=int, default=100, help="how many labels (synthetic texts)")
    ap.add_argument("--labels-from-demo", action="store_true", help="the demo's 15 labels (CLASSES[0::2])")
    ap.add_argument("--image", default="models/demo/examples/red_circle.png")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    bundle = load_bundle(args.bundle)
    if args.labels_from_demo:
        from clipedge_export.shapes import CLASSES

        labels = list(CLASSES[0::2])
    else:
        labels = [f"object number {i}" for i in range(args.labels)]
    clipedge = [sys.executable, "-m", "clipedge.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "labels.txt").write_text("\n".join(labels) + "\n")
        emb = tmp_path / "labels.npz"
        subprocess.run([*clipedge, "labels", "build", str(tmp_path / "labels.txt"), "-m", args.bundle,
                        "--precision", "fp32", "-o", str(emb)], check=True, capture_output=True)  # fmt: skip
        pack = tmp_path / "pack"
        subprocess.run([*clipedge, "pack", args.bundle, "--labels-file", str(tmp_path / "labels.txt"),
                        "--precision", args.precision, "-o", str(pack)], check=True, capture_output=True)  # fmt: skip
        variant = bundle.manifest.precisions[args.precision]
        one_precision = [bundle.path / variant.vision.file, bundle.path / bundle.manifest.precisions["fp32"].text.file,
                         bundle.path / bundle.manifest.tokenizer.file, bundle.path / "manifest.json"]  # fmt: skip
        disk = {
            "pack_mb": round(size(list(pack.iterdir())) / 1e6, 1),
            "bundle_one_precision_mb": round(size(one_precision) / 1e6, 1),
            "bundle_all_mb": round(size(list(bundle.path.iterdir())) / 1e6, 1),
        }
        base = ["classify", args.image, "--json", "--precision", args.precision]
        runs = {
            "pack": run_cold([*clipedge, *base, "-m", str(pack)], args.repeats),
            "bundle + labels at start": run_cold(
                [*clipedge, *base, "-m", args.bundle, "--labels-file", str(tmp_path / "labels.txt")], args.repeats
            ),
            "bundle + --label-embeddings": run_cold(
                [*clipedge, *base, "-m", args.bundle, "--label-embeddings", str(emb)], args.repeats
            ),
        }
    result = {
        "bundle": args.bundle,
        "precision": args.precision,
        "labels": len(labels),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores",
        "disk": disk,
        "runs": runs,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
