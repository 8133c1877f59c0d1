"""CLIP's byte-level BPE as a `tokenizers.Tokenizer`, for checkpoints that bring vocab.json + merges.txt only.

The pipeline is the one of Hugging Face's CLIPTokenizerFast / tokenizer.json of openai/clip-vit-base-patch32:
NFC, whitespace runs to one space, lowercase; CLIP's split regex; byte-level symbols; BPE with `</w>` word
ends; `<|startoftext|> ... <|endoftext|>` around every text.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

from .clip_bpe import BOS, EOS

SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def build_clip_tokenizer(vocab_file: str | Path, merges_file: str | Path) -> Tokenizer:
    vocab, merges = BPE.read_file(str(vocab_file), str(merges_file))
    tok = Tokenizer(
        BPE(
            vocab=vocab,
            merges=merges,
            dropout=None,
            continuing_subword_prefix="",
            end_of_word_suffix="</w>",
            fuse_unk=False,
            unk_token=EOS,
        )
    )
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([BOS, EOS])
    tok.post_processor = processors.RobertaProcessing(
        (EOS, tok.token_to_id(EOS)), (BOS, tok.token_to_id(BOS)), trim_offsets=False, add_prefix_space=False
    )
    return tok
