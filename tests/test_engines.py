"""Choosing the engine: OpenVINO on the static int8 variant when the openvino extra is installed and the
CPU runs it; ONNX Runtime otherwise; explicit choices honoured or refused clearly; a failing optional
engine falls back with a warning."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
from clipedge import ProviderError, ZeroShotClassifier
from clipedge import openvino_engine as ove
from PIL import Image

IMAGES = [Image.new("RGB", (80, 60), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
LABELS = ["red thing", "green thing", "blue thing"]

needs_openvino = pytest.mark.skipif(not ove.available(), reason="the openvino extra is installed by CI")


@needs_openvino
def test_auto_runs_openvino_on_int8_static_and_agrees_with_fp32(tiny_bundle):
    clf = ZeroShotClassifier.load(tiny_bundle)
    assert clf.encoder.choice.engine == "openvino" and clf.precision == "int8-static"
    assert clf.encoder.providers == [ove.PROVIDER]
    ref = ZeroShotClassifier.load(tiny_bundle, "fp32", "cpu", engine="onnxruntime")
    a, b = clf.embed_images(IMAGES), ref.embed_images(IMAGES)
    assert (a * b).sum(axis=1).min() > 0.98
    probs = clf.classify(IMAGES, LABELS)  # the text tower runs on OpenVINO too
    assert all(abs(sum(r["probs"]) - 1) < 1e-5 for r in probs)
    onnxruntime = ZeroShotClassifier.load(tiny_bundle, engine="onnxruntime")
    assert onnxruntime.encoder.choice.engine == "onnxruntime" and onnxruntime.precision == "int8"
    on_cuda_request = ZeroShotClassifier.load(tiny_bundle, provider=["CPUExecutionProvider"])
    assert on_cuda_request.encoder.choice.engine == "onnxruntime"  # an explicit provider list means ONNX Runtime


@needs_openvino
def test_openvino_results_do_not_depend_on_the_batch(tiny_bundle):
    clf = ZeroShotClassifier.load(tiny_bundle, engine="openvino")
    rng = np.random.default_rng(0)
    px = rng.standard_normal((33, 3, *clf.bundle.manifest.preprocess.crop_size)).astype(np.float32)
    labels = clf.label_embeddings(LABELS)
    alone = clf.score(clf.embed(px[:1]), labels)
    for n in (2, 9, 33):
        assert np.abs(clf.score(clf.embed(px[:n], n), labels)[:1] - alone).max() <= 1e-5


def test_explicit_engine_that_cannot_be_had(tiny_bundle, monkeypatch, caplog):
    monkeypatch.setattr(ove, "available", lambda: False)
    assert ZeroShotClassifier.load(tiny_bundle).encoder.choice.engine == "onnxruntime"  # auto: ONNX Runtime
    with pytest.raises(ProviderError, match="needs the openvino extra: pip install 'clipedge\\[openvino\\]'"):
        ZeroShotClassifier.load(tiny_bundle, engine="openvino")
    with caplog.at_level(logging.WARNING, logger="clipedge"):
        clf = ZeroShotClassifier.load(tiny_bundle, engine="openvino", strict=False)
    assert clf.encoder.choice.engine == "onnxruntime" and "falling back to ONNX Runtime" in caplog.text
    with pytest.raises(ProviderError, match="unknown engine 'tvm'"):
        ZeroShotClassifier.load(tiny_bundle, engine="tvm")


@needs_openvino
def test_engine_openvino_needs_a_standard_variant_and_the_cpu(tiny_bundle, tmp_path):
    with pytest.raises(ProviderError, match="engine openvino runs int8-static or fp32-unfused; this bundle has"):
        ZeroShotClassifier.load(tiny_bundle, precision="fp32", engine="openvino")
    with pytest.raises(ProviderError, match="runs on the CPU"):
        ZeroShotClassifier.load(tiny_bundle, provider="cuda", engine="openvino")


@needs_openvino
def test_a_failing_optional_engine_falls_back_with_a_warning(tiny_bundle, tmp_path, caplog):
    from clipedge.bundle import file_entry, load_bundle, write_manifest

    broken = tmp_path / "b"
    shutil.copytree(tiny_bundle, broken)
    (broken / "vision.int8-static.onnx").write_bytes(b"\x08\x07not an onnx graph")  # OpenVINO cannot read it
    from dataclasses import replace

    m = load_bundle(broken, verify=False).manifest
    static = replace(m.precisions["int8-static"], vision=file_entry(broken, "vision.int8-static.onnx"))
    write_manifest(broken, replace(m, precisions={**m.precisions, "int8-static": static}))
    with caplog.at_level(logging.WARNING, logger="clipedge"):
        clf = ZeroShotClassifier.load(broken)
    assert clf.encoder.choice.engine == "onnxruntime" and clf.precision == "int8"
    assert "OpenVINO cannot compile this model" in caplog.text and "falling back to ONNX Runtime" in caplog.text
    with pytest.raises(Exception, match="OpenVINO cannot compile this model"):
        ZeroShotClassifier.load(broken, engine="openvino")
    assert json.loads((broken / "manifest.json").read_text())["format_version"] == 3
