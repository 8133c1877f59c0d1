"""Configuration as data: how a classifier is loaded, as one frozen value that the CLI builds from its
arguments and the endpoint, both batch engines (Ray actors included), eval and the benchmarks pass on."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from .fetch import FetchPolicy
from .images import DEFAULT_MAX_PIXELS, DecodePolicy

if TYPE_CHECKING:
    from .classifier import ZeroShotClassifier

DEMO_BUNDLE = Path("models") / "demo"
MODEL_ENV = "CLIPEDGE_MODEL"


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
    """How to load a classifier (see `ZeroShotClassifier.load` for each field) and how it decodes images.

    bundle None means `default_bundle()`. The URL fields set the decode policy's fetch rules.
    """

    bundle: str | None = None
    precision: str = "auto"
    provider: str = "auto"
    threads: int | None = None
    strict: bool = True
    thread_pool: str = "session"
    fast_jpeg: bool = False
    verify: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS
    allow_private_urls: bool = False
    allow_link_local_urls: bool = False
    fetch_timeout: float = 5.0  # seconds for a whole URL fetch: DNS, connect, headers, body
    batch_independent: bool = True  # results never depend on batch mates (see ZeroShotClassifier.load)
    engine: str = "auto"  # "auto", "onnxruntime" or "openvino" (clipedge.selection)

    def resolved(self) -> LoadOptions:
        """These options with the bundle named (`default_bundle()` when None). Raises NoBundleError."""
        return self if self.bundle else replace(self, bundle=default_bundle())

    def decode_policy(self, untrusted: bool = False) -> DecodePolicy:
        """The decode policy: untrusted callers (the endpoint) get no file paths and redacted messages."""
        fetch = FetchPolicy(
            allow_private=self.allow_private_urls,
            allow_link_local=self.allow_link_local_urls,
            timeout=self.fetch_timeout,
            hide_addresses=untrusted,
        )
        return DecodePolicy(max_pixels=self.max_pixels, fetch=fetch, allow_paths=not untrusted)

    def load(self, decode_policy: DecodePolicy | None = None) -> ZeroShotClassifier:
        """Load the classifier (raises what `ZeroShotClassifier.load` raises, and NoBundleError)."""
        from .classifier import ZeroShotClassifier

        opts = self.resolved()
        return ZeroShotClassifier.load(
            opts.bundle,  # type: ignore[arg-type]
            precision=opts.precision,
            provider=opts.provider,
            threads=opts.threads,
            strict=opts.strict,
            verify=opts.verify,
            decode_policy=decode_policy or opts.decode_policy(),
            fast_jpeg=opts.fast_jpeg,
            thread_pool=opts.thread_pool,
            batch_independent=opts.batch_independent,
            engine=opts.engine,
        )
