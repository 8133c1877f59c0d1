"""The two ONNX towers of one bundle precision, as sessions that return L2-normalised float32 embeddings.

The text session is created on first use: a process whose labels come from the cache or a label file
never loads the text tower (less memory, faster start).
"""

from __future__ import annotations

import threading

import numpy as np

from .bundle import Bundle
from .providers import ProviderSpec
from .selection import open_vision


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, np.float32(1e-12))


class ClipEncoder:
    """The vision session (opened at once) and the text session (on first use) of one precision; engine,
    provider and precision are resolved by `clipedge.selection.open_vision`."""

    def __init__(
        self,
        bundle: Bundle,
        precision: str = "auto",
        provider: ProviderSpec = "auto",
        threads: int | None = None,
        strict: bool = True,
        pool: str = "session",
        verify: bool = True,
        batch_independent: bool = True,
        engine: str = "auto",
    ):
        self.choice, self._vision = open_vision(bundle, precision, provider, threads, strict, pool, verify, engine)
        self.precision, provider = self.choice.precision, self.choice.provider
        self.bundle = bundle
        # dynamic quantisation takes one activation scale per run: an image's (or a label's) result would
        # depend on what it runs with, so such a precision runs one item at a time (docs/runtime.md)
        self.per_item = batch_independent and batch_dependent(bundle, self.precision)
        self._provider, self._threads, self._strict, self._pool = provider, threads, strict, pool
        towers = bundle.manifest.towers
        self._vision_io, self._text_io = towers["vision"], towers.get("text")
        self._text = None
        self._text_lock = threading.Lock()

    @property
    def providers(self) -> list[str]:
        return self._vision.get_providers()

    def _text_session(self):
        if self.bundle.pack is not None:
            from .pack import no_text_tower

            raise no_text_tower(self.bundle, "text embeddings")
        with self._text_lock:
            if self._text is None:
                path = self.bundle.tower_path(self.precision, "text")
                self._text = self.choice.open(path, self._threads, self._strict, self._pool)
        return self._text

    def embed_pixels(self, pixel_values: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """pixel_values float32 [N,3,H,W] -> unit image embeddings float32 [N,D]."""
        dim = self.bundle.manifest.architecture.embed_dim
        if len(pixel_values) == 0:
            return np.zeros((0, dim), dtype=np.float32)
        if self.per_item:
            batch_size = 1
        outs = [
            self._vision.run(None, {self._vision_io.input: pixel_values[i : i + batch_size]})[0]
            for i in range(0, len(pixel_values), batch_size)
        ]
        return l2_normalise(np.concatenate(outs))

    def embed_token_ids(self, input_ids: np.ndarray) -> np.ndarray:
        """input_ids int64 [N,L] -> unit text embeddings float32 [N,D]."""
        session, name = self._text_session(), self._text_io.input
        input_ids = input_ids.astype(np.int64, copy=False)
        if not self.per_item:
            return l2_normalise(session.run(None, {name: input_ids})[0])
        eos = self.bundle.manifest.tokenizer.eos_id
        outs = []
        for row in input_ids:  # each text alone, cut after its first end-of-text (padding would change the scale)
            ends = np.flatnonzero(row == eos)
            length = int(ends[0]) + 1 if len(ends) else len(row)
            outs.append(session.run(None, {name: row[None, :length]})[0])
        return l2_normalise(np.concatenate(outs))


def batch_dependent(bundle: Bundle, precision: str) -> bool:
    """True for dynamically quantised variants (activation scales computed per run)."""
    recipe = bundle.manifest.precisions[precision].recipe
    return "dynamic" in str(recipe.get("method", "")) or "dynamic" in str(recipe.get("activation_type", ""))
