"""Configuration as data: how a classifier is loaded, as one frozen value that the CLI builds from its
arguments and the endpoint, both batch engines (Ray actors included), eval and the benchmarks pass on. The
value is handed down whole, as faster-whisper hands its options to every stage: the classifier, the encoder,
the engine chooser (`clipedge.selection`) and the session factory (`clipedge.providers.create_session`) each
read the fields they need. A new load option is a field here and a few lines where it takes effect.

Also the vocabularies the command line offers (precisions, engines, providers, thread pools) and the
library's defaults, so that the CLI restates none of them. Pure data: importing this module loads nothing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .manifest import PRECISIONS

DEMO_BUNDLE = Path("models") / "demo"
MODEL_ENV = "CLIPEDGE_MODEL"
ENGINES = ("auto", "onnxruntime", "openvino")
PROVIDERS = ("auto", "cpu", "cuda", "tensorrt")
POOLS = ("shared", "session", "session-spin")
PRECISION_CHOICES = ("auto", *PRECISIONS)
DEFAULT_MAX_PIXELS = 50_000_000  # 50 MP: above any camera's JPEG, far below a decompression bomb
# a decoding job's deadline, in decoding processes (the endpoint, batch): seconds, plus per megapixel
DECODE_TIMEOUT_S = 2.0
DECODE_S_PER_MEGAPIXEL = 0.05

# an ONNX Runtime provider spec: "auto", "cpu", "cuda", "tensorrt", or a list of providers (with options)
ProviderSpec = str | Sequence[str | tuple[str, dict[str, Any]]]


class NoBundleError(ValueError):
    """No bundle was named and there is no default one here."""


def default_bundle() -> str:
    """The bundle used when none is named: $CLIPEDGE_MODEL, else models/demo in a clipedge checkout.

    Raises:
        NoBundleError: neither exists (a wheel ships no model); the message says what to pass.
    """
    env = os.environ.get(MODEL_ENV, "").strip()
    if env:
        return env
    if (DEMO_BUNDLE / "manifest.json").is_file():
        return str(DEMO_BUNDLE)
    raise NoBundleError(
        "no model given: pass -m BUNDLE (a folder made by `clipedge export CHECKPOINT -o BUNDLE`, e.g. from "
        f"openai/clip-vit-base-patch32) or set {MODEL_ENV}; the small demo bundle is models/demo in the clipedge "
        "source repository (run from its root to use it by default)"
    )


@dataclass(frozen=True)
class LoadOptions:
    """How to load a classifier and how it decodes images.

    Model and engine:
        bundle: the bundle or edge-pack folder (None: `default_bundle()`).
        precision: "auto" or one of PRECISIONS; auto follows `clipedge.selection`'s ranking for the engine and
            provider really in effect.
        text_precision: the text tower's precision (None: the vision tower's). "fp32" gives the best label
            embeddings with a faster vision tower (what packs and `calibrate` use).
        provider: "auto", "cpu", "cuda", "tensorrt" or an ONNX Runtime provider list.
        engine: "auto", "onnxruntime" or "openvino" (the `openvino` extra; int8-static and fp32-unfused).
        threads: intra-op threads (None: one per core).
        thread_pool: "session" (plays well with other ONNX Runtime users in the process), "shared" or
            "session-spin" (see `clipedge.threads.session_options`).
        strict: a requested engine or provider that is missing or not in effect is an error; False falls
            back to ONNX Runtime on the CPU with a warning.
        verify: check the files' sha256 against the manifest.
        batch_independent: an image's result never depends on the images it runs with (nor a label's on
            other labels): dynamically quantised int8 then runs one item at a time. False runs whole
            batches, faster, with results that move slightly with their batch mates.
    Labels:
        label_embeddings: an .npz from `clipedge labels build` or `calibrate`: fixed labels the classifier
            carries (as an edge pack carries its own), used without text-tower work; with thresholds, they
            allow multi-label scoring.
        label_cache_size: label embeddings kept in the LRU cache.
    Images:
        fast_jpeg: let libjpeg decode large JPEGs at 1/2..1/8 scale, keeping at least twice the resize size
            (faster; embeddings change slightly, and on small models top-1 can change: off by default).
        max_pixels: an image's pixel cap, checked before decoding.
        allow_private_urls, allow_link_local_urls, fetch_timeout: the URL rules (`clipedge.fetch`).
    """

    bundle: str | None = None
    precision: str = "auto"
    text_precision: str | None = None
    provider: ProviderSpec = "auto"
    engine: str = "auto"
    threads: int | None = None
    thread_pool: str = "session"
    strict: bool = True
    verify: bool = True
    batch_independent: bool = True
    label_embeddings: str | None = None
    label_cache_size: int = 16384
    fast_jpeg: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    allow_private_urls: bool = False
    allow_link_local_urls: bool = False
    fetch_timeout: float = 5.0  # seconds for a whole URL fetch: DNS, connect, headers, body

    def resolved(self) -> LoadOptions:
        """These options with the bundle named (`default_bundle()` when None). Raises NoBundleError."""
        return self if self.bundle else self.replace(bundle=default_bundle())

    def replace(self, **changes: Any) -> LoadOptions:
        """A copy with some fields changed (TypeError for a name that is not a field)."""
        names = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise TypeError(f"unknown load option {unknown[0]!r} (options: {', '.join(sorted(names))})")
        return LoadOptions(**{**{n: getattr(self, n) for n in names}, **changes})


DEFAULTS = LoadOptions()  # the library's defaults, which the CLI shows and uses
