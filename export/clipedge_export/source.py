"""Where a checkpoint comes from: a Hugging Face hub id (downloaded, or the local HF cache offline) or a folder.

Weights load with safetensors, or torch.load(weights_only=True) for .bin files; never unrestricted pickle.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipedge.bundle import FileEntry, Preprocess, file_entry

from .errors import ExportError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# What a CLIP checkpoint needs; other weight formats (tf, flax, onnx) are never downloaded.
HUB_PATTERNS = [
    "config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "*.safetensors",
    "model.safetensors.index.json",
]
BIN_PATTERNS = ["pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*.bin"]
WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin")
RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


@dataclass(frozen=True)
class Checkpoint:
    """A resolved checkpoint folder and what the manifest says of its origin."""

    folder: Path
    id: str
    kind: str  # "hub" | "local"
    revision: str | None

    def weight_files(self) -> list[Path]:
        safetensors = sorted(self.folder.glob("*.safetensors"))
        return safetensors or sorted(self.folder.glob("pytorch_model*.bin"))

    def weight_entries(self) -> tuple[FileEntry, ...]:
        return tuple(file_entry(self.folder, p.name) for p in self.weight_files())


def resolve(source: str, revision: str | None = None) -> Checkpoint:
    """A local folder if `source` exists, else a hub id fetched with huggingface_hub (cache used offline)."""
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ExportError(f"{source}: not a folder (expected a Hugging Face checkpoint folder or hub id)")
        # the folder's name, not its path: bundles travel, and the weights' sha256 say what they hold
        return Checkpoint(path.resolve(), path.resolve().name, "local", revision)
    if not HUB_ID.match(source) or source.startswith((".", "/", "~")):
        raise ExportError(f"{source}: no such folder, and not a Hugging Face hub id (owner/name)")
    return _from_hub(source, revision)


def _from_hub(repo_id: str, revision: str | None) -> Checkpoint:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.utils import HfHubHTTPError
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        raise ExportError("huggingface_hub is needed to export from a hub id: pip install 'clipedge[export]'") from None
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")

    def fetch(patterns: list[str], local_only: bool) -> Path:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns, local_files_only=local_only))

    try:
        try:
            folder = fetch(HUB_PATTERNS, offline)
        except (HfHubHTTPError, OSError, ValueError) as online_error:
            if offline:
                raise
            try:  # no network: fall back to whatever the local HF cache holds
                folder = fetch(HUB_PATTERNS, True)
            except Exception:
                raise online_error from None
        if not any(folder.glob("*.safetensors")):  # older repos: PyTorch .bin weights only
            folder = fetch(HUB_PATTERNS + BIN_PATTERNS, offline)
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(
            f"{repo_id}: cannot get the checkpoint from the Hugging Face hub or the local cache ({reason}). "
            "Download it once with network access (huggingface-cli download), or pass a local folder."
        ) from None
    return Checkpoint(folder, repo_id, "hub", revision or folder.name)


def _read_json(path: Path, why_needed: str) -> dict:
    if not path.is_file():
        raise ExportError(f"{path.parent}: no {path.name} ({why_needed})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ExportError(f"{path}: expected a JSON object")
    return data


def model_type(ckpt: Checkpoint) -> Any:
    """config.json's `model_type` (which family exports the checkpoint)."""
    return _read_json(ckpt.folder / "config.json", "not a Hugging Face checkpoint folder").get("model_type")


def load_config(ckpt: Checkpoint) -> Any:
    """A CLIP checkpoint's CLIPConfig (other families: `clipedge_export.families`)."""
    from transformers import CLIPConfig

    cfg_path = ckpt.folder / "config.json"
    kind = model_type(ckpt)
    if kind != "clip":
        raise ExportError(f"{cfg_path}: model_type is {kind!r}, not 'clip'")
    return CLIPConfig.from_pretrained(ckpt.folder)


def load_model(ckpt: Checkpoint, config: Any) -> Any:
    """CLIPModel in float32 with eager attention (its pattern is what ONNX Runtime's optimizer fuses)."""
    from transformers import CLIPModel

    return load_pretrained(ckpt, CLIPModel, config)


def load_pretrained(ckpt: Checkpoint, cls: Any, config: Any) -> Any:
    """`cls.from_pretrained` in float32 with eager attention (the pattern ONNX Runtime's optimizer fuses), safe
    weights only; any failure is one line."""
    import torch

    if not ckpt.weight_files():
        raise ExportError(f"{ckpt.folder}: no weights (model.safetensors or pytorch_model.bin)")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        model = cls.from_pretrained(
            ckpt.folder,
            config=config,
            attn_implementation="eager",
            dtype=torch.float32,
            use_safetensors=any(ckpt.folder.glob("*.safetensors")),
            weights_only=True,
        )
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"{ckpt.folder}: cannot load the weights ({reason[:300]})") from None
    return model.eval()


def load_preprocess(ckpt: Checkpoint, image_size: int) -> Preprocess:
    """Exactly what the checkpoint's image processor does with its preprocessor_config.json: a `size` with a
    height and a width resizes to them, aspect ratio not kept (SiglipImageProcessor, ChineseCLIP's); a
    shortest edge resizes that edge, then crops the centre (CLIPImageProcessor)."""
    path = ckpt.folder / "preprocessor_config.json"
    cfg = _read_json(path, "needed to preprocess exactly like the checkpoint's own processor")
    size = cfg.get("size", image_size)
    if isinstance(size, dict) and "height" in size and "width" in size:
        return _squash(cfg, path, (int(size["height"]), int(size["width"])))
    shortest = size.get("shortest_edge") if isinstance(size, dict) else size
    crop = cfg.get("crop_size", size)
    if isinstance(crop, dict):
        crop_hw = (int(crop.get("height", shortest)), int(crop.get("width", shortest)))
    else:
        crop_hw = (int(crop), int(crop))
    if not shortest or not cfg.get("do_resize", True):
        raise ExportError(f"{path}: only shortest-edge resizing (CLIPImageProcessor's default) is supported")
    resample = int(cfg.get("resample", 3))
    if resample not in RESAMPLE_NAMES:
        raise ExportError(f"{path}: unknown resample {resample}")
    do_rescale = cfg.get("do_rescale", True)
    do_normalize = cfg.get("do_normalize", True)
    mean = cfg.get("image_mean", [0.0, 0.0, 0.0]) if do_normalize else [0.0, 0.0, 0.0]
    std = cfg.get("image_std", [1.0, 1.0, 1.0]) if do_normalize else [1.0, 1.0, 1.0]
    return Preprocess(
        resize_shortest_edge=int(shortest),
        resample=RESAMPLE_NAMES[resample],
        crop_size=crop_hw,
        do_center_crop=bool(cfg.get("do_center_crop", True)),
        rescale_factor=float(cfg.get("rescale_factor", 1 / 255)) if do_rescale else 1.0,
        mean=tuple(float(x) for x in mean),
        std=tuple(float(x) for x in std),
    )


def _squash(cfg: dict, path: Path, hw: tuple[int, int]) -> Preprocess:
    if not cfg.get("do_resize", True):
        raise ExportError(f"{path}: do_resize false is not supported")
    resample = int(cfg.get("resample", 3))
    if resample not in RESAMPLE_NAMES:
        raise ExportError(f"{path}: unknown resample {resample}")
    normalize = cfg.get("do_normalize", True)
    return Preprocess(
        resize_shortest_edge=min(hw),
        resample=RESAMPLE_NAMES[resample],
        crop_size=hw,
        do_center_crop=False,
        rescale_factor=float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else 1.0,
        mean=tuple(float(x) for x in cfg.get("image_mean", [0.5] * 3)) if normalize else (0.0, 0.0, 0.0),
        std=tuple(float(x) for x in cfg.get("image_std", [0.5] * 3)) if normalize else (1.0, 1.0, 1.0),
        resize_mode="squash",
    )


def load_tokenizer(ckpt: Checkpoint) -> Any:
    """The checkpoint's tokenizer as a `tokenizers.Tokenizer` (its tokenizer.json, or built from vocab + merges)."""
    from tokenizers import Tokenizer

    tj = ckpt.folder / "tokenizer.json"
    if tj.is_file():
        tok = Tokenizer.from_file(str(tj))
    elif (ckpt.folder / "vocab.json").is_file() and (ckpt.folder / "merges.txt").is_file():
        from .clip_tokenizer import build_clip_tokenizer

        tok = build_clip_tokenizer(ckpt.folder / "vocab.json", ckpt.folder / "merges.txt")
    else:
        raise ExportError(f"{ckpt.folder}: no tokenizer files (tokenizer.json, or vocab.json and merges.txt)")
    tok.no_truncation()
    tok.no_padding()
    return tok
