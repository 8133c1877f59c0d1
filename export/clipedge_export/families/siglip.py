"""SigLIP and the fixed-resolution SigLIP 2 checkpoints (transformers' SiglipModel, `model_type: "siglip"`):
sigmoid scoring with a learnt bias, squash resize (no crop), text always padded to its 64 tokens and pooled at
the last position, and the tokenizer's own text normalisation (SigLIP's: lower-casing, ASCII punctuation
removed, spaces collapsed) carried in tokenizer.json.

The attention mask: transformers' zero-shot pipeline passes what the tokenizer returns, and SigLIP's text model
masks padding when it gets a mask (transformers 5's SiglipTokenizer returns one; 4.x's did not). The text tower
takes it (as `token_mask`) exactly when the reference tokenizer returns it, so that the bundle scores as the
pipeline does.

Fusion: ONNX Runtime's optimizer fuses no attention in transformers' SigLIP graphs: in the image tower, the
attention-pooling head's `nn.MultiheadAttention` exports to reshapes that symbolic shape inference cannot
follow, and without shapes nothing fuses; in the text tower, the mask's subgraph is not a pattern its CLIP
fusion knows. So the image tower's head is written out with plain matmuls (the same arithmetic, checked
against transformers at every export), and the text tower builds its additive mask as a [N, 1, L, L] tensor
named `attention_mask`, the name the fusion takes as the attention bias (`name_attention_bias`)."""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Any

from clipedge.bundle import Architecture, Scoring, TokenizerSpec, TowerIO, file_entry

from .. import source as src
from ..errors import ExportError
from ..towers import TEXT
from . import Described

NAME = "siglip"
MODEL_TYPES = ("siglip",)
SIGLIP_NORMALIZATION = "lower-cased, ASCII punctuation removed, runs of spaces made one, stripped (SigLIP)"


def load_model(ckpt: src.Checkpoint) -> tuple[Any, Any]:
    from transformers import SiglipConfig, SiglipModel

    config = SiglipConfig.from_pretrained(ckpt.folder)
    return config, src.load_pretrained(ckpt, SiglipModel, config)


def reference_tokenizer(ckpt: src.Checkpoint) -> Any:
    """The tokenizer transformers' pipeline uses for this checkpoint (AutoTokenizer)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(ckpt.folder)
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"{ckpt.folder}: cannot load the tokenizer ({reason[:300]})") from None


def fast_tokenizer(reference: Any) -> Any:
    """A `tokenizers.Tokenizer` that gives the reference tokenizer's ids: its own tokenizer.json where it has
    one (SigLIP 2's Gemma tokenizer), else SigLIP's SentencePiece model converted, with SiglipTokenizer's
    canonicalisation (lower case, ASCII punctuation removed, spaces collapsed) as normalizers in front and
    its end token appended."""
    from tokenizers import Regex, normalizers, processors

    backend = getattr(reference, "backend_tokenizer", None)
    if backend is not None:
        return backend
    from transformers.convert_slow_tokenizer import SpmConverter

    tok = SpmConverter(reference).converted()
    canonical = [
        normalizers.Replace(Regex("[" + re.escape(string.punctuation) + "]"), ""),
        normalizers.Replace(Regex(r"\s+"), " "),
        normalizers.Strip(),
    ]
    if getattr(reference, "do_lower_case", True):
        # Python's str.lower() writes a word-final capital sigma as the final form (Unicode's Final_Sigma
        # rule); tokenizers lower-cases letter by letter, so that one case is written out first
        final_sigma = normalizers.Replace(Regex(r"(?<=\p{L})Σ(?!\p{L})"), "ς")
        canonical[:0] = [final_sigma, normalizers.Lowercase()]
    tok.normalizer = normalizers.Sequence([*canonical, tok.normalizer])
    eos = reference.eos_token
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", special_tokens=[(eos, reference.eos_token_id)]
    )
    return tok


def check_token_ids(tok: Any, reference: Any, context: int, where: Path) -> None:
    """tokenizer.json gives the reference tokenizer's ids, as the pipeline calls it (padding to `context`,
    truncated), on text in many scripts and shapes (`validate.MULTILINGUAL`, `validate.PROMPTS`).

    Raises:
        ExportError: a text whose ids differ (its position in the corpus named).
    """
    from ..validate import MULTILINGUAL, PROMPTS

    tok.enable_truncation(context)
    try:
        for i, text in enumerate([*MULTILINGUAL, *PROMPTS]):
            want = list(reference(text, padding="max_length", max_length=context, truncation=True)["input_ids"])
            ids = tok.encode(text).ids
            got = ids + [reference.pad_token_id] * (context - len(ids))
            if got != want:
                raise ExportError(
                    f"{where}: tokenizer.json does not give the reference tokenizer's ids on test text {i} "
                    f"({got[:8]}... against {want[:8]}...)"
                )
    finally:
        tok.no_truncation()


def describe(ckpt: src.Checkpoint, config: Any, model: Any, tmp: Path) -> Described:
    vcfg, tcfg = config.vision_config, config.text_config
    preprocess = src.load_preprocess(ckpt, vcfg.image_size)
    reference = reference_tokenizer(ckpt)
    tok = fast_tokenizer(reference)
    tok.no_truncation()
    tok.no_padding()
    tok.save(str(tmp / "tokenizer.json"), pretty=False)
    context = int(tcfg.max_position_embeddings)
    check_token_ids(tok, reference, context, ckpt.folder)
    bos = reference.bos_token_id if reference("")["input_ids"][:1] == [reference.bos_token_id] else -1
    if reference.eos_token_id is None or reference.pad_token_id is None:
        raise ExportError(f"{ckpt.folder}: the tokenizer has no end or pad token")
    masked = "attention_mask" in getattr(reference, "model_input_names", ())
    spec = TokenizerSpec(
        "tokenizer.json",
        file_entry(tmp, "tokenizer.json").sha256,
        context,
        -1 if bos is None else int(bos),
        int(reference.eos_token_id),
        int(reference.pad_token_id),
        padding="max_length",
        attention_mask=masked,
        pooling="last",
        normalization=SIGLIP_NORMALIZATION if getattr(reference, "backend_tokenizer", None) is None else "",
    )
    embed_dim = int(getattr(tcfg, "projection_size", None) or tcfg.hidden_size)
    if embed_dim != vcfg.hidden_size:
        raise ExportError(f"{ckpt.folder}: text embeddings of {embed_dim} and image embeddings of {vcfg.hidden_size}")
    arch = Architecture(
        embed_dim=embed_dim,
        image_size=vcfg.image_size,
        patch_size=vcfg.patch_size,
        context_length=context,
        vocab_size=tcfg.vocab_size,
        vision_width=vcfg.hidden_size,
        vision_layers=vcfg.num_hidden_layers,
        vision_heads=vcfg.num_attention_heads,
        text_width=tcfg.hidden_size,
        text_layers=tcfg.num_hidden_layers,
        text_heads=tcfg.num_attention_heads,
    )
    scale = float(model.logit_scale.detach().exp().item())
    scoring = Scoring("sigmoid", float(model.logit_bias.detach().item()))
    text_io = TowerIO(TEXT.input, TEXT.output, MASK_INPUT if masked else None)
    return Described(NAME, preprocess, spec, arch, scale, scoring, text_io)


MASK_INPUT = "token_mask"  # the text tower's mask input (the name `attention_mask` is the fused attention bias's)


def towers(model: Any, described: Described) -> tuple[Any, Any]:
    import math

    import torch
    from torch import nn

    class Vision(nn.Module):
        """pixel_values -> the attention-pooled, unnormalised image embeddings (SiglipVisionModel's pooler), the
        pooling head's multi-head attention written out (module docstring)."""

        def __init__(self) -> None:
            super().__init__()
            self.vision_model = model.vision_model
            mha = model.vision_model.head.attention
            heads, width = mha.num_heads, mha.embed_dim
            with torch.no_grad():  # the probe's query is a constant: computed once here, not in the graph
                wq, bq = mha.in_proj_weight.chunk(3)[0], mha.in_proj_bias.chunk(3)[0]
                query = (model.vision_model.head.probe @ wq.T + bq).reshape(1, 1, heads, width // heads)
            self.register_buffer("query", query.transpose(1, 2).contiguous())

        def forward(self, pixel_values):
            vm = self.vision_model
            hidden = vm.post_layernorm(vm.encoder(inputs_embeds=vm.embeddings(pixel_values)).last_hidden_state)
            head = vm.head
            mha = head.attention
            n, width, heads = hidden.shape[0], hidden.shape[-1], mha.num_heads
            dim = width // heads
            _, wk, wv = mha.in_proj_weight.chunk(3)
            _, bk, bv = mha.in_proj_bias.chunk(3)
            q = self.query
            k = (hidden @ wk.T + bk).reshape(n, -1, heads, dim).transpose(1, 2)
            v = (hidden @ wv.T + bv).reshape(n, -1, heads, dim).transpose(1, 2)
            attention = torch.softmax((q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(dim)), dim=-1)
            pooled = mha.out_proj((attention @ v).transpose(1, 2).reshape(n, 1, width))
            return (pooled + head.mlp(head.layernorm(pooled)))[:, 0]

    class Text(nn.Module):
        """input_ids [N, 64] (and the token mask) -> the last position's state through the head
        (SiglipTextModel's pooler); padding masked as the pipeline's call masks it."""

        def __init__(self) -> None:
            super().__init__()
            self.text_model = model.text_model

        def forward(self, input_ids, token_mask=None):
            tm = self.text_model
            hidden = tm.embeddings(input_ids=input_ids)
            bias = None
            if token_mask is not None:
                n, length = input_ids.shape
                zero = torch.zeros((), dtype=hidden.dtype)
                low = torch.full((), torch.finfo(hidden.dtype).min, dtype=hidden.dtype)
                bias = torch.where(token_mask[:, None, None, :] > 0, zero, low).expand(n, 1, length, length)
            out = tm.encoder(inputs_embeds=hidden, attention_mask=bias)
            return tm.head(tm.final_layer_norm(out.last_hidden_state)[:, -1, :])

    return Vision(), Text()


def name_attention_bias(path: Path) -> None:
    """Name the text tower's additive mask `attention_mask`: ONNX Runtime's CLIP attention fusion takes a tensor
    of that name, added after Q x K', as the fused Attention's bias (module docstring)."""
    import onnx

    graph = onnx.load(str(path))
    expanded = {n.output[0] for n in graph.graph.node if n.op_type == "Expand"}
    biases = {i for n in graph.graph.node if n.op_type == "Add" for i in n.input if i in expanded}
    if len(biases) != 1:
        return  # not the graph this module exports: leave it unfused rather than wrong
    (bias,) = biases
    for node in graph.graph.node:
        node.input[:] = ["attention_mask" if i == bias else i for i in node.input]
        node.output[:] = ["attention_mask" if o == bias else o for o in node.output]
    onnx.save(graph, str(path))


def finish_graphs(raw: dict[str, Path], described: Described) -> None:
    if described.text_io.attention_mask:
        name_attention_bias(raw["text"])


def text_example(described: Described) -> tuple[Any, ...]:
    import torch

    spec = described.tokenizer
    ids = torch.full((2, spec.context_length), spec.pad_id, dtype=torch.int64)
    ids[:, :3] = torch.tensor([5, 6, spec.eos_id]).clamp(max=described.architecture.vocab_size - 1)
    if not described.text_io.attention_mask:
        return (ids,)
    mask = torch.zeros_like(ids)
    mask[:, :3] = 1
    return (ids, mask)


def reference(model: Any, pixel_values: Any, input_ids: Any, attention_mask: Any) -> tuple[Any, Any]:
    """transformers' own path: get_image_features / get_text_features (4.x: tensors; 5.x: outputs), with the
    attention mask when the family's bundle takes one (else None)."""
    import torch

    with torch.no_grad():
        image = model.get_image_features(pixel_values=pixel_values)
        text = model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
    return getattr(image, "pooler_output", image), getattr(text, "pooler_output", text)


def fusion(config: Any) -> dict[str, tuple[int, int]]:
    v, t = config.vision_config, config.text_config
    return {"vision": (v.num_attention_heads, v.hidden_size), "text": (t.num_attention_heads, t.hidden_size)}
