"""What bounds the image tower on this CPU: the machine's int8 and fp32 matrix rates, the tower's operation
count, and where a tower's time goes (ONNX Runtime's profile, by operator type).

    python -m bench.ceiling --bundle B --precision int8 [--batch 32] [--threads N] [--json out.json]

The matrix rates come from one large MatMulInteger (uint8 x int8, what dynamic int8 runs) and one fp32
MatMul with the shape of a batch-32 ViT-B/32 MLP layer (1600x768 by 768x3072). Dividing the tower's
operations by the int8 rate gives the most images/s any exact int8 tower can reach here.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np


def matmul_rate(kind: str, m: int, k: int, n: int, threads: int | None, seconds: float = 2.0) -> float:
    """Giga-operations per second (2 per multiply-add) of one MatMulInteger ("int8") or MatMul ("fp32")."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if kind == "int8":
        w = numpy_helper.from_array(rng.integers(-127, 127, (k, n)).astype(np.int8), "W")
        a = helper.make_tensor_value_info("A", TensorProto.UINT8, [m, k])
        y = helper.make_tensor_value_info("Y", TensorProto.INT32, [m, n])
        node = helper.make_node("MatMulInteger", ["A", "W"], ["Y"])
        x = rng.integers(0, 255, (m, k)).astype(np.uint8)
    else:
        w = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "W")
        a = helper.make_tensor_value_info("A", TensorProto.FLOAT, [m, k])
        y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [m, n])
        node = helper.make_node("MatMul", ["A", "W"], ["Y"])
        x = rng.standard_normal((m, k)).astype(np.float32)
    graph = helper.make_graph([node], "g", [a], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    from clipedge.threads import session_options

    session = ort.InferenceSession(  # clipedge's options: this joins the shared pool where one exists
        model.SerializeToString(), session_options(threads, "session"), providers=["CPUExecutionProvider"]
    )
    for _ in range(3):
        session.run(None, {"A": x})
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, {"A": x})
        runs += 1
    return 2 * m * k * n * runs / (time.perf_counter() - start) / 1e9


def vision_gop_per_image(arch: dict) -> float:
    """Operations of the image tower per image (MLP width 4x, as in CLIP's ViT configs)."""
    w, layers, patch, side = arch["vision_width"], arch["vision_layers"], arch["patch_size"], arch["image_size"]
    patches = (side // patch) ** 2
    tokens = patches + 1
    per_layer = tokens * (4 * w * w + 2 * w * 4 * w) + 2 * tokens * tokens * w  # projections + MLP + attention
    macs = layers * per_layer + patches * 3 * patch * patch * w + w * arch["embed_dim"]
    return 2 * macs / 1e9


def profile(path: Path, batch: int, side: int, threads: int | None, runs: int = 4) -> dict[str, float]:
    """ms per run by operator type (ONNX Runtime's own profiler)."""
    import onnxruntime as ort
    from clipedge.threads import session_options

    so = session_options(threads, "session")
    with tempfile.TemporaryDirectory() as tmp:
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "profile")
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).standard_normal((batch, 3, side, side)).astype(np.float32)
        name = session.get_inputs()[0].name
        for _ in range(runs + 1):
            session.run(None, {name: x})
        events = json.loads(Path(session.end_profiling()).read_text())
    model_runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    warmup_end = model_runs[0][1] if model_runs else 0  # the first run is warm-up: not counted
    by_op: Counter[str] = Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] > warmup_end:
            by_op[e["args"]["op_name"]] += e["dur"]
    return {op: round(us / runs / 1000, 2) for op, us in by_op.most_common()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", required=True)
    p.add_argument("--precision", default="int8")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    from dataclasses import asdict

    from clipedge.bundle import load_bundle

    bundle = load_bundle(args.bundle, verify=False)
    arch = asdict(bundle.manifest.architecture)
    rows = args.batch * ((arch["image_size"] // arch["patch_size"]) ** 2 + 1)
    w = arch["vision_width"]
    int8 = matmul_rate("int8", rows, w, 4 * w, args.threads)
    fp32 = matmul_rate("fp32", rows, w, 4 * w, args.threads)
    gop = vision_gop_per_image(arch)
    ops = profile(bundle.tower_path(args.precision, "vision"), args.batch, arch["image_size"], args.threads)
    total = sum(ops.values())
    gemm = sum(ms for op, ms in ops.items() if "MatMul" in op or "Attention" in op)
    out = {
        "matmul_shape": [rows, w, 4 * w],
        "int8_gop_per_s": round(int8, 1),
        "fp32_gflop_per_s": round(fp32, 1),
        "vision_gop_per_image": round(gop, 3),
        "int8_bound_img_per_s": round(int8 / gop, 1),
        "fp32_bound_img_per_s": round(fp32 / gop, 1),
        "profile_batch": args.batch,
        "profile_ms_by_op": ops,
        "profile_total_ms": round(total, 1),
        "matmul_and_attention_share": round(gemm / total, 3) if total else None,
        "achieved_gop_per_s": round(gop * args.batch / total * 1000, 1) if total else None,
    }
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
