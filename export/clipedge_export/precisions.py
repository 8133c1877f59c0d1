"""From a raw ONNX tower to the bundle's precisions: graph optimisation, int8 and fp16.

Each recipe is data (it goes into the manifest as written here) and every choice in it was measured; the
figures are in docs/export.md and bench/results.

- fp32: ONNX Runtime's transformer optimizer (model_type "clip", opt_level 0 so nothing EP-specific is baked
  in) fuses attention, SkipLayerNorm and QuickGelu; then each SkipLayerNormalization is split back into
  Add + LayerNormalization, because ONNX Runtime's CPU SkipLayerNormalization kernel is slow
  (`python -m bench.ceiling`). The optimizer only finds attention through the fused SkipLayerNorm
  pattern, hence fuse first, split after.
- int8: dynamic quantisation of the fp32 graph above (weights int8, activations quantised per batch at
  run time), chosen with `python -m bench.int8_recipes` on the trained demo model's held-out set and the
  ViT-B/32 architecture: signed int8 weights (the u8s8 path VNNI/AMX run fast; uint8 weights were much
  slower); per-tensor (per-channel measured the same accuracy and speed, with a larger graph); the
  patch-embedding Conv kept float (quantised, the image embedding lost fidelity); the final projection
  MatMul of each tower kept float (best agreement with fp32); the token-embedding table stored int8
  behind the Gather (a third of the text tower's size, same accuracy).
- int8-static: static QDQ quantisation (QuantizeLinear/DequantizeLinear, standard ONNX operators only)
  of the *unfused* export, the file OpenVINO and TensorRT's int8 take: int8 activations with scales fixed
  by calibration (so results never depend on the batch; symmetric in the image tower, asymmetric in the
  text tower, where symmetric scales lost too much), symmetric per-channel int8
  weights, the MatMuls with weights and the text tower's token table quantised; the patch Conv, the final
  projections and attention's activation x activation products kept float (as the dynamic recipe,
  measured with `python -m bench.int8_recipes`). ONNX Runtime's CPU kernels run this form slowly; it is
  ranked for OpenVINO (clipedge.selection).
- fp32-unfused: the unfused export itself (standard operators), for engines that cannot read ONNX
  Runtime's fused contrib operators (OpenVINO's fp32). Not built unless asked for.
- fp16: the optimizer's own float16 conversion of the fused graph (SkipLayerNorm kept fused: fp16 is for
  CUDA, whose kernel is fast), inputs and outputs kept float32. Fused Attention computes softmax, and
  (Skip)LayerNormalization mean/variance, in float32 inside the kernels; validation checks for NaN/inf
  on saturated images and long prompts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx

FP32_RECIPE: dict[str, Any] = {
    "graph": "fused, SkipLayerNormalization split into Add + LayerNormalization",
    "optimizer": "onnxruntime.transformers.optimizer model_type=clip opt_level=0",
}
INT8_RECIPE: dict[str, Any] = {
    "method": "onnxruntime.quantization.quantize_dynamic",
    "weight_type": "QInt8",
    "activation_type": "QUInt8 (dynamic, per batch)",
    "per_channel": False,
    "reduce_range": False,
    "op_types": ["MatMul", "Attention", "Gather"],
    "kept_float": [
        "Conv (patch embedding)",
        "final projection MatMul",
        "Attention with an attention bias (a text tower's mask: QAttention has no such input)",
    ],
}
INT8_STATIC_RECIPE: dict[str, Any] = {
    "method": "onnxruntime.quantization.quantize_static, QDQ format",
    "graph": "unfused export, standard ONNX operators only",
    "activation_type": {
        "vision": "QInt8, symmetric, per tensor, static (calibrated)",
        "text": "QInt8, asymmetric, per tensor, static (calibrated): symmetric lost too much (cosine 0.977 on "
        "the demo model's validation prompts, 0.993 asymmetric)",
    },
    "weight_type": "QInt8, symmetric, per channel",
    "calibrate_method": "MinMax",
    "op_types": ["MatMul", "Gather"],
    "kept_float": ["Conv (patch embedding)", "final projection MatMul", "activation x activation MatMul"],
}
FP32_UNFUSED_RECIPE: dict[str, Any] = {"graph": "unfused export (torch.onnx.export), standard ONNX operators only"}
FP16_RECIPE: dict[str, Any] = {
    "method": "onnxruntime.transformers OnnxModel.convert_float_to_float16",
    "keep_io_types": True,
    "source_graph": "fused fp32 with SkipLayerNormalization",
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


def split_skip_layernorm(fused: Path, out: Path) -> int:
    """Write `fused` with each SkipLayerNormalization as Add (+ bias Add) + LayerNormalization; returns how many.

    Same arithmetic (LayerNorm of input + skip [+ bias]); the sum output, which feeds the next residual,
    becomes the Add's output.
    """
    from onnx import helper

    model = onnx.load(str(fused))
    nodes, count = [], 0
    for n in model.graph.node:
        if n.op_type != "SkipLayerNormalization" or any(n.output[1:3]):  # mean / inv_std used: keep it
            nodes.append(n)
            continue
        count += 1
        eps = next((a.f for a in n.attribute if a.name == "epsilon"), 1e-12)  # the contrib op's default
        inputs = list(n.input) + [""] * (5 - len(n.input))
        total = n.output[3] if len(n.output) > 3 and n.output[3] else f"{n.name}_sum"
        if inputs[4]:
            nodes.append(helper.make_node("Add", inputs[:2], [f"{n.name}_residual"], name=f"{n.name}_add"))
            nodes.append(helper.make_node("Add", [f"{n.name}_residual", inputs[4]], [total], name=f"{n.name}_bias"))
        else:
            nodes.append(helper.make_node("Add", inputs[:2], [total], name=f"{n.name}_add"))
        ln_inputs = [total, inputs[2]] + ([inputs[3]] if inputs[3] else [])
        nodes.append(
            helper.make_node("LayerNormalization", ln_inputs, [n.output[0]], name=f"{n.name}_ln", axis=-1, epsilon=eps)
        )
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(out))
    return count


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
        nodes_to_exclude=output_projections(fp32) + biased_attention(fp32),
        # shape inference cannot type the fused com.microsoft ops: tell the quantizer they are float
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def quantize_static_qdq(raw: Path, out: Path, inputs: list[dict[str, np.ndarray]], symmetric: bool = True) -> None:
    """INT8_STATIC_RECIPE on one unfused tower, calibrated on `inputs` (each the feeds of one run).

    The quantizer's calibration sessions need per-session thread pools, which ONNX Runtime refuses once a
    process-wide pool exists (clipedge.threads): then it runs in a fresh process.
    """
    from clipedge import threads

    if threads.shared_pool_exists():
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        proc = ctx.Process(target=_quantize_static_qdq, args=(raw, out, inputs, symmetric))
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            raise RuntimeError(f"static quantisation of {raw.name} failed in its process (exit {proc.exitcode})")
        return
    _quantize_static_qdq(raw, out, inputs, symmetric)


def _quantize_static_qdq(raw: Path, out: Path, inputs: list[dict[str, np.ndarray]], symmetric: bool = True) -> None:
    import logging

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    graph = onnx.load(str(raw), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    keep_float = set(output_projections(raw))
    keep_float |= {n.name for n in graph.node if n.op_type == "MatMul" and not set(n.input) & weights}

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(inputs)

        def get_next(self):
            return next(self.batches, None)

    logging.getLogger().setLevel(logging.ERROR)  # the quantizer's "consider pre-processing" hint
    quantize_static(
        str(raw),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=INT8_STATIC_RECIPE["op_types"],
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        nodes_to_exclude=sorted(keep_float),
        extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True},
    )


def biased_attention(path: Path) -> list[str]:
    """Names of the fused Attention nodes that take an attention bias (input 5): QAttention has no such input,
    so quantising them would drop it (a text tower's mask)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type == "Attention" and len(n.input) > 5 and n.input[5]]


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
