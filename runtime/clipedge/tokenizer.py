"""Tokenisation with `tokenizers` from the bundle's tokenizer.json, as the manifest's tokenizer spec says.

tokenizer.json carries what the family's own tokenizer does to text first (CLIP's lower-casing, SigLIP's
punctuation removal: its normalizer), the vocabulary and the special tokens it adds. Here: truncation to the
context length, keeping the end token (tokenizers counts the special tokens the post-processor adds), and
padding with the pad id: to the batch's longest text where padding changes nothing (CLIP's causal text tower
reads its first end token; BERT's and XLM-R's take an attention mask), to the context length where it does
(SigLIP pools the last position: "padding max_length", as it was trained).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from .manifest import TokenizerSpec


@dataclass(frozen=True)
class Tokens:
    """A padded batch: ids int64 [N, L] and each text's real length (special tokens included); `fixed`: the
    padding belongs to the input (max_length) and must stay."""

    ids: np.ndarray
    lengths: np.ndarray
    fixed: bool = False

    def mask(self) -> np.ndarray:
        """The attention mask int64 [N, L]: 1 for each text's own tokens, 0 for padding."""
        return (np.arange(self.ids.shape[1])[None, :] < self.lengths[:, None]).astype(np.int64)

    def take(self, rows: np.ndarray) -> Tokens:
        """These rows, cut to their longest unless the padding is fixed."""
        lengths = self.lengths[rows]
        width = self.ids.shape[1] if self.fixed else int(lengths.max(initial=1))
        return Tokens(np.ascontiguousarray(self.ids[rows, :width]), lengths, self.fixed)


class ClipTokenizer:
    """The bundle's tokenizer (any family's: the name is the first family's)."""

    def __init__(self, path: str | Path, spec: TokenizerSpec):
        self.spec = spec
        self._tok = Tokenizer.from_file(str(path))
        self._tok.enable_truncation(max_length=spec.context_length)
        self._tok.no_padding()

    def tokens(self, texts: list[str]) -> Tokens:
        """Texts -> a batch padded with the pad id, to the longest text or (max_length) the context length."""
        encodings = self._tok.encode_batch(list(texts))
        lengths = np.array([len(e.ids) for e in encodings], dtype=np.int64)
        fixed = self.spec.padding == "max_length"
        width = self.spec.context_length if fixed else int(lengths.max(initial=0))
        ids = np.full((len(encodings), width), self.spec.pad_id, dtype=np.int64)
        for i, e in enumerate(encodings):
            ids[i, : len(e.ids)] = e.ids
        return Tokens(ids, lengths, fixed)

    def encode(self, texts: list[str]) -> np.ndarray:
        """Texts -> input_ids int64 [N, L], padded as `tokens` pads them."""
        return self.tokens(texts).ids
