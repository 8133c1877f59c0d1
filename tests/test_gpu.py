"""CUDA checks: run where onnxruntime-gpu and a GPU are present (the lent GPU machine), skipped elsewhere."""

import numpy as np
import onnxruntime as ort
import pytest
from clipedge import ZeroShotClassifier
from clipedge.bundle import load_bundle
from PIL import Image

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(), reason="no CUDA provider"),
]


def test_cuda_is_really_in_effect_and_matches_cpu(tiny_bundle):
    images = [Image.new("RGB", (64, 48), c) for c in [(255, 0, 0), (0, 0, 255)]]
    cpu = ZeroShotClassifier.load(tiny_bundle, precision="fp32", provider="cpu")
    for precision in ("fp32", "fp16"):
        gpu = ZeroShotClassifier.load(tiny_bundle, precision=precision, provider="cuda")
        assert gpu.encoder.providers[0] == "CUDAExecutionProvider"
        a = np.array([r["probs"] for r in cpu.classify(images, ["red", "blue"])])
        b = np.array([r["probs"] for r in gpu.classify(images, ["red", "blue"])])
        assert np.isfinite(b).all() and np.abs(a - b).max() < 2e-2  # CUDA fp32 uses TF32 matmuls by default
    assert ZeroShotClassifier.load(tiny_bundle, provider="auto").precision == "fp16"


def test_export_validates_fp16_on_cuda(tiny_bundle):
    m = load_bundle(tiny_bundle).manifest
    assert "CUDAExecutionProvider" in m.precisions["fp16"].validated_on
    figures = m.precisions["fp16"].parity["CUDAExecutionProvider"]
    assert figures["finite"] and min(figures["image_cos_min"], figures["text_cos_min"]) >= 0.999
