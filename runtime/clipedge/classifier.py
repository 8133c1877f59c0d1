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
from .images import DecodePolicy, ImageError, ImageInput, is_url
from .label_rules import (
    NEEDS_THRESHOLDS,
    LabelPlan,
    LabelRequest,
    check_distinct,
    load_fixed_labels,
    no_text_tower,
    plan_labels,
)
from .labels import (
    LabelCache,
    LabelEmbeddings,
    LabelError,
    LabelFileError,
    check_compatible,
    check_labels,
    embed_label_texts,
    templates_key,
)
from .options import LoadOptions, ProviderSpec
from .preprocess import prepare_pixels
from .scoring import multi_label_scores, probabilities
from .templates import fill
from .tokenizer import ClipTokenizer


@dataclass
class ZeroShotClassifier:
    """Zero-shot CLIP classification from a bundle, in four stages that every entry point (CLI, endpoint,
    batch engines, eval, benchmarks) calls: `prepare` (decode + preprocess one image), `embed` (the vision
    tower), `score` (probabilities against label embeddings) and `format` (the result row). `classify`
    runs them in order. Labels enter through one door, `labels` (`clipedge.label_rules`).

    >>> clf = ZeroShotClassifier.load("models/demo")
    >>> clf.classify(["models/demo/examples/red_circle.png"], ["red circle", "blue square"])
    [{'labels': ['red circle', 'blue square'], 'probs': [...]}]
    """

    bundle: Bundle
    encoder: ClipEncoder
    tokenizer: ClipTokenizer | None
    decode_policy: DecodePolicy
    cache: LabelCache
    fixed_labels: LabelEmbeddings | None = None  # an edge pack's own, or LoadOptions.label_embeddings
    _distinct_sets: set[tuple[str, tuple[str, ...]]] = field(default_factory=set, repr=False)  # checked already

    @classmethod
    def load(
        cls,
        model: LoadOptions | str | Path | None = None,
        precision: str | None = None,
        provider: ProviderSpec | None = None,
        *,
        decode_policy: DecodePolicy | None = None,
        **options: Any,
    ) -> ZeroShotClassifier:
        """Load a bundle, or an edge pack (`clipedge.pack`: fixed labels, no text tower).

        Args:
            model: the folder, or load options (None: `clipedge.options.default_bundle()`).
            precision, provider: the two options most often set (see `clipedge.options.LoadOptions`).
            decode_policy: replaces the policy the options describe (the endpoint's untrusted-input policy).
            **options: any other `clipedge.options.LoadOptions` field, e.g. engine="openvino",
                label_embeddings="labels.npz" (fixed labels); they override those of `model`.

        Returns:
            The classifier.

        Raises:
            BundleError: the folder is not a bundle, lacks the precision, or fails verification.
            ProviderError: (strict) the provider is missing or not in effect.
            ModelLoadError: ONNX Runtime cannot load a tower file.
            LabelFileError: a label_embeddings file that is malformed or made with another bundle.
            NoBundleError: no model named and no default one here.
        """
        base = model if isinstance(model, LoadOptions) else LoadOptions(bundle=None if model is None else str(model))
        given = {"precision": precision, "provider": provider}
        options.update({k: v for k, v in given.items() if v is not None})
        opts = (base.replace(**options) if options else base).resolved()
        assert opts.bundle is not None
        bundle = load_bundle(opts.bundle, verify=False)
        policy = decode_policy or DecodePolicy.from_options(opts)
        if opts.fast_jpeg:
            # at least twice the resize size: PIL's bicubic does the last reduction (docs/runtime.md)
            policy = replace(policy, draft=2 * bundle.manifest.preprocess.resize_shortest_edge)
        encoder = ClipEncoder(bundle, opts)
        tokenizer = None  # an edge pack has no tokenizer (nor text tower): its labels are fixed
        if bundle.has_text_tower:
            tokenizer = ClipTokenizer(bundle.path / bundle.manifest.tokenizer.file, bundle.manifest.tokenizer)
        clf = cls(bundle, encoder, tokenizer, policy, LabelCache(opts.label_cache_size))
        fixed = load_fixed_labels(bundle, opts.label_embeddings)
        if fixed is not None:
            clf.fixed_labels = clf._checked(fixed, opts.label_embeddings)
        return clf

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

    # -- stage 2: embed -------------------------------------------------------------------------------
    def embed(self, pixel_values: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """The vision tower: pixel_values float32 [N, 3, H, W] -> unit image embeddings float32 [N, D]."""
        return self.encoder.embed_pixels(pixel_values, batch_size)

    def embed_images(self, images: Sequence[ImageInput], batch_size: int = 32) -> np.ndarray:
        """Unit image embeddings float32 [N, D] of any inputs.

        Raises:
            ImageError: naming the first bad input.
        """
        pixels = []
        for i, p in enumerate(self.prepare_all(images)):
            if isinstance(p, ImageError):
                raise ImageError(f"image {i}: {p}")
            pixels.append(p)
        h, w = self.bundle.manifest.preprocess.crop_size
        return self.embed(np.stack(pixels) if pixels else np.zeros((0, 3, h, w), dtype=np.float32), batch_size)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Unit text embeddings float32 [N, D] (no template applied).

        Raises:
            LabelError: no texts, or an empty or invalid one.
            NoTextTowerError: an edge pack (no text tower).
        """
        texts = check_labels(texts, what="text", unique=False)
        return embed_label_texts(texts, ["{}"], self._tokenizer("text embeddings").tokens, self.encoder.embed_tokens)

    def warm_up(self, batch_sizes: Sequence[int] = (1,), templates: str | Sequence[str] | None = None) -> None:
        """Run each tower once (the vision tower at each batch size), so that the first request pays no
        one-time cost; the text tower only where the model has one."""
        h, w = self.bundle.manifest.preprocess.crop_size
        for n in sorted(set(batch_sizes)):
            self.embed(np.zeros((n, 3, h, w), dtype=np.float32), batch_size=n)
        if self.tokenizer is not None:
            self.label_embeddings(["warm-up"], templates)

    # -- labels: the one door ------------------------------------------------------------------------
    def labels(
        self, labels: Any = None, templates: str | Sequence[str] | None = None, multi_label: bool = False
    ) -> LabelEmbeddings:
        """The one door labels enter classification by: a `LabelRequest` (or the forms `LabelRequest.of`
        takes: names, LabelEmbeddings, an .npz Path, None for the fixed labels) answered under the rules of
        `clipedge.label_rules`, embedding names with the text tower only where needed (LRU-cached).

        Raises:
            LabelError: no labels, bad labels, unknown fixed labels, multi-label without thresholds.
            NoTextTowerError: new labels asked of an edge pack.
            TemplateError: a bad template, or other templates where they cannot apply.
            LabelFileError: label embeddings made with another bundle, of another size, or malformed.
        """
        request = self._request(labels, templates, multi_label)
        plan = self._plan(request)
        if plan.ready is not None:
            return plan.ready
        self._distinct(plan.names, plan.templates)
        templates_, key, found = self._cached(plan.names, plan.templates)
        missing = [label for label, emb in found.items() if emb is None]
        if missing:
            tokenizer = self._tokenizer("new labels")
            emb = embed_label_texts(missing, templates_, tokenizer.tokens, self.encoder.embed_tokens)
            for label, row in zip(missing, emb, strict=True):
                found[label] = row
                self.cache.put((*key, label), row)
        return self._label_set(plan.names, templates_, found)

    def ready_labels(self, request: LabelRequest) -> LabelEmbeddings | None:
        """`labels(request)` when it needs no text-tower work (fixed labels, or every label cached), else
        None: the endpoint answers it without waiting for the text tower's thread. The same rules apply.

        Raises:
            As `labels`.
        """
        plan = self._plan(request)
        if plan.ready is not None:
            return plan.ready
        self._distinct(plan.names, plan.templates)
        templates, _, found = self._cached(plan.names, plan.templates)
        if any(emb is None for emb in found.values()):
            return None
        return self._label_set(plan.names, templates, found)

    def label_embeddings(self, labels: Sequence[str], templates: str | Sequence[str] | None = None) -> LabelEmbeddings:
        """Embeddings of label names under `templates` (None, a template, a list, or "openai-imagenet"):
        `labels` with a request by name, e.g. to save them (`LabelEmbeddings.save`)."""
        return self.labels(LabelRequest(tuple(labels), None, _templates(templates)))

    def load_labels(self, path: str | Path) -> LabelEmbeddings:
        """A label-embedding file saved by `LabelEmbeddings.save`, checked against this classifier
        (`clipedge.labels.check_compatible`).

        Raises:
            LabelFileError: malformed, or made for another bundle (the message names the file).
        """
        return self._checked(LabelEmbeddings.load(path), str(path))

    def _request(self, labels: Any, templates: Any, multi_label: bool) -> LabelRequest:
        if isinstance(labels, LabelRequest):
            if templates is not None or multi_label:
                raise TypeError("give templates and multi_label inside the LabelRequest")
            return labels
        return LabelRequest.of(labels, templates, multi_label)

    def _plan(self, request: LabelRequest) -> LabelPlan:
        given: Any = request.embeddings
        if isinstance(given, str):
            given = self.load_labels(given)
        elif given is not None:
            given = self._checked(given)
        else:
            given = self.fixed_labels
        return plan_labels(request, given, self.tokenizer is not None)

    def _checked(self, labels: LabelEmbeddings, path: str | None = None) -> LabelEmbeddings:
        try:
            check_compatible(
                labels, self.bundle.bundle_hash, self.bundle.manifest.architecture.embed_dim, self.precision
            )
        except LabelFileError as e:
            message = str(e)
            if path and not message.startswith(path):
                message = f"{path}: {message}"
            raise LabelFileError(message) from None
        return labels

    def _distinct(self, names: Sequence[str], templates: tuple[str, ...]) -> None:
        """Labels whose prompts tokenise alike (the tokenizer ignores case; prompts are cut at the context
        length) would get the same embedding: refused, naming both (`label_rules.check_distinct`). The
        template that cuts least shows the most of each label, so it alone decides."""
        if len(names) < 2:
            return
        key = (templates_key(templates), tuple(names))
        if key in self._distinct_sets:
            return
        template = min(templates, key=lambda t: len(t.split("{}")[0]))
        check_distinct(self._tokenizer("new labels").encode([fill(template, n) for n in names]))
        if len(self._distinct_sets) >= 1024:
            self._distinct_sets.clear()
        self._distinct_sets.add(key)

    def _tokenizer(self, what: str) -> ClipTokenizer:
        if self.tokenizer is None:
            raise no_text_tower(self.bundle, what)
        return self.tokenizer

    def _label_set(self, labels: Sequence[str], tpl: tuple[str, ...], found: dict[str, Any]) -> LabelEmbeddings:
        matrix = np.stack([found[label] for label in labels])
        return LabelEmbeddings(tuple(labels), tpl, matrix, self.bundle.bundle_hash, self.encoder.text_precision)

    def _cached(self, labels: Sequence[str], templates: tuple[str, ...]):
        """(templates, cache key prefix, {label: cached embedding or None})."""
        key = (self.bundle.bundle_hash, self.encoder.text_precision, templates_key(templates))
        return templates, key, {label: self.cache.get((*key, label)) for label in dict.fromkeys(labels)}

    # -- stage 3: score, stage 4: format --------------------------------------------------------------
    def score(self, image_embeddings: np.ndarray, labels: LabelEmbeddings) -> np.ndarray:
        """Probabilities float32 [N, L], as the family scores (the manifest's `scoring`): CLIP's softmax over
        the labels of logit_scale x cosine (they sum to 1), or SigLIP's sigmoid of logit_scale x cosine +
        logit_bias for each label on its own."""
        m = self.bundle.manifest
        probs = probabilities(image_embeddings, labels.embeddings, m.logit_scale, m.scoring.kind, m.scoring.logit_bias)
        return probs.astype(np.float32)

    def score_multi(self, image_embeddings: np.ndarray, labels: LabelEmbeddings) -> np.ndarray:
        """Multi-label scores float32 [N, L], each label on its own: sigmoid(logit_scale x (cosine - the
        label's calibrated threshold)). 0.5 is the threshold: a label is present at 0.5 or above, and an
        image may have none (see `clipedge.calibrate`).

        Raises:
            LabelError: the label embeddings carry no thresholds (calibrate them first).
        """
        if labels.thresholds is None:
            raise LabelError(NEEDS_THRESHOLDS)
        scale = self.bundle.manifest.logit_scale
        return multi_label_scores(image_embeddings, labels.embeddings, labels.thresholds, scale)

    @staticmethod
    def format(
        labels: Sequence[str],
        probs: np.ndarray | None,
        top_k: int | None = None,
        error: str | None = None,
        multi_label: bool = False,
    ) -> dict[str, Any]:
        """One result row: {"labels", "probs"} with labels in the given order (or the top_k, best first);
        multi-label: {"labels", "scores", "present"} (`present`: the labels at or above 0.5, best first; may
        be empty); for a failed image {"labels", "probs" or "scores": None, "error"}."""
        key = "scores" if multi_label else "probs"
        if probs is None:
            return {"labels": list(labels), key: None, "error": error}
        return format_result(labels, probs, top_k, multi_label)

    def classify(
        self,
        images: Sequence[ImageInput] | ImageInput,
        labels: Any = None,
        templates: str | Sequence[str] | None = None,
        top_k: int | None = None,
        errors: str = "raise",
        batch_size: int = 32,
        multi_label: bool = False,
    ) -> list[dict[str, Any]]:
        """Classify images against labels: prepare, embed, score, format.

        Args:
            images: a list of inputs `prepare` takes (one input alone counts as a list of one).
            labels: label names (a list, or one comma-separated string), LabelEmbeddings, a LabelRequest, or
                None: the model's fixed labels (an edge pack's, or a label file loaded with it). Names that are
                all fixed labels are a subset of them (softmax then runs over the subset).
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
            LabelError, TemplateError, LabelFileError: as `labels`.
        """
        if errors not in ("raise", "return"):
            raise ValueError("errors must be 'raise' or 'return'")
        # one image alone is a list of one, not a sequence of characters
        inputs: list[Any] = [images] if isinstance(images, str | bytes | Path | Image.Image | np.ndarray) else [*images]
        request = self._request(labels, templates, multi_label)
        label_emb = self.labels(request)
        prepared = self.prepare_all(inputs)
        bad = [i for i, p in enumerate(prepared) if isinstance(p, ImageError)]
        if errors == "raise" and bad:
            raise ImageError(f"image {bad[0]}: {prepared[bad[0]]}")
        return self.classify_prepared(prepared, label_emb, top_k, batch_size, request.multi_label)

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
            emb = self.embed(np.stack([p for p in prepared if isinstance(p, np.ndarray)]), batch_size)
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


def _templates(templates: str | Sequence[str] | None) -> str | tuple[str, ...] | None:
    return templates if templates is None or isinstance(templates, str) else tuple(templates)


__all__ = ["LabelRequest", "ZeroShotClassifier", "format_result"]
