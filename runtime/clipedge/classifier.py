"""ZeroShotClassifier: the one path from pixels to probabilities that every entry point shares."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .bundle import Bundle, load_bundle
from .encoder import ClipEncoder
from .images import DecodePolicy, ImageError, ImageInput, is_http_url, load_image
from .labels import (
    LabelCache,
    LabelEmbeddings,
    LabelError,
    LabelFileError,
    check_compatible,
    check_labels,
    embed_label_texts,
    parse_labels,
    templates_key,
)
from .preprocess import prepare_pixels, preprocess_batch
from .providers import ProviderSpec
from .templates import resolve_templates
from .tokenizer import ClipTokenizer


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row softmax that subtracts the row max first (no overflow at logit_scale 100)."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def zero_shot_probs(image_embeddings: np.ndarray, label_embeddings: np.ndarray, logit_scale: float) -> np.ndarray:
    """CLIP's zero-shot probabilities for unit embeddings: softmax over labels of logit_scale x cosine,
    float64 [N, L]. The one place they are computed (the classifier's `score`, export's validation)."""
    return softmax(logit_scale * (image_embeddings @ label_embeddings.T).astype(np.float64))


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

    remote = sum(is_url(s) for s in sources)
    if remote > 1:
        with ThreadPoolExecutor(max_workers=workers or min(16, remote)) as pool:
            return list(pool.map(one, sources))
    return [one(s) for s in sources]


def is_url(source: object) -> bool:
    return isinstance(source, str) and is_http_url(source.lstrip())


@dataclass
class ZeroShotClassifier:
    """Zero-shot CLIP classification from a bundle, in four stages that every entry point (CLI, endpoint,
    batch engines, eval, benchmarks) calls: `prepare` (decode + preprocess one image), `embed` (the vision
    tower), `score` (probabilities against label embeddings) and `format` (the result row). `classify`
    runs them in order.

    >>> clf = ZeroShotClassifier.load("models/demo")
    >>> clf.classify(["models/demo/examples/red_circle.png"], ["red circle", "blue square"])
    [{'labels': ['red circle', 'blue square'], 'probs': [...]}]
    """

    bundle: Bundle
    encoder: ClipEncoder
    tokenizer: ClipTokenizer | None
    decode_policy: DecodePolicy
    cache: LabelCache
    _packed_labels: LabelEmbeddings | None = field(default=None, repr=False)

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
        batch_independent: bool = True,
        engine: str = "auto",
    ) -> ZeroShotClassifier:
        """Load a bundle folder.

        Args:
            path: the bundle folder, or an edge pack's (`clipedge.pack`: fixed labels, no text tower).
            precision: "auto", "fp32", "int8", "fp16", "int8-static" or "fp32-unfused"; auto follows
                `clipedge.selection`'s ranking for the engine and provider really in effect.
            provider: "auto", "cpu", "cuda", "tensorrt" or an ONNX Runtime provider list.
            threads: ONNX Runtime intra-op threads (None: one per core).
            strict: a requested provider that is missing or not in effect is an error; False falls back to
                the CPU with a warning.
            verify: check the files' sha256 against the manifest.
            decode_policy: formats, pixel cap, URL rules (`clipedge.images.DecodePolicy`).
            cache_size: label embeddings kept in the LRU cache.
            fast_jpeg: let libjpeg decode large JPEGs at 1/2..1/8 scale, keeping at least twice the resize size
                (faster; embeddings change slightly, and on small models top-1 can change: off by default).
            thread_pool: "session" (plays well with other ONNX Runtime users in the process), "shared" or
                "session-spin" (see `clipedge.threads.session_options`).
            batch_independent: an image's result never depends on the images it runs with (nor a label's on
                other labels): dynamically quantised int8 then runs one item at a time. False runs whole
                batches, faster, with results that move slightly with their batch mates.
            engine: "auto", "onnxruntime" or "openvino" (the `openvino` extra; int8-static and fp32-unfused).

        Returns:
            The classifier.

        Raises:
            BundleError: the folder is not a bundle, lacks the precision, or fails verification.
            ProviderError: (strict) the provider is missing or not in effect.
            ModelLoadError: ONNX Runtime cannot load a tower file.
        """
        bundle = load_bundle(path, verify=False)
        decode_policy = decode_policy or DecodePolicy()
        if fast_jpeg:
            # at least twice the resize size: PIL's bicubic does the last reduction (docs/runtime.md)
            decode_policy = replace(decode_policy, draft=2 * bundle.manifest.preprocess.resize_shortest_edge)
        encoder = ClipEncoder(
            bundle, precision, provider, threads, strict, thread_pool, verify, batch_independent, engine
        )
        tokenizer = None  # an edge pack has no tokenizer (nor text tower): its labels are fixed
        if bundle.pack is None:
            tokenizer = ClipTokenizer(bundle.path / bundle.manifest.tokenizer.file, bundle.manifest.tokenizer)
        return cls(bundle, encoder, tokenizer, decode_policy, LabelCache(cache_size))

    @property
    def precision(self) -> str:
        return self.encoder.precision

    # -- stage 1: prepare ---------------------------------------------------------------------------
    def prepare(self, source: ImageInput, policy: DecodePolicy | None = None, name: str | None = None) -> np.ndarray:
        """Decode one input and preprocess it exactly as the manifest says.

        Args:
            source: a path, URL, base64 string, bytes, PIL image or numpy array.
            policy: overrides the classifier's decode policy (e.g. the endpoint's untrusted-input policy).
            name: how messages name the input (default: a safe description of it).

        Returns:
            pixel_values float32 [3, H, W].

        Raises:
            ImageError: naming the input and the problem, whatever went wrong (never another exception).
        """
        return prepare_pixels(source, self.bundle.manifest.preprocess, policy or self.decode_policy, name)

    def prepare_image(self, source: ImageInput) -> np.ndarray:
        """Alias of `prepare` (kept for callers of clipedge 0.1)."""
        return self.prepare(source)

    def prepare_all(self, sources: Sequence[ImageInput]) -> list[np.ndarray | ImageError]:
        """`prepare` for each input, URLs fetched concurrently; a bad input becomes its ImageError in place."""

        def one(src: ImageInput) -> np.ndarray | ImageError:
            try:
                return self.prepare(src)
            except ImageError as e:
                return e

        remote = sum(is_url(s) for s in sources)
        if remote > 1:
            with ThreadPoolExecutor(max_workers=min(16, remote)) as pool:
                return list(pool.map(one, sources))
        return [one(s) for s in sources]

    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray:
        """RGB PIL images -> pixel_values float32 [N, 3, H, W]."""
        return preprocess_batch(list(images), self.bundle.manifest.preprocess)

    # -- stage 2: embed -------------------------------------------------------------------------------
    def embed(self, pixel_values: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """The vision tower: pixel_values float32 [N, 3, H, W] -> unit image embeddings float32 [N, D]."""
        return self.encoder.embed_pixels(pixel_values, batch_size)

    def embed_images(self, images: Sequence[ImageInput], batch_size: int = 32) -> np.ndarray:
        """Unit image embeddings float32 [N, D] of any inputs.

        Raises:
            ImageError: naming the first bad input.
        """
        prepared = self.prepare_all(images)
        for i, p in enumerate(prepared):
            if isinstance(p, ImageError):
                raise ImageError(f"image {i}: {p}")
        h, w = self.bundle.manifest.preprocess.crop_size
        stacked = np.stack(prepared) if prepared else np.zeros((0, 3, h, w), dtype=np.float32)  # type: ignore[arg-type]
        return self.embed(stacked, batch_size)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Unit text embeddings float32 [N, D] (no template applied).

        Raises:
            NoTextTowerError: an edge pack (no text tower).
        """
        if self.tokenizer is None:
            from .pack import no_text_tower

            raise no_text_tower(self.bundle, "text embeddings")
        return embed_label_texts(list(texts), ["{}"], self.tokenizer.encode, self.encoder.embed_token_ids)

    # -- labels ---------------------------------------------------------------------------------------
    def label_embeddings(self, labels: Sequence[str], templates: str | Sequence[str] | None = None) -> LabelEmbeddings:
        """Embeddings of `labels` under `templates` (None, a template, a list, or "openai-imagenet"),
        taken from the LRU cache where present; only missing labels go through the text tower.

        Raises:
            LabelError: no labels, or an empty or invalid one.
            TemplateError: a template that breaks the template rule.
        """
        labels = check_labels(labels)
        if self.bundle.pack is not None:
            return self._packed(labels, templates)
        tpl, key, found = self._cached(labels, templates)
        missing = [label for label, emb in found.items() if emb is None]
        if missing:
            emb = embed_label_texts(missing, tpl, self.tokenizer.encode, self.encoder.embed_token_ids)
            for label, row in zip(missing, emb, strict=True):
                found[label] = row
                self.cache.put((*key, label), row)
        return self._label_set(labels, tpl, found)

    def cached_label_embeddings(
        self, labels: Sequence[str], templates: str | Sequence[str] | None = None
    ) -> LabelEmbeddings | None:
        """`label_embeddings` when every label is in the cache already (no text-tower work: the endpoint
        answers it without waiting for the text tower's thread), else None.

        Raises:
            LabelError, TemplateError: as `label_embeddings`.
        """
        labels = check_labels(labels)
        if self.bundle.pack is not None:
            return None
        tpl, _, found = self._cached(labels, templates)
        if any(emb is None for emb in found.values()):
            return None
        return self._label_set(labels, tpl, found)

    def _label_set(self, labels: Sequence[str], tpl: tuple[str, ...], found: dict[str, Any]) -> LabelEmbeddings:
        matrix = np.stack([found[label] for label in labels])
        return LabelEmbeddings(tuple(labels), tpl, matrix, self.bundle.bundle_hash, self.precision)

    def _cached(self, labels: Sequence[str], templates: str | Sequence[str] | None):
        """(templates, cache key prefix, {label: cached embedding or None})."""
        tpl = resolve_templates(templates if templates is None or isinstance(templates, str) else list(templates))
        key = (self.bundle.bundle_hash, self.precision, templates_key(tpl))
        return tpl, key, {label: self.cache.get((*key, label)) for label in dict.fromkeys(labels)}

    @property
    def packed_labels(self) -> LabelEmbeddings | None:
        """An edge pack's fixed labels (with thresholds when calibrated); None for a full bundle."""
        if self.bundle.pack is None:
            return None
        if self._packed_labels is None:
            from .pack import pack_labels

            self._packed_labels = pack_labels(self.bundle)
        return self._packed_labels

    def _packed(self, labels: Sequence[str], templates: str | Sequence[str] | None) -> LabelEmbeddings:
        packed = self.packed_labels
        assert packed is not None
        if templates is not None:
            tpl = resolve_templates(templates if isinstance(templates, str) else list(templates))
            if tuple(tpl) != tuple(packed.templates):
                from .pack import no_text_tower

                raise no_text_tower(self.bundle, f"templates other than the pack's ({packed.templates[0]!r}, ...)")
        try:
            return packed.subset(labels)  # softmax then runs over this subset
        except LabelError as e:
            from .pack import NoTextTowerError

            raise NoTextTowerError(
                f"{e}: this model is an edge pack (no text tower), new labels need the full bundle it was made from"
            ) from None

    def labels(
        self, labels: Sequence[str] | LabelEmbeddings | None, templates: str | Sequence[str] | None = None
    ) -> LabelEmbeddings:
        """The one way label embeddings enter classification: label texts are embedded (cached), ready
        embeddings pass `clipedge.labels.check_compatible` (same source bundle and embedding size; another
        precision is allowed with a warning).

        Raises:
            LabelError, TemplateError: bad label texts or templates.
            LabelFileError: embeddings made with another bundle or of another size.
        """
        if labels is None:
            if self.packed_labels is None:
                raise LabelError("no labels given (only an edge pack has labels of its own)")
            return self._packed(self.packed_labels.labels, templates)  # all of them (a template is checked)
        if isinstance(labels, LabelEmbeddings):
            dim = self.bundle.manifest.architecture.embed_dim
            check_compatible(labels, self.bundle.bundle_hash, dim, self.precision)
            return labels
        return self.label_embeddings(labels, templates)

    def load_labels(self, path: str | Path) -> LabelEmbeddings:
        """A label-embedding file saved by LabelEmbeddings.save, checked by `labels`.

        Raises:
            LabelFileError: malformed, or made for another bundle.
        """
        try:
            return self.labels(LabelEmbeddings.load(path))
        except LabelFileError as e:
            message = str(e)
            raise LabelFileError(message if message.startswith(str(path)) else f"{path}: {message}") from None

    # -- stage 3: score, stage 4: format --------------------------------------------------------------
    def score(self, image_embeddings: np.ndarray, labels: LabelEmbeddings) -> np.ndarray:
        """Probabilities float32 [N, L]: softmax over labels of logit_scale x cosine (embeddings are unit)."""
        return zero_shot_probs(image_embeddings, labels.embeddings, self.bundle.manifest.logit_scale).astype(np.float32)

    scores = score  # clipedge 0.1 name

    def score_multi(self, image_embeddings: np.ndarray, labels: LabelEmbeddings) -> np.ndarray:
        """Multi-label scores float32 [N, L], each label on its own: sigmoid(logit_scale x (cosine - the
        label's calibrated threshold)). 0.5 is the threshold: a label is present at 0.5 or above, and an
        image may have none (see `clipedge.calibrate`).

        Raises:
            LabelError: the label embeddings carry no thresholds (calibrate them first).
        """
        return multi_label_scores(image_embeddings, labels, self.bundle.manifest.logit_scale)

    @staticmethod
    def format(
        labels: Sequence[str],
        probs: np.ndarray | None,
        top_k: int | None = None,
        error: str | None = None,
        multi_label: bool = False,
    ):
        """One result row: {"labels", "probs"} with labels in the given order (or the top_k, best first);
        multi-label: {"labels", "scores", "present"} (`present`: the labels at or above 0.5, best first; may
        be empty); for a failed image {"labels", "probs" or "scores": None, "error"}."""
        key = "scores" if multi_label else "probs"
        if probs is None:
            return {"labels": list(labels), key: None, "error": error}
        return format_result(labels, probs, top_k, multi_label)

    def classify(
        self,
        images: Sequence[ImageInput],
        labels: Sequence[str] | LabelEmbeddings,
        templates: str | Sequence[str] | None = None,
        top_k: int | None = None,
        errors: str = "raise",
        batch_size: int = 32,
        multi_label: bool = False,
    ) -> list[dict[str, Any]]:
        """Classify images against labels: prepare, embed, score, format.

        Args:
            images: a list of inputs `prepare` takes (one input alone counts as a list of one).
            labels: label texts (a list, or one comma-separated string), or LabelEmbeddings; None: an edge
                pack's own labels (a pack also takes any subset of its labels, softmax then runs over it).
            templates: None, a template with one "{}", a list of them, or "openai-imagenet".
            top_k: keep only the k best labels, best first (default: every label, in the given order).
            errors: "raise" raises ImageError naming the first bad image; "return" gives that image
                {"labels", "probs": None, "error"} and still scores the others.
            batch_size: images per vision-tower run.
            multi_label: score each label on its own against its calibrated threshold (`score_multi`):
                needs label embeddings with thresholds (`clipedge calibrate`, or a pack made with them).

        Returns:
            One {"labels", "probs"} per image, in input order ({"labels", "scores", "present"} multi-label).

        Raises:
            ImageError: (errors="raise") a bad image.
            LabelError, TemplateError, LabelFileError: bad labels, templates or label embeddings.
        """
        if errors not in ("raise", "return"):
            raise ValueError("errors must be 'raise' or 'return'")
        if isinstance(images, str | bytes | Path | Image.Image | np.ndarray):
            images = [images]  # one image, not a sequence of characters
        if isinstance(labels, str):
            labels = parse_labels(labels)  # "cat, dog", as Azure's contract reads labels
        label_emb = self.labels(labels, templates)
        if multi_label:
            require_thresholds(label_emb)
        prepared = self.prepare_all(images)
        bad = [i for i, p in enumerate(prepared) if isinstance(p, ImageError)]
        if errors == "raise" and bad:
            raise ImageError(f"image {bad[0]}: {prepared[bad[0]]}")
        return self.classify_prepared(prepared, label_emb, top_k, batch_size, multi_label)

    def classify_prepared(
        self,
        prepared: Sequence[np.ndarray | Exception],
        labels: LabelEmbeddings,
        top_k: int | None = None,
        batch_size: int = 32,
        multi_label: bool = False,
    ) -> list[dict[str, Any]]:
        """Embed, score and format images that went through `prepare` (an exception in place of a bad one,
        which gets an error row). Used by `classify` and both batch engines."""
        ok = [i for i, p in enumerate(prepared) if not isinstance(p, Exception)]
        probs: dict[int, np.ndarray] = {}
        if ok:
            emb = self.embed(np.stack([prepared[i] for i in ok]), batch_size)  # type: ignore[misc]
            scored = self.score_multi(emb, labels) if multi_label else self.score(emb, labels)
            probs = dict(zip(ok, scored, strict=True))
        names = labels.labels
        return [
            self.format(names, probs[i], top_k, None, multi_label)
            if i in probs
            else self.format(names, None, None, str(p), multi_label)
            for i, p in enumerate(prepared)
        ]


def format_result(
    labels: Sequence[str], probs: np.ndarray, top_k: int | None = None, multi_label: bool = False
) -> dict[str, Any]:
    """{"labels", "probs"}: labels in the given order, or the top_k best first. Multi-label: {"labels",
    "scores", "present"}, `present` being the labels scoring 0.5 or more, best first (possibly none)."""
    pairs = list(zip(labels, (float(p) for p in probs), strict=True))
    if top_k:
        pairs = sorted(pairs, key=lambda lp: -lp[1])[:top_k]
    row: dict[str, Any] = {
        "labels": [label for label, _ in pairs],
        "scores" if multi_label else "probs": [p for _, p in pairs],
    }
    if multi_label:
        row["present"] = [label for label, p in sorted(pairs, key=lambda lp: -lp[1]) if p >= 0.5]
    return row


def require_thresholds(labels: LabelEmbeddings) -> None:
    """Raises LabelError unless `labels` carry calibrated thresholds (multi-label scoring needs them)."""
    if labels.thresholds is None:
        raise LabelError(
            "multi-label scoring needs calibrated thresholds: run `clipedge calibrate` and pass its file "
            "(--label-embeddings), or use a pack made with them"
        )


def multi_label_scores(image_embeddings: np.ndarray, labels: LabelEmbeddings, logit_scale: float) -> np.ndarray:
    """sigmoid(logit_scale x (cosine - threshold)) per image and label, float32 [N, L] (0.5 at the threshold)."""
    require_thresholds(labels)
    cos = image_embeddings @ labels.embeddings.T
    z = np.float32(logit_scale) * (cos - labels.thresholds[None, :])
    return (1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))).astype(np.float32)
