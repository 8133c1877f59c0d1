import numpy as np
from clipedge import ZeroShotClassifier

from .parity import transformers_probs


def test_tiny_end_to_end_probs_match_transformers(tiny_checkpoint, tiny_bundle, photos):
    labels = ["an astronaut", "a cup of coffee", "a cat", "a rocket"]
    images = list(photos.values())
    ref = transformers_probs(tiny_checkpoint, images, labels)
    clf = ZeroShotClassifier.load(tiny_bundle, precision="fp32", provider="cpu")
    ours = np.array([r["probs"] for r in clf.classify(images, labels)])
    np.testing.assert_allclose(ours, ref, atol=1e-4)
