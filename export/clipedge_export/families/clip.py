"""CLIP (transformers' CLIPModel: OpenAI's, LAION's, DataComp's checkpoints): softmax scoring, shortest-edge
resize and centre crop, BPE text padded to the longest text, pooled at the first end-of-text token."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from clipedge.bundle import Architecture, Scoring, TokenizerSpec, TowerIO, file_entry

from .. import source as src
from ..clip_bpe import BOS, EOS
from ..errors import ExportError
from ..towers import TEXT, TextTower, VisionTower, reference_image_embeds, reference_text_embeds
from . import Described

NAME = "clip"
MODEL_TYPES = ("clip",)


def load_model(ckpt: src.Checkpoint) -> tuple[Any, Any]:
    config = src.load_config(ckpt)
    return config, src.load_model(ckpt, config)


def tokenizer_spec(tok: Any, folder: Path, context_length: int) -> TokenizerSpec:
    bos, eos = tok.token_to_id(BOS), tok.token_to_id(EOS)
    if bos is None or eos is None:
        raise ExportError(f"{folder}: the tokenizer has no {BOS} / {EOS} tokens: not a CLIP tokenizer")
    pad = eos
    cfg = folder / "tokenizer_config.json"
    if cfg.is_file():
        pad_token = json.loads(cfg.read_text(encoding="utf-8")).get("pad_token")
        if isinstance(pad_token, dict):
            pad_token = pad_token.get("content")
        if isinstance(pad_token, str) and tok.token_to_id(pad_token) is not None:
            pad = tok.token_to_id(pad_token)
    return TokenizerSpec(
        "tokenizer.json", "", context_length, bos, eos, pad, normalization="lower-cased, whitespace cleaned (CLIP)"
    )


def describe(ckpt: src.Checkpoint, config: Any, model: Any, tmp: Path) -> Described:
    """Preprocessing, tokenizer (written to tmp/tokenizer.json), architecture figures and logit scale."""
    vcfg, tcfg = config.vision_config, config.text_config
    preprocess = src.load_preprocess(ckpt, vcfg.image_size)
    tok = src.load_tokenizer(ckpt)
    tok.save(str(tmp / "tokenizer.json"), pretty=False)
    spec = tokenizer_spec(tok, ckpt.folder, tcfg.max_position_embeddings)
    spec = dataclasses.replace(spec, sha256=file_entry(tmp, "tokenizer.json").sha256)
    arch = Architecture(
        embed_dim=config.projection_dim,
        image_size=vcfg.image_size,
        patch_size=vcfg.patch_size,
        context_length=tcfg.max_position_embeddings,
        vocab_size=tcfg.vocab_size,
        vision_width=vcfg.hidden_size,
        vision_layers=vcfg.num_hidden_layers,
        vision_heads=vcfg.num_attention_heads,
        text_width=tcfg.hidden_size,
        text_layers=tcfg.num_hidden_layers,
        text_heads=tcfg.num_attention_heads,
    )
    scale = float(model.logit_scale.detach().exp().item())
    return Described(NAME, preprocess, spec, arch, scale, Scoring("softmax"), TowerIO(TEXT.input, TEXT.output))


def towers(model: Any, described: Described) -> tuple[Any, Any]:
    return VisionTower(model), TextTower(model, described.tokenizer.eos_id)


def text_example(described: Described) -> tuple[Any, ...]:
    import torch

    spec, vocab = described.tokenizer, described.architecture.vocab_size
    ids = torch.tensor([[spec.bos_id, 320, 1125, spec.eos_id, spec.pad_id]] * 2).clamp(max=vocab - 1)
    return (ids,)


def reference(model: Any, pixel_values: Any, input_ids: Any, attention_mask: Any) -> tuple[Any, Any]:
    """transformers' own path (get_image_features / get_text_features, its own EOS pooling rule)."""
    return reference_image_embeds(model, pixel_values), reference_text_embeds(model, input_ids)


def fusion(config: Any) -> dict[str, tuple[int, int]]:
    v, t = config.vision_config, config.text_config
    return {"vision": (v.num_attention_heads, v.hidden_size), "text": (t.num_attention_heads, t.hidden_size)}
