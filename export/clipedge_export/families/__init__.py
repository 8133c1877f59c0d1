"""Model families, one small module each: what a family's checkpoint is (its transformers classes), how its
towers are exported (pooling, attention mask), and what the manifest says of it (scoring, preprocessing,
tokenizer settings). The runtime has no per-family code: it reads that description.

A family module defines:
- NAME (the manifest's `family`) and MODEL_TYPES (config.json's `model_type` values it takes);
- load_model(ckpt) -> (config, model), eager attention, float32;
- describe(ckpt, config, model, tmp) -> Described (writes tmp/tokenizer.json);
- towers(model, described) -> (vision module, text module), both returning projected, unnormalised embeddings;
- text_example(described) -> example inputs for the text tower's export;
- reference(model, pixel_values, tokens) -> (image embeddings, text embeddings): transformers' own path;
- fusion(config) -> {"vision": (heads, width), "text": (heads, width)} for ONNX Runtime's optimizer.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from clipedge.bundle import Architecture, Preprocess, Scoring, TokenizerSpec, TowerIO

from ..errors import ExportError

MODULES = ("clip", "siglip")


@dataclass(frozen=True)
class Described:
    """What the manifest says about a checkpoint besides its files."""

    family: str
    preprocess: Preprocess
    tokenizer: TokenizerSpec
    architecture: Architecture
    logit_scale: float
    scoring: Scoring
    text_io: TowerIO


def for_model_type(model_type: Any, where: str) -> ModuleType:
    """The family module that exports a checkpoint of this `model_type`.

    Raises:
        ExportError: no family takes it (the message lists those that do).
    """
    known: dict[str, ModuleType] = {}
    for name in MODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        for t in module.MODEL_TYPES:
            known[t] = module
    if model_type not in known:
        raise ExportError(
            f"{where}: model_type is {model_type!r}; clipedge exports {', '.join(sorted(known))} checkpoints"
        )
    return known[model_type]
