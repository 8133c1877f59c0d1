"""On a GPU: clipedge's ONNX Runtime CUDA fp16 with IO binding against PyTorch fp16 eager and torch.compile,
interleaved, at batch 1, 32 and 256 (image tower, ViT-B/32 architecture, random weights).

    python -m bench.gpu_peers --bundle B --checkpoint CKPT [--rounds 5] [--seconds 420] [--json out.json]

Written for the lent GPU machines (no network, 15 minutes of device time): everything is in one process,
each round times every contender at every batch (median of a few runs after a warm-up), and the run stops
after `--seconds` whatever it has, so it fits the limit. TensorRT is tried only with `--tensorrt` (its
libraries are rarely on those machines; a failure is recorded, not raised).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def contenders(bundle: str, checkpoint: str, tensorrt: bool) -> tuple[dict, dict]:
    import onnxruntime as ort
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "export"))
    from clipedge.bundle import load_bundle
    from clipedge.options import LoadOptions
    from clipedge.providers import create_session
    from clipedge_export import source as src
    from clipedge_export.towers import VisionTower

    ckpt = src.resolve(checkpoint, None)
    model = src.load_model(ckpt, src.load_config(ckpt)).eval()
    tower = VisionTower(model).eval().to("cuda", torch.float16)
    out, skipped = {}, {}

    def torch_run(module):
        def run(x):
            with torch.inference_mode():
                module(x)
            torch.cuda.synchronize()

        return run

    out["pytorch eager fp16"] = (torch_run(tower), "torch")
    try:
        out["pytorch torch.compile fp16"] = (
            torch_run(torch.compile(tower, mode="max-autotune-no-cudagraphs")),
            "torch",
        )
    except Exception as e:
        skipped["pytorch torch.compile fp16"] = f"{type(e).__name__}: {e}"
    b = load_bundle(bundle, verify=False)
    io = b.manifest.towers["vision"]
    providers = ["cuda"] + (["tensorrt"] if tensorrt else [])
    for prov in providers:
        name = f"clipedge ort {prov} fp16 iobinding"
        try:
            session = create_session(b.tower_path("fp16", "vision"), LoadOptions(provider=prov))
        except Exception as e:
            skipped[name] = str(e)
            continue

        def bound(x, session=session):
            binding = session.io_binding()
            binding.bind_ortvalue_input(io.input, ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
            binding.bind_output(io.output, "cuda")
            session.run_with_iobinding(binding)
            binding.synchronize_outputs()

        out[name] = (bound, "numpy")
    return out, skipped


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--batches", default="1,32,256")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=420)
    p.add_argument("--tensorrt", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    import torch

    start = time.perf_counter()
    runs, skipped = contenders(args.bundle, args.checkpoint, args.tensorrt)
    batches = [int(x) for x in args.batches.split(",")]
    inputs = {
        bs: {
            "numpy": np.random.default_rng(bs).standard_normal((bs, 3, 224, 224)).astype(np.float32),
            "torch": torch.randn(bs, 3, 224, 224, device="cuda", dtype=torch.float16),
        }
        for bs in batches
    }
    for fn, kind in runs.values():  # warm-up (torch.compile compiles here)
        for bs in batches:
            fn(inputs[bs][kind])
            fn(inputs[bs][kind])
    times = {n: {bs: [] for bs in batches} for n in runs}
    for r in range(args.rounds):
        if time.perf_counter() - start > args.seconds:
            break
        for name, (fn, kind) in runs.items():
            for bs in batches:
                one = []
                for _ in range(5 if bs < 256 else 3):
                    t0 = time.perf_counter()
                    fn(inputs[bs][kind])
                    one.append(time.perf_counter() - t0)
                times[name][bs].append(float(np.median(one)))
        print(f"round {r + 1} done", file=sys.stderr)
    report = {
        "gpu": torch.cuda.get_device_name(0),
        "rounds": len(next(iter(times.values()))[batches[0]]) if times else 0,
        "rows": {
            name: {
                f"b{bs}": {"ms": round(1000 * float(np.median(t)), 3), "img_s": round(bs / float(np.median(t)), 1)}
                for bs, t in per.items()
                if t
            }
            for name, per in times.items()
        },
        "skipped": skipped,
        "seconds": round(time.perf_counter() - start, 1),
    }
    eager = report["rows"].get("pytorch eager fp16", {})
    for row in report["rows"].values():
        for key, cell in row.items():
            if key in eager:
                cell["x_eager_fp16"] = round(eager[key]["ms"] / cell["ms"], 2)
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
