"""Hugging Face checkpoint folders with random weights, for tests and benchmarks, saved with `save_pretrained`
and loaded back through the same `from_pretrained` path a downloaded checkpoint takes.

`vit-b-32` is the exact architecture of openai/clip-vit-base-patch32 (its released config.json fields,
legacy `eos_token_id: 2` included) with the real CLIP BPE vocabulary; `tiny` is a small CLIP with the
same vocabulary. `siglip-b16` is the exact architecture of google/siglip-base-patch16-224 and `siglip-tiny` a
small SigLIP; their SentencePiece tokenizer (which cannot be downloaded here) is trained offline on a small
multilingual corpus and wrapped in transformers' SiglipTokenizer, so the reference side is transformers' own
code. Latency does not depend on weight values; accuracy does: never quote accuracy of these.

    python -m clipedge_export.random_checkpoint OUT_DIR --arch vit-b-32
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]

# Fields of the released openai/clip-vit-base-patch32 config.json that matter for the graph.
VIT_B_32 = {
    "projection_dim": 512,
    "text_config": {
        "hidden_size": 512,
        "intermediate_size": 2048,
        "num_attention_heads": 8,
        "num_hidden_layers": 12,
        "max_position_embeddings": 77,
        "vocab_size": 49408,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": 1,
    },
    "vision_config": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "image_size": 224,
        "patch_size": 32,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
    },
}

# What every model made here (tiny, demo) shares: the CLIP BPE vocabulary and context with the current
# transformers token ids, and CLIP's activation and LayerNorm epsilon. (VIT_B_32 above keeps the released
# file's legacy ids on purpose: the export must handle them.)
CLIP_TEXT_DEFAULTS = {
    "max_position_embeddings": 77,
    "vocab_size": 49408,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
}


def text_config(width: int, mlp: int, heads: int, layers: int) -> dict:
    return {
        "hidden_size": width,
        "intermediate_size": mlp,
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        **CLIP_TEXT_DEFAULTS,
    }


def vision_config(width: int, mlp: int, heads: int, layers: int, image_size: int, patch_size: int) -> dict:
    return {
        "hidden_size": width,
        "intermediate_size": mlp,
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "image_size": image_size,
        "patch_size": patch_size,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
    }


TINY = {
    "projection_dim": 32,
    "text_config": text_config(32, 64, heads=4, layers=2),
    "vision_config": vision_config(32, 64, heads=4, layers=2, image_size=64, patch_size=16),
}

# openai/clip-vit-base-patch16: ViT-B/32 with 16-pixel patches (196 of them, not 49)
VIT_B_16 = {**VIT_B_32, "vision_config": {**VIT_B_32["vision_config"], "patch_size": 16}}

ARCHS = {"vit-b-32": VIT_B_32, "vit-b-16": VIT_B_16, "tiny": TINY}

# google/siglip-base-patch16-224's config.json fields that matter for the graph
SIGLIP_B16 = {
    "text_config": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12,
                    "max_position_embeddings": 64, "vocab_size": 32000, "pad_token_id": 1, "eos_token_id": 1,
                    "bos_token_id": None},
    "vision_config": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                      "num_hidden_layers": 12, "image_size": 224, "patch_size": 16},
}  # fmt: skip
SIGLIP_TINY = {
    "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
                    "max_position_embeddings": 64, "vocab_size": 1000, "pad_token_id": 1, "eos_token_id": 1,
                    "bos_token_id": None},
    "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
                      "image_size": 64, "patch_size": 16},
}  # fmt: skip
SIGLIP_ARCHS = {"siglip-b16": SIGLIP_B16, "siglip-tiny": SIGLIP_TINY}


def train_sentencepiece(out: Path, vocab_size: int = 1000) -> Path:
    """A SentencePiece unigram model (SigLIP's kind: pad 0, eos 1, unk 2, no bos; nmt_nfkc) trained here on
    a small corpus that covers the validation texts' scripts. Returns the .model file."""
    import sentencepiece as spm

    from .validate import MULTILINGUAL, PROMPTS

    corpus = out / "corpus.txt"
    words = "a photo of the cat dog bird red green blue circle square star cross diagram car tree house"
    lines = [*MULTILINGUAL, *PROMPTS] * 20 + [" ".join(words.split()[i:] + words.split()[:i]) for i in range(18)] * 20
    corpus.write_text("\n".join(t for t in lines if t.strip()), encoding="utf-8")
    prefix = out / "spiece"
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(prefix), vocab_size=vocab_size, model_type="unigram", pad_id=0,
        eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, normalization_rule_name="nmt_nfkc",
        hard_vocab_limit=False, minloglevel=2,
    )  # fmt: skip
    corpus.unlink()
    (out / "spiece.vocab").unlink()
    return prefix.with_suffix(".model")


def make_random_siglip(
    out_dir: str | Path,
    arch: str = "siglip-tiny",
    seed: int = 0,
    logit_scale: float = 117.33,
    logit_bias: float = -12.93,
) -> Path:
    """Save a random-weight SiglipModel with its tokenizer (trained here) and SiglipImageProcessor's
    preprocessor_config.json to `out_dir`. The scale and bias default to what google/siglip-base-patch16-224
    learnt (random embeddings then give probabilities of 0 or 1: tests pass smaller ones)."""
    import tempfile

    import torch
    from transformers import SiglipConfig, SiglipModel, SiglipTokenizer

    spec = SIGLIP_ARCHS[arch]
    config = SiglipConfig(text_config=spec["text_config"], vision_config=spec["vision_config"])
    torch.manual_seed(seed)
    model = SiglipModel(config).eval()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(logit_scale))
        model.logit_bias.fill_(logit_bias)
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    with tempfile.TemporaryDirectory() as tmp:
        spm_file = train_sentencepiece(Path(tmp), vocab_size=min(1000, spec["text_config"]["vocab_size"]))
        SiglipTokenizer(vocab_file=str(spm_file), model_max_length=64).save_pretrained(out)
    size = spec["vision_config"]["image_size"]
    processor = {
        "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "SiglipImageProcessor", "image_std": [0.5, 0.5, 0.5], "processor_class":
        "SiglipProcessor", "resample": 3, "rescale_factor": 1 / 255, "size": {"height": size, "width": size},
    }  # fmt: skip
    (out / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
    return out


def preprocessor_config(image_size: int) -> dict:
    """The preprocessor_config.json of openai/clip-vit-base-patch32, sized for `image_size`."""
    return {
        "crop_size": image_size,
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": OPENAI_MEAN,
        "image_std": OPENAI_STD,
        "resample": 3,
        "size": image_size,
    }


def make_random_checkpoint(
    out_dir: str | Path,
    arch: str = "tiny",
    seed: int = 0,
    eos_token_id: int | None = None,
    logit_scale: float = 100.0,
) -> Path:
    """Save a random-weight CLIPModel with tokenizer and preprocessor files to `out_dir`."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    from .clip_bpe import write_clip_tokenizer_files

    spec = json.loads(json.dumps(ARCHS[arch]))
    if eos_token_id is not None:
        spec["text_config"]["eos_token_id"] = eos_token_id
    config = CLIPConfig(
        text_config=spec["text_config"],
        vision_config=spec["vision_config"],
        projection_dim=spec["projection_dim"],
    )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(logit_scale))
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    write_clip_tokenizer_files(out, spec["text_config"]["max_position_embeddings"])
    image_size = spec["vision_config"]["image_size"]
    (out / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(image_size), indent=2))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--arch", choices=sorted({*ARCHS, *SIGLIP_ARCHS}), default="vit-b-32")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.arch in SIGLIP_ARCHS:
        print(make_random_siglip(args.out_dir, args.arch, args.seed))
    else:
        print(make_random_checkpoint(args.out_dir, args.arch, args.seed))


if __name__ == "__main__":
    main()
