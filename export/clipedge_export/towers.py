"""The two towers as small torch modules, declared with their ONNX inputs, outputs and dynamic axes.

Both return the projected, *unnormalised* embeddings (what CLIPModel.get_image_features /
get_text_features return); the runtime L2-normalises them in float32.

Text pooling takes the hidden state at the first end-of-text token, found with CumSum and a one-hot
weighted sum instead of `argmax(input_ids)`: the legacy `eos_token_id: 2` config of
openai/clip-vit-base-patch32 makes transformers use argmax over int64 ids, which some ONNX Runtime
builds cannot run and which fp16 could blur. With real CLIP ids (EOS 49407 is the highest id and the
pad) both pick the same position; the test suite checks it for the legacy and the newer config.
The causal mask is built as `Where(Less(...))`, a form ONNX Runtime's CLIP attention fusion recognises,
so the text tower gets fused (causal) Attention nodes like the vision tower.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn


class VisionTower(nn.Module):
    """pixel_values float32 [N,3,H,W] -> image_embeds float32 [N,D] (projected, not normalised)."""

    def __init__(self, model: Any):
        super().__init__()
        self.vision_model = model.vision_model
        self.visual_projection = model.visual_projection

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pooled = self.vision_model(pixel_values=pixel_values).pooler_output
        return self.visual_projection(pooled)


class TextTower(nn.Module):
    """input_ids int64 [N,L] (L <= context length, padded with EOS) -> text_embeds float32 [N,D]."""

    def __init__(self, model: Any, eos_id: int):
        super().__init__()
        self.text_model = model.text_model
        self.text_projection = model.text_projection
        self.eos_id = int(eos_id)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        tm = self.text_model
        hidden = tm.embeddings(input_ids=input_ids)
        n, length = input_ids.shape
        pos = torch.arange(length, device=input_ids.device)
        allowed = pos.unsqueeze(0) < (pos.unsqueeze(1) + 1)  # key j visible from query i when j <= i
        zero = torch.zeros((), dtype=hidden.dtype)
        neg = torch.full((), torch.finfo(hidden.dtype).min, dtype=hidden.dtype)
        mask = torch.where(allowed, zero, neg).unsqueeze(0).unsqueeze(0).expand(n, 1, length, length)
        out = tm.encoder(inputs_embeds=hidden, attention_mask=mask)
        hidden = tm.final_layer_norm(out[0] if isinstance(out, tuple) else out.last_hidden_state)
        is_eos = input_ids == self.eos_id
        first_eos = is_eos & (torch.cumsum(is_eos.to(torch.int32), dim=-1) == 1)
        pooled = (hidden * first_eos.unsqueeze(-1).to(hidden.dtype)).sum(dim=1)
        return self.text_projection(pooled)


@dataclass(frozen=True)
class TowerSpec:
    name: str
    input: str
    output: str
    dynamic_axes: dict[str, dict[int, str]]
    extra_inputs: tuple[str, ...] = ()  # after `input`, e.g. a text tower's attention_mask

    @property
    def inputs(self) -> list[str]:
        return [self.input, *self.extra_inputs]


VISION = TowerSpec(
    "vision",
    "pixel_values",
    "image_embeds",
    {"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}},
)
TEXT = TowerSpec(
    "text",
    "input_ids",
    "text_embeds",
    {"input_ids": {0: "batch", 1: "sequence"}, "text_embeds": {0: "batch"}},
)
TEXT_MASKED = TowerSpec(  # BERT's and XLM-R's text towers take the attention mask
    "text",
    "input_ids",
    "text_embeds",
    {
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "sequence"},
        "text_embeds": {0: "batch"},
    },
    ("attention_mask",),
)


def reference_image_embeds(model: Any, pixel_values: torch.Tensor) -> torch.Tensor:
    """transformers' own path (CLIPModel.get_image_features), the ground truth for validation."""
    with torch.no_grad():
        return model.visual_projection(model.vision_model(pixel_values=pixel_values).pooler_output)


def reference_text_embeds(model: Any, input_ids: torch.Tensor) -> torch.Tensor:
    """transformers' own path (CLIPModel.get_text_features), including its own EOS pooling rule."""
    with torch.no_grad():
        return model.text_projection(model.text_model(input_ids=input_ids).pooler_output)


def export_tower(
    module: nn.Module, spec: TowerSpec, example: torch.Tensor | tuple[torch.Tensor, ...], path: Path, opset: int
) -> None:
    """torch.onnx.export (TorchScript exporter: its graphs are the ones ONNX Runtime's fusions match)."""
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            example if isinstance(example, tuple) else (example,),
            str(path),
            input_names=spec.inputs,
            output_names=[spec.output],
            dynamic_axes=spec.dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
