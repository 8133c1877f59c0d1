"""CLIP tokenisation with `tokenizers` from the bundle's tokenizer.json.

Truncation keeps the end-of-text token (tokenizers counts the special tokens the post-processor adds);
a batch is padded with the pad id (CLIP: EOS) to its longest text, not to the context length: CLIP's
causal text tower reads the first EOS, so padding after it changes nothing and costs time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from .manifest import TokenizerSpec


class ClipTokenizer:
    def __init__(self, path: str | Path, spec: TokenizerSpec):
        self.spec = spec
        self._tok = Tokenizer.from_file(str(path))
        self._tok.enable_truncation(max_length=spec.context_length)
        self._tok.no_padding()

    def encode(self, texts: list[str]) -> np.ndarray:
        """Texts -> input_ids int64 [N, longest], BOS ... EOS, padded with the pad id."""
        encodings = self._tok.encode_batch(list(texts))
        length = max((len(e.ids) for e in encodings), default=0)
        ids = np.full((len(encodings), length), self.spec.pad_id, dtype=np.int64)
        for i, e in enumerate(encodings):
            ids[i, : len(e.ids)] = e.ids
        return ids
