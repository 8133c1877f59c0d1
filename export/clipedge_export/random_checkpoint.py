"""Hugging Face CLIP checkpoint folders with random weights, for tests and benchmarks.

`vit-b-32` is the exact architecture of openai/clip-vit-base-patch32 (its released config.json fields,
legacy `eos_token_id: 2` included) with the real CLIP BPE vocabulary; `tiny` is a small CLIP with the
same vocabulary. Latency does not depend on weight values; accuracy does: never quote accuracy of these.

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

ARCHS = {"vit-b-32": VIT_B_32, "tiny": TINY}


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
    parser.add_argument("--arch", choices=sorted(ARCHS), default="vit-b-32")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(make_random_checkpoint(args.out_dir, args.arch, args.seed))


if __name__ == "__main__":
    main()
