"""Which int8 recipe: quantisation variants of a bundle's fp32 towers, measured side by side.

Dynamic-quantisation variants of the shipped recipe, and two other methods measured and not adopted:
static int8 in QDQ form (calibrated on dataset images and the class prompts) and weight-only MatMulNBits.

    python -m bench.int8_recipes --bundle models/demo --dataset HELDOUT_DIR [--speed-bundle BUNDLE]

For each variant: file size, top-1 accuracy and top-1 agreement with fp32 on an image-folder dataset
(the demo model's generated held-out set: trained weights, so activation outliers are real), min image
and text embedding cosine to fp32, and, with --speed-bundle (e.g. the full ViT-B/32 architecture), the
vision tower's images/s at batch 32 and latency at batch 1 in the same run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

VARIANTS = {
    "s8, per-tensor, Conv float, Gather int8, projection int8": {},
    "... projection float (shipped)": {"exclude_projection": True},
    "... per-channel": {"per_channel": True},
    "... uint8 weights": {"weight_type": "QUInt8"},
    "... Conv quantised too": {"op_types": ["MatMul", "Attention", "Gather", "Conv"]},
    "... token table float (no Gather)": {"op_types": ["MatMul", "Attention"]},
    # other methods, measured and not adopted (README "Benchmarks"):
    "static int8, QDQ, calibrated on 32 dataset images + the class prompts": {"method": "static"},
    "weight-only MatMulNBits 8-bit, int8 compute (accuracy level 4)": {"method": "nbits", "bits": 8},
    "weight-only MatMulNBits 4-bit, int8 compute (accuracy level 4)": {"method": "nbits", "bits": 4},
}


def quantize(src: Path, dst: Path, opts: dict, calibration: dict[str, np.ndarray] | None = None) -> None:
    """Quantise one tower. `calibration`: input name -> a batch of real inputs (static method only)."""
    import onnx
    from clipedge_export.precisions import INT8_RECIPE, output_projections
    from onnxruntime.quantization import QuantType, quantize_dynamic

    exclude = output_projections(src) if opts.get("exclude_projection") else []
    if opts.get("method") == "static":
        return quantize_static_qdq(src, dst, calibration or {})
    if opts.get("method") == "nbits":
        return quantize_nbits(src, dst, opts["bits"])
    quantize_dynamic(
        str(src),
        str(dst),
        op_types_to_quantize=opts.get("op_types", INT8_RECIPE["op_types"]),
        per_channel=opts.get("per_channel", False),
        reduce_range=False,
        weight_type=getattr(QuantType, opts.get("weight_type", "QInt8")),
        nodes_to_exclude=exclude,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def quantize_static_qdq(src: Path, dst: Path, calibration: dict[str, np.ndarray]) -> None:
    """QDQ static int8 of the MatMuls with a weight (not the projection, not activation x activation)."""
    import onnx
    from clipedge_export.precisions import output_projections
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    graph = onnx.load(str(src), load_external_data=False).graph
    name = graph.input[0].name
    weights = {i.name for i in graph.initializer}
    skip = set(output_projections(src))
    skip |= {n.name for n in graph.node if n.op_type == "MatMul" and not set(n.input) & weights}
    rows = calibration[name]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{name: rows[i : i + 1]} for i in range(len(rows))])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(
        str(src),
        str(dst),
        Reader(),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul"],
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=sorted(skip),
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def quantize_nbits(src: Path, dst: Path, bits: int) -> None:
    import onnx
    from clipedge_export.precisions import output_projections
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    block = 128 if bits == 8 else 32
    config = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=True, accuracy_level=4, bits=bits)
    q = MatMulNBitsQuantizer(
        onnx.load(str(src)), nodes_to_exclude=output_projections(src), algo_config=config, accuracy_level=4
    )
    q.process()
    q.model.save_model_to_file(str(dst), use_external_data_format=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--speed-bundle", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    import onnxruntime as ort
    from clipedge.bundle import load_bundle
    from clipedge.evaluate import image_folder
    from clipedge.images import load_image
    from clipedge.preprocess import preprocess_batch
    from clipedge.scoring import l2_normalise
    from clipedge.tokenizer import ClipTokenizer

    from .timing import time_runs

    bundle = load_bundle(args.bundle)
    m = bundle.manifest
    classes, paths, targets = image_folder(args.dataset)
    pixels = preprocess_batch([load_image(p) for p in paths], m.preprocess)
    tok = ClipTokenizer(bundle.path / m.tokenizer.file, m.tokenizer)
    ids = tok.encode([f"a photo of a {c}." for c in classes])

    def run(vision: Path, text: Path):
        v = ort.InferenceSession(str(vision), providers=["CPUExecutionProvider"])
        t = ort.InferenceSession(str(text), providers=["CPUExecutionProvider"])
        img = l2_normalise(
            np.concatenate([v.run(None, {"pixel_values": pixels[i : i + 64]})[0] for i in range(0, len(pixels), 64)])
        )
        return img, l2_normalise(t.run(None, {"input_ids": ids})[0])

    ref_img, ref_txt = run(bundle.tower_path("fp32", "vision"), bundle.tower_path("fp32", "text"))
    ref_pred = (ref_img @ ref_txt.T).argmax(1)
    rows = [{"variant": "fp32", "top1": float((ref_pred == targets).mean())}]
    speed_src = load_bundle(args.speed_bundle, verify=False).tower_path("fp32", "vision") if args.speed_bundle else None
    calibration = {"pixel_values": pixels[:: max(1, len(pixels) // 32)][:32], "input_ids": ids}
    with tempfile.TemporaryDirectory() as tmp:
        for name, opts in VARIANTS.items():
            v, t = Path(tmp) / "v.onnx", Path(tmp) / "t.onnx"
            quantize(bundle.tower_path("fp32", "vision"), v, opts, calibration)
            quantize(bundle.tower_path("fp32", "text"), t, opts, calibration)
            img, txt = run(v, t)
            pred = (img @ txt.T).argmax(1)
            row = {
                "variant": name,
                "bytes": v.stat().st_size + t.stat().st_size,
                "top1": float((pred == targets).mean()),
                "agreement_fp32": float((pred == ref_pred).mean()),
                "image_cos_min": float((img * ref_img).sum(1).min()),
                "text_cos_min": float((txt * ref_txt).sum(1).min()),
            }
            if speed_src is not None:
                sv = Path(tmp) / "speed.onnx"
                noise = np.random.default_rng(1).standard_normal((8, 3, 224, 224)).astype(np.float32)
                quantize(speed_src, sv, opts, {"pixel_values": noise})  # speed does not depend on the scales
                s = ort.InferenceSession(str(sv), providers=["CPUExecutionProvider"])
                x = np.random.default_rng(0).standard_normal((32, 3, 224, 224)).astype(np.float32)
                b32 = time_runs(lambda s=s, x=x: s.run(None, {"pixel_values": x}), warmup=2, iters=8)
                b1 = time_runs(lambda s=s, x=x: s.run(None, {"pixel_values": x[:1]}), warmup=3, iters=30)
                row["vitb32_img_per_s_b32"] = round(32_000 / b32["p50_ms"], 1)
                row["vitb32_b1_p50_ms"] = b1["p50_ms"]
            rows.append(row)
            print(json.dumps(row))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
