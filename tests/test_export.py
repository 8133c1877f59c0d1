import json
import shutil

import numpy as np
import pytest
from clipedge.bundle import load_bundle, sha256_file
from clipedge.cli import main
from clipedge.options import LoadOptions
from clipedge.providers import create_session


def _leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if ".partial-" in p.name)


def test_tiny_bundle_contents(tiny_bundle):
    m = json.loads((tiny_bundle / "manifest.json").read_text())
    assert sorted(p.name for p in tiny_bundle.iterdir()) == sorted(
        ["manifest.json", "tokenizer.json"]
        + [f"{t}.{p}.onnx" for t in ("vision", "text") for p in ("fp32", "int8", "fp16", "int8-static")]
    )
    for v in m["precisions"].values():
        for tower in ("vision", "text"):
            entry = v[tower]
            assert sha256_file(tiny_bundle / entry["file"]) == entry["sha256"]
        assert v["validated_on"][0] == "CPUExecutionProvider"
        figures = v["parity"]["CPUExecutionProvider"]
        assert figures["finite"] and figures["image_cos_min"] >= v["thresholds"]["min_embedding_cosine"]
        assert {"image_max_abs_diff", "text_max_abs_diff", "probs_max_abs_diff", "top1_agreement"} <= set(figures)
        assert v["recipe"]
    applied = m["precisions"]["fp32"]["fusions"]["applied"]
    assert applied["vision"]["Attention"] == 2 and applied["text"]["Attention"] == 2  # 2 layers each
    assert applied["vision"]["SkipLayerNormalization"] >= 3
    for tower in ("vision", "text"):
        assert "SkipLayerNormalization" not in m["precisions"]["fp32"]["fusions"][tower]  # split (CPU speed)
        assert m["precisions"]["fp16"]["fusions"][tower]["SkipLayerNormalization"] >= 3
    assert m["precisions"]["int8"]["fusions"]["vision"].get("ConvInteger", 0) == 0  # patch Conv kept float
    assert m["source"]["kind"] == "local" and m["source"]["weights"][0]["file"] == "model.safetensors"
    assert m["source"]["id"] == "tiny"  # the checkpoint folder's name, never a local path (bundles travel)
    assert {"torch", "transformers", "onnx", "onnxruntime"} <= set(m["tools"])
    assert not _leftovers(tiny_bundle.parent)
    assert m["format_version"] == 3 and m["family"] == "clip"
    assert m["scoring"] == {"kind": "softmax", "logit_bias": 0.0} and m["tokenizer"]["padding"] == "longest"


def test_static_int8_is_standard_qdq_calibrated_and_recorded(tiny_bundle):
    import onnx
    from clipedge import openvino_engine as ove

    m = json.loads((tiny_bundle / "manifest.json").read_text())
    static = m["precisions"]["int8-static"]
    for tower in ("vision", "text"):
        graph = onnx.load(str(tiny_bundle / static[tower]["file"])).graph
        domains = {n.domain for n in graph.node}
        assert domains <= {"", "ai.onnx"}, domains  # standard operators only: OpenVINO, TensorRT read it
        ops = {n.op_type for n in graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "DynamicQuantizeLinear" not in ops
        assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    cal = m["calibration"]
    assert cal["files"] == 16 and cal["images"] == "clipedge_export/data/calibration" and len(cal["sha256"]) == 64
    assert cal["licences"].endswith("LICENSES.md") and cal["prompts"] > 100
    if ove.available():
        assert static["validated_on"] == ["CPUExecutionProvider", ove.PROVIDER]
        assert static["parity"][ove.PROVIDER]["image_cos_min"] >= 0.98


def test_old_bundles_still_load(tiny_bundle, tmp_path):
    import shutil

    from clipedge import ZeroShotClassifier

    old = tmp_path / "v1"
    shutil.copytree(tiny_bundle, old)
    m = json.loads((old / "manifest.json").read_text())
    m["format_version"] = 1
    for p in ("int8-static",):
        m["precisions"].pop(p)
    m.pop("calibration")
    for key in ("family", "scoring"):  # format 3's family description: a format 1 bundle is CLIP's
        m.pop(key)
    for key in ("padding", "attention_mask", "pooling", "normalization"):
        m["tokenizer"].pop(key)
    m["preprocess"].pop("resize_mode")
    (old / "manifest.json").write_text(json.dumps(m))
    old_clf = ZeroShotClassifier.load(old, provider="cpu")
    assert old_clf.precision == "int8" and old_clf.bundle.manifest.scoring.kind == "softmax"
    m["format_version"] = 4
    (old / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(Exception, match="format_version 4 is not supported .* upgrade clipedge"):
        ZeroShotClassifier.load(old)
    m["format_version"] = 3
    m["scoring"] = {"kind": "some-new-kind"}
    (old / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(Exception, match="scoring.kind 'some-new-kind' is not one this clipedge knows"):
        ZeroShotClassifier.load(old)


def test_fp16_keeps_float32_io(tiny_bundle):
    for tower in ("vision", "text"):
        s = create_session(tiny_bundle / f"{tower}.fp16.onnx", LoadOptions(provider="cpu"))
        assert s.get_outputs()[0].type == "tensor(float)"
        if tower == "vision":
            assert s.get_inputs()[0].type == "tensor(float)"


@pytest.mark.parametrize("eos_token_id", [2, 49407], ids=["legacy-eos-2", "eos-49407"])
def test_text_pooling_matches_transformers(tmp_path, eos_token_id):
    """Real CLIP ids, EOS padding, padded to the longest and to 77: the ONNX text tower picks the first EOS
    exactly where transformers pools (argmax(ids) for the legacy config, first EOS for the new one)."""
    import torch
    from clipedge_export.export import export_bundle
    from clipedge_export.random_checkpoint import make_random_checkpoint
    from transformers import CLIPModel, CLIPTokenizer

    ckpt = make_random_checkpoint(tmp_path / "ckpt", "tiny", seed=3, eos_token_id=eos_token_id)
    export_bundle(str(ckpt), tmp_path / "b", precisions="fp32,fp16", log=lambda m: None)
    model = CLIPModel.from_pretrained(str(ckpt)).eval()
    assert model.config.text_config.eos_token_id == eos_token_id
    tok = CLIPTokenizer.from_pretrained(str(ckpt))
    texts = ["a photo of a cat", "a dog", "", "an aerial photograph of a small red house near a river"]
    session = create_session(tmp_path / "b" / "text.fp32.onnx", LoadOptions(provider="cpu"))
    fp16 = create_session(tmp_path / "b" / "text.fp16.onnx", LoadOptions(provider="cpu"))
    for padding in ("longest", "max_length"):
        ids = tok(texts, padding=padding, max_length=77, return_tensors="np")["input_ids"].astype(np.int64)
        assert ids.max() == 49407 and (ids[:, -1] == 49407).all()
        with torch.no_grad():
            ref = model.get_text_features(input_ids=torch.from_numpy(ids))
            ref = (ref if isinstance(ref, torch.Tensor) else ref.pooler_output).numpy()
        out = session.run(None, {"input_ids": ids})[0]
        np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-4)
        out16 = fp16.run(None, {"input_ids": ids})[0]
        cos = (out16 * ref).sum(1) / np.linalg.norm(out16, axis=1) / np.linalg.norm(ref, axis=1)
        assert cos.min() > 0.999


def test_precision_subset_and_opset(tiny_checkpoint, tmp_path, capsys):
    assert (
        main(
            [
                "export",
                str(tiny_checkpoint),
                "-o",
                str(tmp_path / "b"),
                "--precisions",
                "int8, fp32",
                "--opset",
                "18",
            ]
        )
        == 0
    )
    bundle = load_bundle(tmp_path / "b")
    assert list(bundle.manifest.precisions) == ["fp32", "int8"]
    assert not (tmp_path / "b" / "vision.fp16.onnx").exists()
    assert "wrote" in capsys.readouterr().out


def _bad_config(tmp_path, tiny_checkpoint):
    d = tmp_path / "bert"
    shutil.copytree(tiny_checkpoint, d)
    (d / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    return d


def _truncated_weights(tmp_path, tiny_checkpoint):
    d = tmp_path / "trunc"
    shutil.copytree(tiny_checkpoint, d)
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 3])
    return d


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", "no such folder"),
        ("not-clip", "model_type is 'bert'; clipedge exports "),
        ("truncated", "cannot load the weights"),
        ("non-empty-out", "exists and is not empty"),
        ("unwritable-out", "cannot write the output folder"),
        ("bad-precision", "unknown precision int4"),
        ("bad-opset", "opset 9 is not supported"),
        ("no-weights", "no weights"),
        ("bad-hub-id", "not a Hugging Face hub id"),
    ],
)
def test_bad_inputs_one_line_error_no_partial_bundle(case, expected, tiny_checkpoint, tmp_path, capsys):
    source, out, extra = str(tiny_checkpoint), tmp_path / "out", []
    if case == "missing":
        source = str(tmp_path / "does-not-exist")
    elif case == "not-clip":
        source = str(_bad_config(tmp_path, tiny_checkpoint))
    elif case == "truncated":
        source = str(_truncated_weights(tmp_path, tiny_checkpoint))
    elif case == "non-empty-out":
        out.mkdir()
        (out / "keep.txt").write_text("user data")
    elif case == "unwritable-out":
        (tmp_path / "afile").write_text("x")
        out = tmp_path / "afile" / "bundle"
    elif case == "bad-precision":
        extra = ["--precisions", "fp32,int4"]
    elif case == "bad-opset":
        extra = ["--opset", "9"]
    elif case == "no-weights":
        d = tmp_path / "noweights"
        shutil.copytree(tiny_checkpoint, d)
        (d / "model.safetensors").unlink()
        source = str(d)
    elif case == "bad-hub-id":
        source = "not a/hub id"
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(["export", source, "-o", str(out), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("clipedge: error: ") and expected in err[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing new, no partial bundle
    if case == "non-empty-out":
        assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_interrupted_export_leaves_nothing(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    from clipedge_export import precisions

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(precisions, "quantize_int8", boom)
    assert main(["export", str(tiny_checkpoint), "-o", str(tmp_path / "b")]) == 130
    assert "interrupted; nothing was written" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_variant_below_threshold_fails_export(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    from clipedge_export import validate

    monkeypatch.setitem(validate.THRESHOLDS, "int8", 0.9999999)
    assert main(["export", str(tiny_checkpoint), "-o", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "validation failed on CPUExecutionProvider: int8: embedding cosine to PyTorch" in err
    assert "below the threshold 0.9999999" in err and "no bundle written" in err
    assert list(tmp_path.iterdir()) == []


def _fake_hub_cache(cache, repo_id, checkpoint, commit="0123456789abcdef0123456789abcdef01234567"):
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / commit
    shutil.copytree(checkpoint, snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return commit


def test_hub_id_from_local_cache_offline(tiny_checkpoint, tmp_path, monkeypatch):
    """The hub code path, up to the download: huggingface_hub resolves the id in an (offline) cache."""
    from clipedge_export.export import export_bundle

    cache = tmp_path / "hf-cache"
    commit = _fake_hub_cache(cache, "openai/clip-vit-base-patch32", tiny_checkpoint)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    m = export_bundle("openai/clip-vit-base-patch32", tmp_path / "b", precisions="fp32", log=lambda s: None)
    assert m.source.kind == "hub" and m.source.id == "openai/clip-vit-base-patch32"
    assert m.source.revision == commit
    assert m.source.weights[0].sha256 == sha256_file(tiny_checkpoint / "model.safetensors")


def test_hub_id_not_cached_offline_is_clear_error(tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants as c

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    assert main(["export", "openai/clip-vit-base-patch32", "-o", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "openai/clip-vit-base-patch32: cannot get the checkpoint from the Hugging Face hub or the local cache" in err
    assert not (tmp_path / "b").exists()


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/clipedge-pwned",))


def test_bin_weights_load_with_weights_only(tiny_checkpoint, tmp_path, capsys):
    """pytorch_model.bin works; a pickle that would run code is refused (torch.load(weights_only=True))."""
    import os

    import torch
    from clipedge_export.export import export_bundle
    from safetensors.torch import load_file

    ckpt = tmp_path / "bin"
    shutil.copytree(tiny_checkpoint, ckpt)
    state = load_file(ckpt / "model.safetensors")
    (ckpt / "model.safetensors").unlink()
    torch.save(state, ckpt / "pytorch_model.bin")
    m = export_bundle(str(ckpt), tmp_path / "b", precisions="fp32", log=lambda s: None)
    assert m.source.weights[0].file == "pytorch_model.bin"
    torch.save({"payload": _Evil()}, ckpt / "pytorch_model.bin")
    if os.path.exists("/tmp/clipedge-pwned"):
        os.remove("/tmp/clipedge-pwned")
    assert main(["export", str(ckpt), "-o", str(tmp_path / "evil")]) == 2
    assert "cannot load the weights" in capsys.readouterr().err
    assert not os.path.exists("/tmp/clipedge-pwned") and not (tmp_path / "evil").exists()
