import json
import shutil

import pytest
from clipedge.bundle import BundleError, Manifest, load_bundle


def test_manifest_round_trip(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    m = bundle.manifest
    assert Manifest.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    assert set(m.precisions) == {"fp32", "int8", "fp16", "int8-static"}
    assert m.logit_scale == pytest.approx(100.0, rel=1e-5)  # from the weights (ln 100 stored)
    assert m.tokenizer.bos_id == 49406 and m.tokenizer.eos_id == 49407 and m.tokenizer.pad_id == 49407
    assert m.architecture.context_length == 77 and m.embeddings_normalized is False
    assert m.preprocess.resample == "bicubic" and m.preprocess.crop_size == (64, 64)
    assert len(bundle.bundle_hash) == 64


def test_unknown_keys_ignored_missing_key_named(tiny_bundle):
    data = json.loads((tiny_bundle / "manifest.json").read_text())
    data["something_new"] = {"x": 1}
    data["architecture"]["future_field"] = 3
    Manifest.from_dict(data)
    del data["precisions"]["int8"]["vision"]["sha256"]
    with pytest.raises(BundleError, match=r"missing key 'precisions.int8.vision.sha256'"):
        Manifest.from_dict(data)


def _copy(src, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(src, dst)
    return dst


def test_tampered_file_refused(tiny_bundle, tmp_path):
    b = _copy(tiny_bundle, tmp_path)
    path = b / "vision.int8.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"vision.int8.onnx does not match its sha256"):
        load_bundle(b)
    load_bundle(b, verify="fp32")  # other precisions stay usable


def test_truncated_and_missing_files_refused(tiny_bundle, tmp_path):
    b = _copy(tiny_bundle, tmp_path)
    (b / "text.fp16.onnx").write_bytes(b"short")
    with pytest.raises(BundleError, match=r"text.fp16.onnx is 5 bytes"):
        load_bundle(b)
    (b / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match=r"'tokenizer.json' named in manifest.json is missing"):
        load_bundle(b, verify="fp32")


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="no such bundle folder"):
        load_bundle(tmp_path / "nope")
    with pytest.raises(BundleError, match=r"not a clipedge bundle \(no manifest.json\)"):
        load_bundle(tmp_path)
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(tmp_path)


def test_missing_precision_named(tiny_bundle):
    bundle = load_bundle(tiny_bundle, verify=False)
    with pytest.raises(BundleError, match=r"no 'bf16' precision \(it has: fp32, int8, fp16, int8-static\)"):
        bundle.variant("bf16")
