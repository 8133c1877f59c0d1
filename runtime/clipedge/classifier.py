"""ZeroShotClassifier: the one library call the CLI, the HTTP endpoint, the batch mode and the benchmarks share."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .bundle import Bundle, load_bundle
from .encoder import ClipEncoder
from .images import DecodePolicy, ImageError, ImageInput, describe, load_image
from .labels import LabelCache, LabelEmbeddings, embed_label_texts, templates_key
from .preprocess import preprocess, preprocess_batch
from .providers import ProviderSpec, resolve_providers
from .templates import resolve_templates
from .tokenizer import ClipTokenizer


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row softmax that subtracts the row max first (no overflow at logit_scale 100)."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def choose_precision(bundle: Bundle, providers: list[Any]) -> str:
    """ "auto": int8 on CPU, fp16 on CUDA, when the bundle has them (each passed its parity threshold at
    export); else fp32; else whatever the bundle has."""
    have = bundle.manifest.precisions
    first = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
    order = ["fp16", "fp32", "int8"] if first != "CPUExecutionProvider" else ["int8", "fp32", "fp16"]
    for p in order:
        if p in have:
            return p
    raise ValueError(f"{bundle.path}: bundle has no precisions")


def load_images(
    sources: Sequence[ImageInput], policy: DecodePolicy | None = None, workers: int | None = None
) -> list[Image.Image | ImageError]:
    """Decode every input; a bad one becomes its ImageError in place. URLs are fetched concurrently."""
    policy = policy or DecodePolicy()

    def one(src: ImageInput) -> Image.Image | ImageError:
        try:
            return load_image(src, policy)
        except ImageError as e:
            return e

    remote = sum(isinstance(s, str) and s.lstrip().startswith(("http://", "https://")) for s in sources)
    if remote > 1:
        with ThreadPoolExecutor(max_workers=workers or min(16, remote)) as pool:
            return list(pool.map(one, sources))
    return [one(s) for s in sources]


@dataclass
class ZeroShotClassifier:
    """Zero-shot CLIP classification from a bundle.

    >>> clf = ZeroShotClassifier.load("models/demo")
    >>> clf.classify(["models/demo/examples/red_circle.png"], ["red circle", "blue square"])
    [{'labels': ['red circle', 'blue square'], 'probs': [...]}]
    """

    bundle: Bundle
    encoder: ClipEncoder
    tokenizer: ClipTokenizer
    decode_policy: DecodePolicy
    cache: LabelCache

    @classmethod
    def load(
        cls,
        path: str | Path,
        precision: str = "auto",
        provider: ProviderSpec = "auto",
        threads: int | None = None,
        strict: bool = True,
        verify: bool = True,
        decode_policy: DecodePolicy | None = None,
        cache_size: int = 16384,
        fast_jpeg: bool = False,
        thread_pool: str = "session",
    ) -> ZeroShotClassifier:
        """Load a bundle folder. precision: "auto", "fp32", "int8" or "fp16"; provider: "auto", "cpu",
        "cuda" or an ONNX Runtime provider list; strict: a requested provider that is not in effect is an
        error (else a warning); verify: check the files' sha256 against the manifest; fast_jpeg: let
        libjpeg decode large JPEGs at 1/2..1/8 scale (3-10x faster decoding, embeddings change slightly:
        see README); thread_pool: "session" (default: plays well with other ONNX Runtime users in the
        process) or "shared" (one spinning process-wide pool: lowest latency, for processes that only
        run clipedge; see clipedge.providers.session_options)."""
        bundle = load_bundle(path, verify=False)
        decode_policy = decode_policy or DecodePolicy()
        if fast_jpeg:
            decode_policy = replace(decode_policy, draft=bundle.manifest.preprocess.resize_shortest_edge)
        if precision == "auto":
            precision = choose_precision(bundle, resolve_providers(provider))
        bundle.variant(precision)
        if verify:
            bundle.verify(precision)
        encoder = ClipEncoder(bundle, precision, provider, threads, strict, thread_pool)
        tokenizer = ClipTokenizer(bundle.path / bundle.manifest.tokenizer.file, bundle.manifest.tokenizer)
        return cls(bundle, encoder, tokenizer, decode_policy, LabelCache(cache_size))

    @property
    def precision(self) -> str:
        return self.encoder.precision

    # -- embeddings ---------------------------------------------------------------------------------
    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray:
        return preprocess_batch(list(images), self.bundle.manifest.preprocess)

    def prepare_image(self, source: ImageInput) -> np.ndarray:
        """Decode one input with this classifier's policy and preprocess it: pixel_values [3, H, W]."""
        return preprocess(load_image(source, self.decode_policy), self.bundle.manifest.preprocess)

    def embed_images(self, images: Sequence[ImageInput], batch_size: int = 32) -> np.ndarray:
        """Unit image embeddings float32 [N, D]; raises ImageError naming the first bad input."""
        decoded = load_images(images, self.decode_policy)
        for i, im in enumerate(decoded):
            if isinstance(im, ImageError):
                raise ImageError(f"image {i}: {im}")
        return self.encoder.embed_pixels(self.preprocess(decoded), batch_size)  # type: ignore[arg-type]

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Unit text embeddings float32 [N, D] (no template applied)."""
        return embed_label_texts(list(texts), ["{}"], self.tokenizer.encode, self.encoder.embed_token_ids)

    def label_embeddings(self, labels: Sequence[str], templates: str | Sequence[str] | None = None) -> LabelEmbeddings:
        """Embeddings of `labels` under `templates` (None, a template, a list, or "openai-imagenet"),
        taken from the LRU cache where present; only missing labels go through the text tower."""
        labels = list(labels)
        if not labels:
            raise ValueError("no labels given")
        bad = [i for i, label in enumerate(labels) if not isinstance(label, str) or not label.strip()]
        if bad:
            raise ValueError(f"label {bad[0]} is empty or not a string")
        tpl = resolve_templates(templates if templates is None or isinstance(templates, str) else list(templates))
        key = (self.bundle.bundle_hash, self.precision, templates_key(tpl))
        found = {label: self.cache.get((*key, label)) for label in dict.fromkeys(labels)}
        missing = [label for label, emb in found.items() if emb is None]
        if missing:
            emb = embed_label_texts(missing, tpl, self.tokenizer.encode, self.encoder.embed_token_ids)
            for label, row in zip(missing, emb, strict=True):
                found[label] = row
                self.cache.put((*key, label), row)
        matrix = np.stack([found[label] for label in labels])
        return LabelEmbeddings(tuple(labels), tpl, matrix, self.bundle.bundle_hash, self.precision)

    def load_labels(self, path: str | Path) -> LabelEmbeddings:
        """A label-embedding file saved by LabelEmbeddings.save; refused if made with another bundle."""
        return LabelEmbeddings.load(path, self.bundle.bundle_hash)

    # -- classification -------------------------------------------------------------------------------
    def scores(self, image_embeddings: np.ndarray, labels: LabelEmbeddings) -> np.ndarray:
        """Probabilities [N, L]: softmax(logit_scale * cosine)."""
        logits = self.bundle.manifest.logit_scale * (image_embeddings @ labels.embeddings.T)
        return softmax(logits.astype(np.float64)).astype(np.float32)

    def classify(
        self,
        images: Sequence[ImageInput],
        labels: Sequence[str] | LabelEmbeddings,
        templates: str | Sequence[str] | None = None,
        top_k: int | None = None,
        errors: str = "raise",
        batch_size: int = 32,
    ) -> list[dict[str, Any]]:
        """One {"labels", "probs"} per image, labels in the given order (or the top_k, best first).

        errors="raise" raises ImageError naming the first bad image; errors="return" gives that image
        {"labels": [...], "probs": None, "error": message} and still scores the others.
        """
        if errors not in ("raise", "return"):
            raise ValueError("errors must be 'raise' or 'return'")
        label_emb = labels if isinstance(labels, LabelEmbeddings) else self.label_embeddings(labels, templates)
        decoded = load_images(images, self.decode_policy)
        good = [i for i, im in enumerate(decoded) if not isinstance(im, ImageError)]
        if errors == "raise" and len(good) < len(decoded):
            i = next(i for i, im in enumerate(decoded) if isinstance(im, ImageError))
            raise ImageError(f"image {i}: {decoded[i]}")
        pixels = self._preprocess_or_error(decoded, good)
        ok = [i for i in good if not isinstance(pixels[i], ImageError)]
        emb = self.encoder.embed_pixels(np.stack([pixels[i] for i in ok]), batch_size) if ok else None
        probs = self.scores(emb, label_emb) if emb is not None else np.zeros((0, len(label_emb.labels)))
        row_of = {i: r for r, i in enumerate(ok)}
        results: list[dict[str, Any]] = []
        for i in range(len(decoded)):
            if i in row_of:
                results.append(format_result(label_emb.labels, probs[row_of[i]], top_k))
            else:
                err = decoded[i] if isinstance(decoded[i], ImageError) else pixels[i]
                if errors == "raise":
                    raise ImageError(f"image {i}: {err}")
                results.append({"labels": list(label_emb.labels), "probs": None, "error": str(err)})
        return results

    def _preprocess_or_error(self, decoded: list, good: list[int]) -> dict[int, Any]:
        spec = self.bundle.manifest.preprocess
        out: dict[int, Any] = {}
        for i in good:
            try:
                out[i] = preprocess(decoded[i], spec)
            except (ValueError, OSError) as e:  # e.g. a degenerate image that resizes to zero pixels
                out[i] = ImageError(f"{describe(decoded[i])}: cannot preprocess ({e})")
        return out


def format_result(labels: Sequence[str], probs: np.ndarray, top_k: int | None = None) -> dict[str, Any]:
    pairs = list(zip(labels, (float(p) for p in probs), strict=True))
    if top_k:
        pairs = sorted(pairs, key=lambda lp: -lp[1])[:top_k]
    return {"labels": [label for label, _ in pairs], "probs": [p for _, p in pairs]}
