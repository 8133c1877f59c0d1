"""The two ONNX towers of a bundle, as sessions that return L2-normalised float32 embeddings.

The vision tower runs in the precision `clipedge.selection` chooses; the text tower in the load options'
`text_precision` (default: the same). The text session is created on first use: a process whose labels
come from the cache or a label file never loads the text tower (less memory, faster start).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from .bundle import Bundle
from .options import LoadOptions
from .scoring import l2_normalise
from .selection import open_vision
from .tokenizer import Tokens


class ClipEncoder:
    """The vision session (opened at once) and the text session (on first use); engine, provider and
    precision are resolved by `clipedge.selection.open_vision` from the load options."""

    def __init__(self, bundle: Bundle, options: LoadOptions):
        self.choice, self._vision = open_vision(bundle, options)
        self.precision = self.choice.precision
        self.text_precision = options.text_precision or self.precision
        self.bundle, self.options = bundle, options
        # dynamic quantisation takes one activation scale per run: an image's (or a label's) result would
        # depend on what it runs with, so such a precision runs one item at a time (docs/runtime.md)
        self.per_item = options.batch_independent and batch_dependent(bundle, self.precision)
        self._text_per_item = False
        towers = bundle.manifest.towers
        self._vision_io, self._text_io = towers["vision"], towers.get("text")
        self._text: Any = None
        self._text_lock = threading.Lock()

    @property
    def providers(self) -> list[str]:
        return self._vision.get_providers()

    def _text_session(self) -> Any:
        """The text tower's session (callers check that the bundle has one: `ZeroShotClassifier`)."""
        with self._text_lock:
            if self._text is None:
                precision = self.text_precision
                if precision != self.precision and self.options.verify:
                    self.bundle.verify(precision)
                path = self.bundle.tower_path(precision, "text")
                self._text = self.choice.for_precision(precision).open(path, self.options)
                self._text_per_item = self.options.batch_independent and batch_dependent(self.bundle, precision)
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

    def embed_tokens(self, tokens: Tokens) -> np.ndarray:
        """A padded batch of token ids (with each text's length) -> unit text embeddings float32 [N,D]. The
        attention mask goes in where the tower takes one."""
        session = self._text_session()
        io = self._text_io
        assert io is not None

        def feeds(batch: Tokens) -> dict[str, np.ndarray]:
            out = {io.input: batch.ids.astype(np.int64, copy=False)}
            if io.attention_mask:
                out[io.attention_mask] = batch.mask()
            return out

        if not self._text_per_item:
            return l2_normalise(session.run(None, feeds(tokens))[0])
        # dynamic int8: each text alone, cut to its own length (padding would change the activation scale),
        # unless the family's padding belongs to the input (SigLIP's fixed 64)
        rows = [tokens.take(np.array([i])) for i in range(len(tokens.ids))]
        return l2_normalise(np.concatenate([session.run(None, feeds(row))[0] for row in rows]))


def batch_dependent(bundle: Bundle, precision: str) -> bool:
    """True for dynamically quantised variants (activation scales computed per run)."""
    recipe = bundle.manifest.precisions[precision].recipe
    return "dynamic" in str(recipe.get("method", "")) or "dynamic" in str(recipe.get("activation_type", ""))
