"""GPU benchmark of the image tower: PyTorch eager (fp32, fp16) against ONNX Runtime CUDA (fp32, fp16),
with and without IO binding, in one process and one run. Short enough for a few minutes of a lent GPU.

    python -m bench.gpu --checkpoint CKPT --bundle BUNDLE --json out.json

CKPT is the Hugging Face folder the bundle was exported from (the PyTorch baseline loads it). Latency does
not depend on weight values, so the full ViT-B/32 architecture with random weights gives real timings.
"""

from __future__ import annotations

import argparse
import json
import platform

import numpy as np

from .timing import time_runs


def _row(engine: str, precision: str, batch: int, timing: dict) -> dict:
    return {
        "engine": engine,
        "precision": precision,
        "batch": batch,
        **timing,
        "img_per_s": round(batch * 1000 / timing["p50_ms"], 1),
    }


def torch_rows(checkpoint: str, batches: list[int], iters: int) -> list[dict]:
    import torch
    from transformers import CLIPModel

    rows = []
    model = CLIPModel.from_pretrained(checkpoint, attn_implementation="sdpa").eval().cuda()
    for dtype, name in ((torch.float32, "fp32"), (torch.float16, "fp16")):
        m = model.to(dtype)
        for b in batches:
            x = torch.randn(b, 3, 224, 224, device="cuda", dtype=dtype)

            def run(m=m, x=x):
                with torch.inference_mode():
                    m.visual_projection(m.vision_model(pixel_values=x).pooler_output)
                torch.cuda.synchronize()

            t = time_runs(run, warmup=5, iters=iters)
            rows.append(_row("pytorch-eager", name, b, t))
    return rows


def ort_rows(bundle: str, batches: list[int], iters: int) -> list[dict]:
    import onnxruntime as ort
    from clipedge.bundle import load_bundle
    from clipedge.providers import create_session

    b_ = load_bundle(bundle, verify=False)
    rows = []
    for precision in [p for p in ("fp32", "fp16") if p in b_.manifest.precisions]:
        sess = create_session(b_.tower_path(precision, "vision"), "cuda", strict=True)
        for b in batches:
            x = np.random.default_rng(0).standard_normal((b, 3, 224, 224)).astype(np.float32)
            t = time_runs(lambda s=sess, x=x: s.run(None, {"pixel_values": x}), warmup=5, iters=iters)
            rows.append(_row("ort-cuda", precision, b, t))
            io = sess.io_binding()
            xv = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
            io.bind_ortvalue_input("pixel_values", xv)
            io.bind_output("image_embeds", "cuda")

            def run_bound(s=sess, io=io):
                s.run_with_iobinding(io)
                io.synchronize_outputs()

            t = time_runs(run_bound, warmup=5, iters=iters)
            rows.append(_row("ort-cuda-iobinding", precision, b, t))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    import onnxruntime as ort
    import torch

    rows = torch_rows(args.checkpoint, batches, args.iters) + ort_rows(args.bundle, batches, args.iters)
    base = {(r["batch"]): r["p50_ms"] for r in rows if r["engine"] == "pytorch-eager" and r["precision"] == "fp32"}
    for r in rows:
        r["speedup_vs_eager_fp32"] = round(base[r["batch"]] / r["p50_ms"], 2)
        print(json.dumps(r))
    report = {
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
        "note": "image tower, full ViT-B/32 architecture with random weights (latency does not depend on weights)",
        "rows": rows,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
