"""OpenAI's CLIP BPE vocabulary, built offline from the merges file that ships with CLIP.

The merges file `bpe_simple_vocab_16e6.txt.gz` is the one in openai/CLIP and open_clip (MIT licence).
The vocabulary is built exactly as openai/CLIP's `SimpleTokenizer` does: the 256 byte symbols, the same
with `</w>`, one entry per merge (the first 48,894 merge lines), then `<|startoftext|>`, `<|endoftext|>`.
The result is written as the standard Hugging Face tokenizer files (vocab.json, merges.txt, ...), so a
checkpoint folder made with it looks like a real one to every loader.
"""

from __future__ import annotations

import gzip
import json
from importlib import resources
from pathlib import Path

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
N_MERGES = 49152 - 256 - 2  # as in openai/CLIP simple_tokenizer.py: merges[1:49152-256-2+1]


def bytes_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable unicode map of GPT-2 and CLIP (openai/CLIP simple_tokenizer.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def clip_merges() -> list[str]:
    """The merge lines of OpenAI's CLIP BPE, without the version header."""
    data = resources.files("clipedge_export").joinpath("data/bpe_simple_vocab_16e6.txt.gz").read_bytes()
    lines = gzip.decompress(data).decode("utf-8").split("\n")
    return lines[1 : N_MERGES + 1]


def clip_vocab(merges: list[str]) -> dict[str, int]:
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols]
    vocab += ["".join(m.split()) for m in merges]
    vocab += [BOS, EOS]
    return {tok: i for i, tok in enumerate(vocab)}


def write_clip_tokenizer_files(folder: str | Path, context_length: int = 77) -> None:
    """Write vocab.json, merges.txt and the tokenizer configs of OpenAI's CLIP into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    merges = clip_merges()
    vocab = clip_vocab(merges)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": context_length,
        "do_lower_case": True,
        "errors": "replace",
        **special,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
