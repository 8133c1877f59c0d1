"""The manifest of the bundle contract (DESIGN.md): a tree of frozen dataclasses validated on load, unknown
keys ignored, a missing key an error that names it; file entries with their sha256, and the helpers that
hash and name files. The ground floor: it imports nothing of clipedge.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# 2: the int8-static and fp32-unfused precisions, the calibration record; 3: the family description (scoring,
# resize mode, text padding and attention mask): older bundles read as CLIP's
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
FAMILIES = ("clip", "siglip", "chinese-clip", "altclip", "metaclip-2")
SCORING_KINDS = ("softmax", "sigmoid")
RESIZE_MODES = ("shortest_edge", "squash")
PADDINGS = ("longest", "max_length")
MANIFEST = "manifest.json"
# fp32, int8 (dynamic) and fp16 are ONNX Runtime's fused graphs (contrib ops); int8-static (QDQ) and
# fp32-unfused use standard ONNX operators only, for any engine (OpenVINO, TensorRT's int8)
PRECISIONS = ("fp32", "int8", "fp16", "int8-static", "fp32-unfused")
DEFAULT_PRECISIONS = ("fp32", "int8", "fp16", "int8-static")
TOWERS = ("vision", "text")


class BundleError(ValueError):
    """A bundle that cannot be used: missing, malformed, or not matching its manifest."""


@dataclass(frozen=True)
class FileEntry:
    file: str
    sha256: str
    bytes: int


@dataclass(frozen=True)
class Source:
    id: str
    kind: str  # "hub" | "local"
    revision: str | None = None
    weights: tuple[FileEntry, ...] = ()


@dataclass(frozen=True)
class Architecture:
    embed_dim: int
    image_size: int
    patch_size: int
    context_length: int
    vocab_size: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    text_width: int
    text_layers: int
    text_heads: int


@dataclass(frozen=True)
class Preprocess:
    """What the checkpoint's image processor does with its preprocessor_config.json: CLIP's resizes the shortest
    edge then crops the centre; SigLIP's and Chinese-CLIP's resize to the crop size ("squash": the aspect
    ratio is not kept) and crop nothing."""

    resize_shortest_edge: int
    resample: str  # "bicubic" | "bilinear" | "nearest" | "lanczos" | "box" | "hamming"
    crop_size: tuple[int, int]  # (height, width): the tower's input size
    do_center_crop: bool
    rescale_factor: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize_mode: str = "shortest_edge"  # one of RESIZE_MODES


@dataclass(frozen=True)
class TokenizerSpec:
    """The text side: tokenizer.json (its normalizer does what the family's tokenizer does to text first, e.g.
    SigLIP's lower-casing and punctuation removal), how a batch is padded, and whether the text tower takes an
    attention mask. `bos_id` is -1 where the tokenizer adds no start token (SigLIP)."""

    file: str
    sha256: str
    context_length: int
    bos_id: int
    eos_id: int
    pad_id: int
    padding: str = "longest"  # "longest" (CLIP: the batch's longest text) or "max_length" (always context_length)
    attention_mask: bool = False  # the text tower takes `attention_mask` (BERT, XLM-R); else padding is inert
    pooling: str = "first_eos"  # where the text tower pools (inside the graph): first_eos | last | cls
    normalization: str = ""  # what tokenizer.json does to text before tokenising, in words (for readers)


@dataclass(frozen=True)
class Scoring:
    """How label probabilities come from cosine similarities: "softmax" over the labels of logit_scale x cosine
    (CLIP), or "sigmoid" of logit_scale x cosine + logit_bias for each label on its own (SigLIP)."""

    kind: str = "softmax"  # one of SCORING_KINDS
    logit_bias: float = 0.0


@dataclass(frozen=True)
class TowerIO:
    input: str
    output: str
    attention_mask: str | None = None  # the text tower's mask input, when it takes one


@dataclass(frozen=True)
class Variant:
    """One precision: its two tower files, how it was made, and the parity figures measured at export."""

    vision: FileEntry
    text: FileEntry | None = None  # None only in an edge pack (clipedge.bundle.load_pack): vision tower only
    recipe: dict[str, Any] = field(default_factory=dict)
    fusions: dict[str, Any] = field(default_factory=dict)
    validated_on: tuple[str, ...] = ()
    parity: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    format_version: int
    name: str
    source: Source
    architecture: Architecture
    preprocess: Preprocess
    tokenizer: TokenizerSpec
    logit_scale: float
    embeddings_normalized: bool
    towers: dict[str, TowerIO]
    precisions: dict[str, Variant]
    tools: dict[str, str] = field(default_factory=dict)
    created: str = ""
    calibration: dict[str, Any] = field(default_factory=dict)  # the static int8 variant's calibration set
    family: str = "clip"  # one of FAMILIES (what made it; the runtime reads only the fields below)
    scoring: Scoring = field(default_factory=Scoring)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        manifest = _build(cls, data, "")
        if manifest.format_version not in READABLE_VERSIONS:
            raise BundleError(
                f"manifest.json: format_version {manifest.format_version} is not supported "
                f"(this clipedge reads versions {', '.join(map(str, READABLE_VERSIONS))}; upgrade clipedge)"
            )
        for name in manifest.precisions:
            if name not in PRECISIONS:
                raise BundleError(f"manifest.json: unknown precision {name!r} (known: {', '.join(PRECISIONS)})")
        for where, value, known in (
            ("scoring.kind", manifest.scoring.kind, SCORING_KINDS),
            ("preprocess.resize_mode", manifest.preprocess.resize_mode, RESIZE_MODES),
            ("tokenizer.padding", manifest.tokenizer.padding, PADDINGS),
        ):
            if value not in known:
                raise BundleError(
                    f"manifest.json: {where} {value!r} is not one this clipedge knows ({', '.join(known)}; upgrade "
                    "clipedge)"
                )
        return manifest


def _build(tp: Any, value: Any, where: str) -> Any:
    """Build `tp` from JSON data; unknown keys are ignored, missing ones name their path."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise BundleError(f"manifest.json: {where or 'top level'} must be an object")
        hints = typing.get_type_hints(tp)
        kwargs = {}
        for f in dataclasses.fields(tp):
            path = f"{where}.{f.name}" if where else f.name
            if f.name in value:
                kwargs[f.name] = _build(hints[f.name], value[f.name], path)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise BundleError(f"manifest.json: missing key {path!r}")
        build: Any = tp  # a dataclass type (mypy narrows is_dataclass to instance-or-type)
        return build(**kwargs)
    if origin is dict:
        _, vt = typing.get_args(tp)
        if not isinstance(value, dict):
            raise BundleError(f"manifest.json: {where} must be an object")
        return {k: _build(vt, v, f"{where}.{k}") for k, v in value.items()}
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise BundleError(f"manifest.json: {where} must be a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_build(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise BundleError(f"manifest.json: {where} must have {len(args)} items")
        return tuple(_build(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _build(inner[0], value, where)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool) and type(value) is tp:
        return value
    raise BundleError(f"manifest.json: {where} must be {getattr(tp, '__name__', tp)}, got {value!r}")


def plain_file_name(name: str, where: str) -> str:
    """`name` if it is a plain file name inside the folder (no separator, no "..", not absolute).

    Raises:
        BundleError: a name that could point outside the folder.
    """
    if not name or "/" in name or "\\" in name or name in (".", "..") or Path(name).is_absolute():
        raise BundleError(f"{where}: file name {name!r} must be a plain name inside the folder")
    return name


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entry(folder: Path, name: str) -> FileEntry:
    path = folder / name
    return FileEntry(file=name, sha256=sha256_file(path), bytes=path.stat().st_size)


def check_file_names(manifest: Manifest, where: str) -> None:
    """Every file a manifest names is a plain name inside its folder (BundleError otherwise)."""
    plain_file_name(manifest.tokenizer.file, where)
    for variant in manifest.precisions.values():
        for entry in (variant.vision, variant.text):
            if entry is not None:
                plain_file_name(entry.file, where)


def write_manifest(folder: Path, manifest: Manifest) -> None:
    (folder / MANIFEST).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n", encoding="utf-8")
