"""Scoring formulas, in one place for the runtime, the export's validation, labels and the classifier: unit
vectors, CLIP's zero-shot softmax and calibrated multi-label scores. Pure numpy, nothing else.
"""

from __future__ import annotations

import numpy as np


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, float32 (a zero row stays zero)."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, np.float32(1e-12))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row softmax that subtracts the row max first (no overflow at logit_scale 100)."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def zero_shot_probs(image_embeddings: np.ndarray, label_embeddings: np.ndarray, logit_scale: float) -> np.ndarray:
    """CLIP's zero-shot probabilities for unit embeddings: softmax over labels of logit_scale x cosine,
    float64 [N, L]."""
    return softmax(logit_scale * (image_embeddings @ label_embeddings.T).astype(np.float64))


def multi_label_scores(
    image_embeddings: np.ndarray, label_embeddings: np.ndarray, thresholds: np.ndarray, logit_scale: float
) -> np.ndarray:
    """Each label on its own: sigmoid(logit_scale x (cosine - the label's threshold)), float32 [N, L]; 0.5 at
    the threshold (`clipedge.calibrate` fits the thresholds)."""
    cos = image_embeddings @ label_embeddings.T
    z = np.float32(logit_scale) * (cos - np.asarray(thresholds, dtype=np.float32)[None, :])
    return (1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))).astype(np.float32)
