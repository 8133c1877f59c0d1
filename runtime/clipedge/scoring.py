"""Scoring formulas, in one place for the runtime, the export's validation, labels and the classifier: unit
vectors, the families' zero-shot probabilities (CLIP's softmax over the labels, SigLIP's sigmoid per label,
as the manifest's `scoring` says) and calibrated multi-label scores. Pure numpy, nothing else.
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


def sigmoid_probs(
    image_embeddings: np.ndarray, label_embeddings: np.ndarray, logit_scale: float, logit_bias: float
) -> np.ndarray:
    """SigLIP's zero-shot probabilities for unit embeddings: sigmoid(logit_scale x cosine + logit_bias) for each
    label on its own (what transformers' zero-shot pipeline returns for SigLIP), float64 [N, L]."""
    z = logit_scale * (image_embeddings @ label_embeddings.T).astype(np.float64) + logit_bias
    return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))


def probabilities(
    image_embeddings: np.ndarray, label_embeddings: np.ndarray, logit_scale: float, kind: str, logit_bias: float = 0.0
) -> np.ndarray:
    """The family's zero-shot probabilities, float64 [N, L]: `kind` "softmax" (over the labels: they sum to 1)
    or "sigmoid" (each label on its own)."""
    if kind == "sigmoid":
        return sigmoid_probs(image_embeddings, label_embeddings, logit_scale, logit_bias)
    return zero_shot_probs(image_embeddings, label_embeddings, logit_scale)


def multi_label_scores(
    image_embeddings: np.ndarray, label_embeddings: np.ndarray, thresholds: np.ndarray, logit_scale: float
) -> np.ndarray:
    """Each label on its own: sigmoid(logit_scale x (cosine - the label's threshold)), float32 [N, L]; 0.5 at
    the threshold (`clipedge.calibrate` fits the thresholds)."""
    cos = image_embeddings @ label_embeddings.T
    z = np.float32(logit_scale) * (cos - np.asarray(thresholds, dtype=np.float32)[None, :])
    return (1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))).astype(np.float32)
