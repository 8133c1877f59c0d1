"""From a raw ONNX tower to the bundle's precisions: graph optimisation, int8 and fp16.

Each recipe is data (it goes into the manifest as written here) and every choice in it was measured:
see README "Export" and the export issue's closing note for the figures.

- fp32: ONNX Runtime's transformer optimizer (model_type "clip", opt_level 0 so nothing EP-specific is baked
  in) fuses attention, SkipLayerNorm and QuickGelu into the saved file.
- int8: dynamic quantisation of the fused graph (weights int8, activations quantised per batch at run time),
  chosen with `python -m bench.int8_recipes` on the trained demo model's held-out set and the ViT-B/32
  architecture (figures in README "Export"): signed int8 weights (the u8s8 path VNNI/AMX run fast; uint8
  weights ran 1.9x slower); per-tensor (per-channel measured the same accuracy and speed, with a larger
  graph); the patch-embedding Conv kept float (quantised, the image embedding's min cosine to fp32 fell
  from 0.9989 to 0.9931); the final projection MatMul of each tower kept float (one more image of 3,000
  agreed with fp32, +35 KB); the token-embedding table stored int8 behind the Gather (the demo bundle's
  int8 towers 4.6 MB instead of 14.1 MB, same accuracy).
- fp16: the optimizer's own float16 conversion of the fused graph, inputs and outputs kept float32. Fused
  Attention computes softmax, and (Skip)LayerNormalization mean/variance, in float32 inside the kernels;
  validation checks for NaN/inf on saturated images and long prompts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

FP32_RECIPE: dict[str, Any] = {
    "graph": "fused",
    "optimizer": "onnxruntime.transformers.optimizer model_type=clip opt_level=0",
}
INT8_RECIPE: dict[str, Any] = {
    "method": "onnxruntime.quantization.quantize_dynamic",
    "weight_type": "QInt8",
    "activation_type": "QUInt8 (dynamic, per batch)",
    "per_channel": False,
    "reduce_range": False,
    "op_types": ["MatMul", "Attention", "Gather"],
    "kept_float": ["Conv (patch embedding)", "final projection MatMul"],
}
FP16_RECIPE: dict[str, Any] = {
    "method": "onnxruntime.transformers OnnxModel.convert_float_to_float16",
    "keep_io_types": True,
    "source_graph": "fused fp32",
}


def optimize(raw: Path, out: Path, num_heads: int, hidden_size: int) -> dict[str, int]:
    """Fuse the raw tower into `out`; returns the fused operator counts (what applied)."""
    import logging

    from onnxruntime.transformers.optimizer import optimize_model

    logging.getLogger("onnxruntime.transformers").setLevel(logging.WARNING)
    model = optimize_model(str(raw), model_type="clip", num_heads=num_heads, hidden_size=hidden_size, opt_level=0)
    stats = {k: int(v) for k, v in model.get_fused_operator_statistics().items() if v}
    model.save_model_to_file(str(out))
    return stats


def quantize_int8(fp32: Path, out: Path) -> None:
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # the quantizer's "consider pre-processing" hint
    quantize_dynamic(
        str(fp32),
        str(out),
        op_types_to_quantize=INT8_RECIPE["op_types"],
        per_channel=INT8_RECIPE["per_channel"],
        reduce_range=INT8_RECIPE["reduce_range"],
        weight_type=QuantType.QInt8,
        nodes_to_exclude=output_projections(fp32),
        # shape inference cannot type the fused com.microsoft ops: tell the quantizer they are float
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def output_projections(path: Path) -> list[str]:
    """Names of the MatMul nodes that produce a graph output (each tower's final projection)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    outputs = {o.name for o in graph.output}
    return [n.name for n in graph.node if n.op_type == "MatMul" and set(n.output) & outputs]


def convert_fp16(fp32: Path, out: Path) -> None:
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(fp32)))
    model.convert_float_to_float16(keep_io_types=FP16_RECIPE["keep_io_types"])
    model.save_model_to_file(str(out))


def count_ops(path: Path) -> dict[str, int]:
    graph = onnx.load(str(path), load_external_data=False).graph
    counts: dict[str, int] = {}
    for node in graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
