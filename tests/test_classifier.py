import logging
from pathlib import Path

import numpy as np
import pytest
from clipedge import ImageError, LabelEmbeddings, ProviderError, ZeroShotClassifier
from clipedge.labels import LabelFileError, parse_labels
from clipedge.options import LoadOptions
from clipedge.scoring import softmax
from clipedge.templates import OPENAI_IMAGENET, resolve_templates
from PIL import Image

IMAGES = [Image.new("RGB", (80, 60), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]


@pytest.fixture(scope="module")
def clf(tiny_bundle):
    return ZeroShotClassifier.load(tiny_bundle, precision="fp32", provider="cpu")


class CountingText:
    """Wraps the text tower to count passes and texts."""

    def __init__(self, clf):
        self.encoder = clf.encoder
        self.inner = clf.encoder.embed_tokens
        self.calls = self.texts = 0

    def __call__(self, tokens):
        self.calls += 1
        self.texts += len(tokens.ids)
        return self.inner(tokens)


def test_classify_shape_order_and_sum(clf):
    labels = ["red thing", "green thing", "blue thing", "a dog"]
    res = clf.classify(IMAGES, labels)
    assert len(res) == 3
    for r in res:
        assert r["labels"] == labels and len(r["probs"]) == 4
        assert abs(sum(r["probs"]) - 1) < 1e-5
    top = clf.classify(IMAGES[:1], labels, top_k=2)[0]
    assert len(top["labels"]) == 2 and top["probs"][0] >= top["probs"][1]


def test_probabilities_follow_the_embeddings(clf):
    labels = ["red thing", "green thing", "blue thing"]
    img = clf.embed_images(IMAGES)
    txt = clf.embed_texts(labels)
    expected = softmax(clf.bundle.manifest.logit_scale * img @ txt.T)
    got = np.array([r["probs"] for r in clf.classify(IMAGES, labels)])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.allclose(np.linalg.norm(img, axis=1), 1, atol=1e-5)


def test_softmax_is_stable():
    p = softmax(np.array([[1000.0, 999.0, -1000.0]]))
    assert np.isfinite(p).all() and abs(p.sum() - 1) < 1e-12


def test_label_cache_avoids_text_passes(tiny_bundle, monkeypatch):
    clf = ZeroShotClassifier.load(tiny_bundle, precision="int8", provider="cpu")
    counter = CountingText(clf)
    monkeypatch.setattr(clf.encoder, "embed_tokens", counter)
    labels = [f"object number {i}" for i in range(1000)]
    clf.classify(IMAGES, labels)
    assert counter.texts == 1000 and counter.calls <= 4  # batched, not one pass per label
    clf.classify(IMAGES, labels)
    clf.classify(IMAGES[:1], labels[:10])
    assert counter.texts == 1000  # all from the cache
    clf.classify(IMAGES[:1], [*labels[:10], "something new"])
    assert counter.texts == 1001  # only the new label
    clf.label_embeddings(labels[:5], "a photo of a {}.")
    assert counter.texts == 1006  # another template set is another key


def test_template_ensemble_is_mean_of_unit_vectors(clf):
    labels = ["cat", "dog"]
    ens = clf.label_embeddings(labels, "openai-imagenet")
    assert ens.templates == OPENAI_IMAGENET and len(OPENAI_IMAGENET) == 80
    manual = []
    for label in labels:
        e = clf.embed_texts([t.format(label) for t in OPENAI_IMAGENET]).mean(axis=0)
        manual.append(e / np.linalg.norm(e))
    np.testing.assert_allclose(ens.embeddings, np.array(manual), atol=1e-5)
    single = clf.label_embeddings(labels, "a photo of a {}.")
    np.testing.assert_allclose(
        single.embeddings, clf.embed_texts(["a photo of a cat.", "a photo of a dog."]), atol=1e-6
    )


def test_label_file_round_trip_and_refused_for_other_bundle(clf, tmp_path, tiny_checkpoint):
    emb = clf.label_embeddings(["cat", "dog"], "a photo of a {}.")
    path = tmp_path / "labels.npz"
    emb.save(path)
    loaded = clf.load_labels(path)
    assert loaded.labels == ("cat", "dog") and loaded.templates == ("a photo of a {}.",)
    np.testing.assert_array_equal(loaded.embeddings, emb.embeddings)
    assert clf.classify(IMAGES[:1], loaded)[0]["labels"] == ["cat", "dog"]
    other = LabelEmbeddings(emb.labels, emb.templates, emb.embeddings, "0" * 64, "fp32")
    other.save(tmp_path / "other.npz")
    with pytest.raises(LabelFileError, match="computed with another bundle"):
        clf.load_labels(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(LabelFileError, match="not a clipedge label-embedding file"):
        clf.load_labels(tmp_path / "junk.npz")


def test_bad_images_raise_or_are_returned(clf, tmp_path):
    sources = [IMAGES[0], str(tmp_path / "missing.png"), b"\x89PNG broken", IMAGES[1]]
    with pytest.raises(ImageError, match=r"image 1: .*missing.png: no such file"):
        clf.classify(sources, ["a", "b"])
    res = clf.classify(sources, ["a", "b"], errors="return")
    assert [r["probs"] is None for r in res] == [False, True, True, False]
    assert "no such file" in res[1]["error"] and "not an image" in res[2]["error"]
    assert res[3]["probs"] == pytest.approx(clf.classify([IMAGES[1]], ["a", "b"])[0]["probs"], abs=1e-5)


def test_bad_labels(clf):
    with pytest.raises(ValueError, match="no labels"):
        clf.classify(IMAGES, [])
    with pytest.raises(ValueError, match="label 1 is empty"):
        clf.classify(IMAGES, ["cat", "  "])
    with pytest.raises(ValueError, match="must contain exactly one"):
        clf.classify(IMAGES, ["cat"], templates="a photo")


def test_parse_labels_like_azure():
    assert parse_labels(" credit card payment, contactless payment,, cash payment ,mobile order,") == [
        "credit card payment", "contactless payment", "cash payment", "mobile order"]  # fmt: skip
    assert parse_labels(" , ,") == []
    assert resolve_templates(None) == ("{}",)


def test_providers(tiny_bundle, monkeypatch, caplog):
    import onnxruntime as ort
    from clipedge import providers

    with pytest.raises(ProviderError, match="unknown provider 'gpu9'"):
        ZeroShotClassifier.load(tiny_bundle, provider="gpu9")
    clf = ZeroShotClassifier.load(tiny_bundle, provider=["CPUExecutionProvider"], threads=1)
    assert clf.precision == "int8"  # auto on CPU
    assert ZeroShotClassifier.load(tiny_bundle, precision="fp16", provider="cpu").precision == "fp16"
    if "CUDAExecutionProvider" in ort.get_available_providers():
        return  # the rest is about builds without CUDA, or with a CUDA that cannot start
    with pytest.raises(ProviderError, match="CUDAExecutionProvider is not available"):
        ZeroShotClassifier.load(tiny_bundle, provider="cuda")
    assert ZeroShotClassifier.load(tiny_bundle, provider="auto", engine="onnxruntime").encoder.providers == [
        "CPUExecutionProvider"
    ]
    with caplog.at_level(logging.WARNING, logger="clipedge"):  # --provider cuda --provider-fallback, CPU build
        fallback = ZeroShotClassifier.load(tiny_bundle, provider="cuda", strict=False)
    assert fallback.encoder.providers == ["CPUExecutionProvider"] and fallback.precision == "int8"
    assert "not available in this onnxruntime" in caplog.text and "falling back to CPUExecutionProvider" in caplog.text

    # A CUDA build whose CUDA cannot start: onnxruntime offers CUDA, then runs the session on the CPU.
    monkeypatch.setattr(
        providers.ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    with pytest.raises(ProviderError, match="requested CUDAExecutionProvider is not in effect"):
        providers.create_session(tiny_bundle / "vision.fp32.onnx", LoadOptions(provider="cuda"))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="clipedge"):
        providers.create_session(tiny_bundle / "vision.fp32.onnx", LoadOptions(provider="cuda", strict=False))
    assert "not in effect" in caplog.text
    # precision "auto" is chosen for the provider in effect: int8 on the CPU, never CUDA's fp16
    auto = ZeroShotClassifier.load(tiny_bundle, provider="auto", engine="onnxruntime")
    assert auto.encoder.providers == ["CPUExecutionProvider"] and auto.precision == "int8"
    loose = ZeroShotClassifier.load(tiny_bundle, provider="cuda", strict=False)
    assert loose.encoder.providers == ["CPUExecutionProvider"] and loose.precision == "int8"
    assert loose.classify(IMAGES[:1], ["red", "blue"])[0]["probs"] is not None  # text tower runs there too
    assert ZeroShotClassifier.load(tiny_bundle, "fp16", provider="cuda", strict=False).precision == "fp16"


def test_missing_precision_and_tampered_bundle(tiny_bundle, tmp_path):
    import shutil

    from clipedge import BundleError

    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    (b / "vision.int8.onnx").write_bytes((b / "vision.int8.onnx").read_bytes()[:-10] + b"0123456789")
    with pytest.raises(BundleError, match="does not match its sha256"):
        ZeroShotClassifier.load(b, precision="int8")
    ZeroShotClassifier.load(b, precision="fp32")  # only the precision in use is verified


def test_thread_pools_in_fresh_processes(tiny_bundle):
    """ "session" (library default) leaves other ONNX Runtime users alone; "shared" makes every later
    clipedge session join the one process-wide pool, and results do not depend on the pool."""
    import subprocess
    import sys

    code = f"""
import numpy as np, onnxruntime as ort
from clipedge.options import LoadOptions
from clipedge import ZeroShotClassifier
from clipedge.providers import create_session
img = "models/demo/examples/red_circle.png"
a = ZeroShotClassifier.load({str(tiny_bundle)!r}, "fp32", "cpu")
pa = a.classify([img], ["red", "blue"])[0]["probs"]
ort.InferenceSession({str(tiny_bundle / "vision.fp32.onnx")!r}, providers=["CPUExecutionProvider"])
b = ZeroShotClassifier.load({str(tiny_bundle)!r}, "fp32", "cpu", threads=1, thread_pool="shared")
pb = b.classify([img], ["red", "blue"])[0]["probs"]
late = create_session({str(tiny_bundle / "text.fp32.onnx")!r}, LoadOptions(provider="cpu"))  # joins the shared pool
assert np.allclose(pa, pb, atol=1e-6), (pa, pb)
print("ok")
"""
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
