"""`clipedge export SOURCE -o DIR`: a CLIP checkpoint becomes a validated bundle, written atomically.

Everything is built in a hidden temporary folder beside DIR and renamed into place only after every
variant passed validation: a failed, crashed or interrupted export never leaves a half bundle at DIR.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from clipedge.bundle import (
    DEFAULT_PRECISIONS,
    FORMAT_VERSION,
    PRECISIONS,
    Architecture,
    Manifest,
    Source,
    TokenizerSpec,
    TowerIO,
    Variant,
    file_entry,
    write_manifest,
)

from . import precisions as prec
from . import source as src
from .clip_bpe import BOS, EOS
from .errors import ExportError
from .towers import TEXT, VISION, TextTower, VisionTower, export_tower
from .validate import THRESHOLDS, check

DEFAULT_OPSET = 17


def parse_precisions(text: str | Sequence[str]) -> list[str]:
    items = [p.strip().lower() for p in (text.split(",") if isinstance(text, str) else text) if p.strip()]
    if not items:
        raise ExportError("no precision given (choose from fp32, int8, fp16)")
    unknown = [p for p in items if p not in PRECISIONS]
    if unknown:
        raise ExportError(f"unknown precision {', '.join(unknown)} (choose from {', '.join(PRECISIONS)})")
    return [p for p in PRECISIONS if p in items]


def prepare_output(out_dir: Path) -> Path:
    """Check DIR can be created and is empty; returns the temporary build folder beside it."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ExportError(f"{out_dir}: output folder exists and is not empty (choose a new folder or remove it)")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the bundle gets normal folder permissions
        return tmp
    except OSError as e:
        raise ExportError(f"{out_dir}: cannot write the output folder ({e.strerror or e})") from None


def tool_versions() -> dict[str, str]:
    """Versions of what made the bundle (the imported modules, which is what ran)."""
    import onnx
    import onnxruntime
    import torch
    import transformers

    versions = {"python": platform.python_version()}
    with contextlib.suppress(metadata.PackageNotFoundError):
        versions["clipedge"] = metadata.version("clipedge")
    for module in (torch, transformers, onnx, onnxruntime):
        versions[module.__name__] = module.__version__
    return versions


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
    return TokenizerSpec("tokenizer.json", "", context_length, bos, eos, pad)


def export_bundle(
    source: str,
    out_dir: str | Path,
    precisions: str | Sequence[str] = DEFAULT_PRECISIONS,
    opset: int = DEFAULT_OPSET,
    revision: str | None = None,
    log: Callable[[str], None] = print,
    calibration: str | Path | None = None,
) -> Manifest:
    """Export `source` (hub id or folder) to a bundle at `out_dir`; raises ExportError with a one-line reason.

    `calibration`: a folder of images for the int8-static variant (default: the set shipped with the
    export extra, clipedge_export/data/calibration).
    """
    wanted = parse_precisions(precisions)
    cal_images, cal_record = None, None
    if "int8-static" in wanted:  # a bad calibration folder is refused before any work
        from .calibration import calibration_images

        cal_images, cal_record = calibration_images(calibration)
    if not 14 <= opset <= 21:
        raise ExportError(f"opset {opset} is not supported (use 14..21; default {DEFAULT_OPSET})")
    out = Path(out_dir).expanduser().absolute()
    ckpt = src.resolve(source, revision)  # before creating anything
    config = src.load_config(ckpt)
    tmp = prepare_output(out)
    try:
        manifest = _build(ckpt, config, tmp, out.name, wanted, opset, log, (cal_images, cal_record))
        shutil.rmtree(tmp / "work", ignore_errors=True)
        if out.exists():
            out.rmdir()  # empty, checked above
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


@dataclasses.dataclass(frozen=True)
class Described:
    """What the manifest says about a checkpoint besides its files."""

    preprocess: Any
    tokenizer: TokenizerSpec
    architecture: Architecture
    logit_scale: float


@dataclasses.dataclass(frozen=True)
class Graphs:
    """The unfused export (int8-static and fp32-unfused start from these), the fused fp32 towers (fp16
    starts from these), the same with SkipLayerNorm split (fp32 and int8 start from these), and the
    fusions the optimizer applied."""

    raw: dict[str, Path]
    fused: dict[str, Path]
    split: dict[str, Path]
    fusions: dict[str, Any]


def _build(ckpt, config, tmp: Path, name: str, wanted: list[str], opset: int, log, calibration) -> Manifest:
    """The steps of an export, in order; each writes into `tmp`."""
    t_start = time.perf_counter()
    model = src.load_model(ckpt, config)
    described = _describe(ckpt, config, model, tmp)
    graphs = _export_graphs(model, config, described, tmp / "work", opset, log)
    inputs = _calibration_inputs(calibration[0], described, tmp) if calibration[0] is not None else None
    files = _build_variants(graphs, wanted, tmp, log, inputs)
    variants = _validate(model, described, files, graphs, tmp, log)
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        name=name,
        source=Source(id=ckpt.id, kind=ckpt.kind, revision=ckpt.revision, weights=ckpt.weight_entries()),
        architecture=described.architecture,
        preprocess=described.preprocess,
        tokenizer=described.tokenizer,
        logit_scale=described.logit_scale,
        embeddings_normalized=False,
        towers={"vision": TowerIO(VISION.input, VISION.output), "text": TowerIO(TEXT.input, TEXT.output)},
        precisions=variants,
        tools=tool_versions(),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        calibration=calibration[1] or {},
    )
    write_manifest(tmp, manifest)
    log(f"export took {time.perf_counter() - t_start:.1f} s")
    return manifest


def _describe(ckpt, config, model, tmp: Path) -> Described:
    """Preprocessing, tokenizer (written to tmp/tokenizer.json), architecture figures and logit scale."""
    vcfg, tcfg = config.vision_config, config.text_config
    preprocess = src.load_preprocess(ckpt, vcfg.image_size)
    if preprocess.crop_size != (vcfg.image_size, vcfg.image_size):
        raise ExportError(
            f"{ckpt.folder}: preprocessor crop {preprocess.crop_size} does not match the model's image_size "
            f"{vcfg.image_size}"
        )
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
    return Described(preprocess, spec, arch, float(model.logit_scale.detach().exp().item()))


def _export_graphs(model, config, described: Described, work: Path, opset: int, log) -> Graphs:
    """torch.onnx.export of each tower, ONNX Runtime's transformer fusions, then the SkipLayerNorm split."""
    import torch

    vcfg, tcfg, spec = config.vision_config, config.text_config, described.tokenizer
    work.mkdir()
    log(f"exporting towers (opset {opset})")
    raw = {"vision": work / "vision.raw.onnx", "text": work / "text.raw.onnx"}
    h = vcfg.image_size
    export_tower(VisionTower(model), VISION, torch.zeros(2, 3, h, h), raw["vision"], opset)
    example_ids = torch.tensor([[spec.bos_id, 320, 1125, spec.eos_id, spec.pad_id]] * 2)
    example_ids = example_ids.clamp(max=tcfg.vocab_size - 1)
    export_tower(TextTower(model, spec.eos_id), TEXT, example_ids, raw["text"], opset)

    log("optimising graphs (attention, SkipLayerNorm, QuickGelu fusion)")
    fused = {"vision": work / "vision.fp32.onnx", "text": work / "text.fp32.onnx"}
    fusions = {
        "vision": prec.optimize(raw["vision"], fused["vision"], vcfg.num_attention_heads, vcfg.hidden_size),
        "text": prec.optimize(raw["text"], fused["text"], tcfg.num_attention_heads, tcfg.hidden_size),
    }
    split = {t: work / f"{t}.fp32.split.onnx" for t in ("vision", "text")}
    for t in ("vision", "text"):
        prec.split_skip_layernorm(fused[t], split[t])
    return Graphs(raw, fused, split, fusions)


def _calibration_inputs(images, described: Described, tmp: Path) -> dict[str, list]:
    from clipedge.tokenizer import ClipTokenizer

    from . import calibration as cal

    tokenizer = ClipTokenizer(tmp / "tokenizer.json", described.tokenizer)
    return {"vision": cal.vision_inputs(images, described.preprocess), "text": cal.text_inputs(tokenizer.encode)}


def _build_variants(graphs: Graphs, wanted: list[str], tmp: Path, log, inputs=None) -> dict[str, dict[str, Path]]:
    """Each wanted precision's two tower files, by its recipe (see clipedge_export.precisions)."""
    files: dict[str, dict[str, Path]] = {}
    for p in wanted:
        files[p] = {t: tmp / f"{t}.{p}.onnx" for t in ("vision", "text")}
        for t in ("vision", "text"):
            if p == "fp32":
                shutil.copyfile(graphs.split[t], files[p][t])
            elif p == "int8":
                prec.quantize_int8(graphs.split[t], files[p][t])
            elif p == "int8-static":
                prec.quantize_static_qdq(graphs.raw[t], files[p][t], inputs[t], symmetric=t == "vision")  # type: ignore[index]
            elif p == "fp32-unfused":
                shutil.copyfile(graphs.raw[t], files[p][t])
            else:
                prec.convert_fp16(graphs.fused[t], files[p][t])
        log(f"built {p}")
    return files


def _validate(model, described: Described, files, graphs: Graphs, tmp: Path, log) -> dict[str, Variant]:
    """Every variant against PyTorch on every provider that can run it; the figures go into the manifest
    and a variant below its threshold fails the export."""
    from clipedge.tokenizer import ClipTokenizer

    from . import validate as val

    log("validating against PyTorch")
    tokenizer = ClipTokenizer(tmp / "tokenizer.json", described.tokenizer)
    ref = _reference(model, described.preprocess, tokenizer, described.logit_scale)
    variants: dict[str, Variant] = {}
    for p, paths in files.items():
        providers = _validation_providers(p)
        figures: dict[str, Any] = {}
        for provider in providers:
            img, txt = _run_onnx(paths, ref, provider, p)
            figures[provider] = val.parity(ref, img, txt)
            problem = check(p, figures[provider])
            if problem:
                raise ExportError(f"validation failed on {provider}: {problem}; no bundle written")
        main = figures[providers[0]]
        log(
            f"  {p}: image cos {main['image_cos_min']:.6f}  text cos {main['text_cos_min']:.6f}  "
            f"probs max diff {main['probs_max_abs_diff']:.2e}  top-1 agreement {main['top1_agreement']:.3f}"
        )
        recipe = {
            "fp32": prec.FP32_RECIPE,
            "int8": prec.INT8_RECIPE,
            "fp16": prec.FP16_RECIPE,
            "int8-static": prec.INT8_STATIC_RECIPE,
            "fp32-unfused": prec.FP32_UNFUSED_RECIPE,
        }[p]
        variants[p] = Variant(
            vision=file_entry(tmp, paths["vision"].name),
            text=file_entry(tmp, paths["text"].name),
            recipe=dict(recipe),
            fusions={t: prec.count_ops(paths[t]) for t in ("vision", "text")} | {"applied": graphs.fusions},
            validated_on=tuple(providers),
            parity=figures,
            thresholds={"min_embedding_cosine": THRESHOLDS[p]},
        )
    return variants


def _validation_providers(precision: str) -> list[str]:
    """ONNX Runtime's CPU always; CUDA too when onnxruntime offers it (not for int8: its dynamic ops are
    CPU kernels); OpenVINO too for the standard-operator variants when the openvino extra is installed."""
    import onnxruntime as ort
    from clipedge import openvino_engine as ove

    providers = ["CPUExecutionProvider"]
    if precision != "int8" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.append("CUDAExecutionProvider")
    if precision in ove.ENGINE_PRECISIONS and ove.available():
        providers.append(ove.PROVIDER)
    return providers


def _reference(model, preprocess, tokenizer, logit_scale: float):
    import torch
    from clipedge.preprocess import preprocess_batch

    from .towers import reference_image_embeds, reference_text_embeds
    from .validate import PROMPTS, Reference, validation_images

    pixel_values = preprocess_batch(validation_images(), preprocess)
    input_ids = tokenizer.encode(PROMPTS)
    return Reference(
        pixel_values=pixel_values,
        input_ids=input_ids,
        image_embeds=reference_image_embeds(model, torch.from_numpy(pixel_values)).numpy(),
        text_embeds=reference_text_embeds(model, torch.from_numpy(input_ids)).numpy(),
        logit_scale=logit_scale,
    )


def _run_onnx(files: dict[str, Path], ref, provider: str, precision: str = "fp32"):
    from clipedge import openvino_engine as ove
    from clipedge.options import LoadOptions
    from clipedge.providers import create_session

    if provider == ove.PROVIDER:
        vision, text = (ove.OpenVinoTower(files[t], precision=precision) for t in ("vision", "text"))
    else:
        provider_key = "cuda" if provider == "CUDAExecutionProvider" else "cpu"
        vision = create_session(files["vision"], LoadOptions(provider=provider_key))
        text = create_session(files["text"], LoadOptions(provider=provider_key))
    img = vision.run(None, {VISION.input: ref.pixel_values})[0]
    txt = text.run(None, {TEXT.input: ref.input_ids})[0]
    return img, txt
