"""Parity of every ONNX variant with PyTorch on the same deterministic images and prompts.

The reference is transformers' own path for the family (get_image_features / get_text_features, with its own
pooling rule). Figures per variant: min and mean embedding cosine, max abs difference of embeddings, and of
zero-shot probabilities (each image against all prompts, the family's scoring), top-1 agreement, and whether
any output was NaN/inf. The export fails below the thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from clipedge.bundle import Scoring
from clipedge.scoring import probabilities
from PIL import Image, ImageDraw

# Minimum embedding cosine (both towers) per precision. fp32 must be numerically the same model.
# int8 dynamic quantisation of CLIP measures 0.993-0.999 on the trained demo model and on random weights;
# 0.98 catches broken recipes (a quantised patch Conv with uint8 weights falls far lower) without failing on
# a checkpoint with larger activation outliers. fp16 keeps ~3 decimal digits: 0.999.
THRESHOLDS = {"fp32": 0.99999, "int8": 0.98, "fp16": 0.999, "int8-static": 0.98, "fp32-unfused": 0.99999}

# Text in many scripts and shapes: the token ids of each family's tokenizer.json are checked against its
# reference tokenizer on these at export (and in the tests), before any embedding is compared.
MULTILINGUAL = [
    "一张猫的照片",
    "猫の写真です。犬もいます",
    "صورة قطة جميلة في الحديقة",
    "बिल्ली की एक तस्वीर",
    "une photo très jolie d'un chat, naïve café à Orléans",
    "ΣΟΦΙΑ και σοφία στην ΟΔΟΣ",
    "İstanbul'da bir kedi; straße; Ǆ ǅ ǆ; ﬁ ligature; ①②③",
    "🎨 emoji 😀 art 👩‍👩‍👧",
    "\u00a0non-breaking\u2003spaces\tand\nnewlines ",
    "",
    " ".join(["a very long caption in many words that will certainly be cut"] * 20),
    "A Photo, of a CAT!!! (with punctuation: #1 & 'quotes') ...",
]

PROMPTS = [
    "a photo of a cat",
    "a photo of a dog.",
    "A RED CIRCLE on a white background!",
    "",
    "an image of stripes, checks & dots — très jolie 🎨",
    "it's a diagram of the north-east (NE) corner, 3 metres wide",
    "   extra    whitespace\tand\nnewlines   ",
    " ".join(["a very long caption that will be truncated"] * 12),
]


def validation_images(n: int = 8, seed: int = 1234) -> list[Image.Image]:
    """Deterministic, varied RGB images: gradients, shapes, noise, stripes, saturated flats, odd aspect ratios."""
    rng = np.random.default_rng(seed)
    images: list[Image.Image] = []
    sizes = [(320, 240), (240, 320), (500, 500), (224, 224), (640, 200), (97, 131), (256, 256), (300, 400)]
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        kind = i % 8
        if kind == 0:  # colour gradient
            x = np.linspace(0, 255, w)[None, :, None]
            y = np.linspace(0, 255, h)[:, None, None]
            arr = np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2)
            im = Image.fromarray(arr.astype(np.uint8))
        elif kind == 1:  # shapes on a plain background
            im = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(0, 256, 3)))
            d = ImageDraw.Draw(im)
            for _ in range(5):
                x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
                box = [x0, y0, x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2))]
                fill = tuple(int(c) for c in rng.integers(0, 256, 3))
                (d.ellipse if rng.random() < 0.5 else d.rectangle)(box, fill=fill)
        elif kind == 2:  # noise
            im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        elif kind == 3:  # saturated white
            im = Image.new("RGB", (w, h), (255, 255, 255))
        elif kind == 4:  # stripes
            arr = np.zeros((h, w, 3), dtype=np.uint8)
            arr[:, (np.arange(w) // 8) % 2 == 0] = (250, 30, 30)
            im = Image.fromarray(arr)
        elif kind == 5:  # saturated black
            im = Image.new("RGB", (w, h), (0, 0, 0))
        elif kind == 6:  # checkerboard
            yy, xx = np.mgrid[0:h, 0:w]
            arr = (((yy // 16) + (xx // 16)) % 2 * 255).astype(np.uint8)
            im = Image.fromarray(np.stack([arr, 255 - arr, arr // 2], axis=2))
        else:  # smooth blobs
            yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
            arr = np.stack([np.sin(6 * xx + k) * np.cos(5 * yy - k) for k in range(3)], axis=2)
            im = Image.fromarray(((arr + 1) * 127.5).astype(np.uint8))
        images.append(im)
    return images


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _probs(img: np.ndarray, txt: np.ndarray, logit_scale: float, scoring: Scoring) -> np.ndarray:
    return probabilities(_unit(img), _unit(txt), logit_scale, scoring.kind, scoring.logit_bias)  # the runtime's


@dataclass(frozen=True)
class Reference:
    pixel_values: np.ndarray
    input_ids: np.ndarray
    image_embeds: np.ndarray
    text_embeds: np.ndarray
    logit_scale: float
    attention_mask: np.ndarray | None = None
    scoring: Scoring = field(default_factory=Scoring)


def parity(ref: Reference, image_embeds: np.ndarray, text_embeds: np.ndarray) -> dict[str, Any]:
    """Figures comparing one variant's outputs with the PyTorch reference."""
    finite = bool(np.isfinite(image_embeds).all() and np.isfinite(text_embeds).all())
    out: dict[str, Any] = {"finite": finite}
    for name, a, b in (("image", image_embeds, ref.image_embeds), ("text", text_embeds, ref.text_embeds)):
        cos = (_unit(a) * _unit(b)).sum(axis=1) if finite else np.array([np.nan])
        out[f"{name}_cos_min"] = round(float(np.min(cos)), 7)
        out[f"{name}_cos_mean"] = round(float(np.mean(cos)), 7)
        out[f"{name}_max_abs_diff"] = float(np.max(np.abs(a - b))) if finite else float("nan")
    if finite:
        p = _probs(image_embeds, text_embeds, ref.logit_scale, ref.scoring)
        q = _probs(ref.image_embeds, ref.text_embeds, ref.logit_scale, ref.scoring)
        out["probs_max_abs_diff"] = float(np.max(np.abs(p - q)))
        out["top1_agreement"] = float(np.mean(p.argmax(1) == q.argmax(1)))
    out["n_images"], out["n_texts"] = len(ref.image_embeds), len(ref.text_embeds)
    return out


def check(precision: str, figures: dict[str, Any]) -> str | None:
    """None when the variant passes its threshold, else the reason (one line)."""
    threshold = THRESHOLDS[precision]
    if not figures["finite"]:
        return f"{precision}: NaN or inf in the embeddings"
    worst = min(figures["image_cos_min"], figures["text_cos_min"])
    if worst < threshold:
        return (
            f"{precision}: embedding cosine to PyTorch {worst:.6f} is below the threshold {threshold} "
            f"(image {figures['image_cos_min']:.6f}, text {figures['text_cos_min']:.6f})"
        )
    return None
