"""Model families beyond CLIP, each exported from a random-weight checkpoint saved with `save_pretrained`
and compared with transformers' own code: the reference tokenizer's ids, the towers' embeddings, and the
zero-shot pipeline's scores. SigLIP: sigmoid scoring with its bias, squash resize, text padded to 64 with
its attention mask, the tokenizer's text normalisation. The tokenizer, which cannot be downloaded here, is a
SentencePiece model trained offline and wrapped in transformers' SiglipTokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sentencepiece")

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "models" / "demo"
LABELS = ["a cat", "a cup of coffee", "a rocket", "一只猫", "猫", "قطة", "बिल्ली", "un café très chaud", "ΟΔΟΣ 🎨"]


@pytest.fixture(scope="session")
def siglip_checkpoint(tmp_path_factory):
    from clipedge_export.random_checkpoint import make_random_siglip

    # a small scale and bias keep random embeddings' probabilities off 0 and 1, where differences show
    return make_random_siglip(tmp_path_factory.mktemp("ckpt") / "siglip", "siglip-tiny", 0, 10.0, -1.0)


@pytest.fixture(scope="session")
def siglip_bundle(tmp_path_factory, siglip_checkpoint):
    from clipedge_export.export import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "siglip"
    export_bundle(str(siglip_checkpoint), out, log=lambda _: None)
    return out


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def test_the_manifest_describes_the_family(siglip_bundle):
    m = json.loads((siglip_bundle / "manifest.json").read_text())
    assert m["format_version"] == 3 and m["family"] == "siglip"
    assert m["scoring"] == {"kind": "sigmoid", "logit_bias": pytest.approx(-1.0)} and m["logit_scale"] == pytest.approx(
        10
    )
    assert m["preprocess"]["resize_mode"] == "squash" and m["preprocess"]["mean"] == [0.5, 0.5, 0.5]
    tok = m["tokenizer"]
    assert tok["padding"] == "max_length" and tok["context_length"] == 64 and tok["attention_mask"] is True
    assert tok["bos_id"] == -1 and tok["pooling"] == "last" and "punctuation removed" in tok["normalization"]
    assert m["towers"]["text"]["attention_mask"] == "token_mask"
    assert m["precisions"]["fp32"]["fusions"]["applied"]["vision"]["Attention"] == 2  # both layers fused
    assert m["precisions"]["fp32"]["fusions"]["applied"]["text"]["Attention"] == 2
    for p in ("fp32", "int8", "fp16", "int8-static"):
        assert m["precisions"][p]["parity"]["CPUExecutionProvider"]["finite"]


def test_token_ids_are_the_reference_tokenizers(siglip_checkpoint, siglip_bundle):
    from clipedge.bundle import load_bundle
    from clipedge.tokenizer import ClipTokenizer
    from clipedge_export.validate import MULTILINGUAL, PROMPTS
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(siglip_checkpoint)
    m = load_bundle(siglip_bundle, verify=False).manifest
    ours = ClipTokenizer(siglip_bundle / m.tokenizer.file, m.tokenizer)
    corpus = [*MULTILINGUAL, *PROMPTS, *LABELS, "Σ", "ΑΣ ΣΑ", "don't stop!", "x" * 500]
    want = reference(corpus, padding="max_length", max_length=64, truncation=True, return_tensors="np")
    got = ours.tokens(corpus)
    np.testing.assert_array_equal(got.ids, want["input_ids"])
    np.testing.assert_array_equal(got.mask(), want["attention_mask"])


def test_towers_match_transformers_on_photos_and_many_scripts(siglip_checkpoint, siglip_bundle, photos):
    import torch
    from clipedge import ZeroShotClassifier
    from clipedge_export.validate import MULTILINGUAL
    from transformers import AutoProcessor, SiglipModel

    model = SiglipModel.from_pretrained(siglip_checkpoint).eval()
    processor = AutoProcessor.from_pretrained(siglip_checkpoint)
    images = list(photos.values())
    texts = [t for t in MULTILINGUAL if t] + LABELS
    with torch.no_grad():
        ref_img = model.get_image_features(**processor(images=images, return_tensors="pt")).pooler_output.numpy()
        inputs = processor.tokenizer(texts, padding="max_length", max_length=64, truncation=True, return_tensors="pt")
        ref_txt = model.get_text_features(**inputs).pooler_output.numpy()
    fp32 = ZeroShotClassifier.load(siglip_bundle, "fp32", "cpu")
    assert cosines(fp32.embed_images(images), ref_img).min() >= 0.99999
    assert cosines(fp32.embed_texts(texts), ref_txt).min() >= 0.99999
    for precision in ("int8", "int8-static"):  # tiny random weights: fidelity floors, not the targets
        clf = ZeroShotClassifier.load(siglip_bundle, precision, "cpu", engine="onnxruntime")
        assert cosines(clf.embed_images(images), ref_img).min() >= 0.98
        assert cosines(clf.embed_texts(texts), ref_txt).min() >= 0.99


def test_scores_are_the_zero_shot_pipelines(siglip_checkpoint, siglip_bundle, photos):
    from clipedge import ZeroShotClassifier
    from transformers import pipeline

    pipe = pipeline("zero-shot-image-classification", model=str(siglip_checkpoint))
    clf = ZeroShotClassifier.load(siglip_bundle, "fp32", "cpu")
    worst, spread = 0.0, []
    for image in photos.values():
        ref = {d["label"]: d["score"] for d in pipe(image, candidate_labels=LABELS)}
        ours = clf.classify([image], LABELS, templates="This is a photo of {}.")[0]
        worst = max(worst, max(abs(ref[label] - p) for label, p in zip(ours["labels"], ours["probs"], strict=True)))
        spread += ours["probs"]
    assert worst <= 1e-4
    assert 0.05 < np.mean(spread) < 0.95 and abs(sum(ours["probs"]) - 1) > 0.01  # sigmoid: no sum to 1


def test_every_entry_point_gives_the_familys_scores(siglip_bundle, tmp_path, capsys):
    """classify (CLI), batch, a pack, and the endpoint's Azure and Hugging Face routes: the same sigmoid
    scores as the Python API."""
    import base64

    import httpx
    from clipedge import ZeroShotClassifier
    from clipedge.cli import main

    from .serverproc import ServerProcess

    image = DEMO / "examples" / "red_circle.png"
    labels = ["red circle", "blue cross", "a cat"]
    clf = ZeroShotClassifier.load(siglip_bundle, "int8", "cpu", engine="onnxruntime")
    expected = clf.classify([image], labels)[0]["probs"]
    model = ["-m", str(siglip_bundle), "--precision", "int8", "--engine", "onnxruntime"]
    assert main(["classify", str(image), *model, "--labels", ", ".join(labels), "--json"]) == 0
    np.testing.assert_allclose(json.loads(capsys.readouterr().out)[0]["probs"], expected, atol=1e-6)
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / image.name).write_bytes(image.read_bytes())
    assert main(["batch", str(folder), *model, "--labels", ", ".join(labels), "-o", str(tmp_path / "o.jsonl")]) == 0
    np.testing.assert_allclose(json.loads((tmp_path / "o.jsonl").read_text())["probs"], expected, atol=1e-6)
    assert main(["pack", str(siglip_bundle), "--precision", "int8", "--labels", ", ".join(labels), "-o",
                 str(tmp_path / "pack")]) == 0  # fmt: skip
    packed = ZeroShotClassifier.load(tmp_path / "pack")
    assert packed.bundle.manifest.scoring.kind == "sigmoid"
    fp32_text = ZeroShotClassifier.load(siglip_bundle, "int8", "cpu", engine="onnxruntime", text_precision="fp32")
    np.testing.assert_allclose(
        packed.classify([image])[0]["probs"], fp32_text.classify([image], labels)[0]["probs"], atol=1e-6
    )
    b64 = base64.b64encode(image.read_bytes()).decode()
    with ServerProcess(siglip_bundle, "--precision", "int8", "--engine", "onnxruntime") as s:
        body = {"input_data": {"columns": ["image", "text"], "data": [[b64, ", ".join(labels)]]}}
        r = httpx.post(s.url + "/score", json=body, timeout=30)
        np.testing.assert_allclose(r.json()[0]["probs"], expected, atol=1e-6)
        hf = {"inputs": b64, "parameters": {"candidate_labels": labels, "hypothesis_template": "{}"}}
        r = httpx.post(s.url + "/", json=hf, timeout=30)
        assert {d["label"]: d["score"] for d in r.json()} == pytest.approx(
            dict(zip(labels, expected, strict=True)), abs=1e-6
        )
