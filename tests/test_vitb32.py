"""The exact openai/clip-vit-base-patch32 architecture with random weights: export, fusions, parity."""

import numpy as np
import pytest
from clipedge.bundle import load_bundle

pytestmark = pytest.mark.slow


def test_export_fuses_and_validates(vitb32_bundle):
    m = load_bundle(vitb32_bundle).manifest
    a = m.architecture
    assert (a.embed_dim, a.image_size, a.patch_size, a.context_length, a.vocab_size) == (
        512,
        224,
        32,
        77,
        49408,
    )
    assert (a.vision_width, a.vision_layers, a.text_width, a.text_layers, a.text_heads) == (
        768,
        12,
        512,
        12,
        8,
    )
    applied = m.precisions["fp32"].fusions["applied"]
    for tower in ("vision", "text"):
        assert applied[tower]["Attention"] == 12 and applied[tower]["QuickGelu"] == 12
    assert applied["vision"]["SkipLayerNormalization"] == 23 and applied["text"]["SkipLayerNormalization"] == 24
    assert m.precisions["fp32"].fusions["vision"]["MatMul"] == 37  # 97 before fusion
    for p in ("fp32", "int8"):  # SkipLayerNorm split for the CPU provider (its kernel is slow), fp16 keeps it
        ops = m.precisions[p].fusions
        assert "SkipLayerNormalization" not in ops["vision"] and ops["vision"]["LayerNormalization"] == 26
        assert "SkipLayerNormalization" not in ops["text"]
    assert m.precisions["fp16"].fusions["vision"]["SkipLayerNormalization"] == 23
    cpu = {p: v.parity["CPUExecutionProvider"] for p, v in m.precisions.items()}
    assert min(cpu["fp32"]["image_cos_min"], cpu["fp32"]["text_cos_min"]) >= 0.99999
    assert min(cpu["fp16"]["image_cos_min"], cpu["fp16"]["text_cos_min"]) >= 0.999
    assert min(cpu["int8"]["image_cos_min"], cpu["int8"]["text_cos_min"]) >= 0.98
    sizes = {p: v.vision.bytes + v.text.bytes for p, v in m.precisions.items()}
    assert sizes["int8"] < sizes["fp32"] / 3.5 and sizes["fp16"] < sizes["fp32"] / 1.9


def test_end_to_end_probs_match_transformers(vitb32_checkpoint, vitb32_bundle, photos):
    """CLIPModel + CLIPProcessor on the same random weights vs ZeroShotClassifier fp32: probs within 1e-4."""
    from clipedge import ZeroShotClassifier

    from .parity import transformers_probs

    labels = ["an astronaut", "a cup of coffee", "a cat", "a rocket", "a photo of a dog"]
    images = list(photos.values())
    ref = transformers_probs(vitb32_checkpoint, images, labels)
    clf = ZeroShotClassifier.load(vitb32_bundle, precision="fp32", provider="cpu")
    ours = np.array([r["probs"] for r in clf.classify(images, labels)])
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    int8 = ZeroShotClassifier.load(vitb32_bundle, precision="int8", provider="cpu")
    ours8 = np.array([r["probs"] for r in int8.classify(images, labels)])
    assert np.isfinite(ours8).all()
