"""`clipedge export SOURCE -o DIR`: a CLIP checkpoint becomes a validated bundle, written atomically.

Everything is built in a hidden temporary folder beside DIR and renamed into place only after every
variant passed validation: a failed, crashed or interrupted export never leaves a half bundle at DIR.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
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
    Manifest,
    Source,
    TowerIO,
    Variant,
    file_entry,
    write_manifest,
)

from . import families
from . import precisions as prec
from . import source as src
from .errors import ExportError
from .families import Described
from .towers import TEXT, TEXT_MASKED, VISION, export_tower
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
    family = families.for_model_type(src.model_type(ckpt), str(ckpt.folder / "config.json"))
    tmp = prepare_output(out)
    try:
        manifest = _build(family, ckpt, tmp, out.name, wanted, opset, log, (cal_images, cal_record))
        shutil.rmtree(tmp / "work", ignore_errors=True)
        if out.exists():
            out.rmdir()  # empty, checked above
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


@dataclasses.dataclass(frozen=True)
class Graphs:
    """The unfused export (int8-static and fp32-unfused start from these), the fused fp32 towers (fp16
    starts from these), the same with SkipLayerNorm split (fp32 and int8 start from these), and the
    fusions the optimizer applied."""

    raw: dict[str, Path]
    fused: dict[str, Path]
    split: dict[str, Path]
    fusions: dict[str, Any]


def _build(family, ckpt, tmp: Path, name: str, wanted: list[str], opset: int, log, calibration) -> Manifest:
    """The steps of an export, in order; each writes into `tmp`. `family`: the module of
    `clipedge_export.families` that knows the checkpoint's kind."""
    t_start = time.perf_counter()
    config, model = family.load_model(ckpt)
    described = family.describe(ckpt, config, model, tmp)
    if described.preprocess.crop_size != (described.architecture.image_size,) * 2:
        raise ExportError(
            f"{ckpt.folder}: the image processor's size {described.preprocess.crop_size} does not match the model's "
            f"image_size {described.architecture.image_size}"
        )
    graphs = _export_graphs(family, model, config, described, tmp / "work", opset, log)
    inputs = _calibration_inputs(calibration[0], described, tmp) if calibration[0] is not None else None
    files = _build_variants(graphs, wanted, tmp, log, inputs)
    variants = _validate(family, model, described, files, graphs, tmp, log)
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        name=name,
        source=Source(id=ckpt.id, kind=ckpt.kind, revision=ckpt.revision, weights=ckpt.weight_entries()),
        architecture=described.architecture,
        preprocess=described.preprocess,
        tokenizer=described.tokenizer,
        logit_scale=described.logit_scale,
        embeddings_normalized=False,
        towers={"vision": TowerIO(VISION.input, VISION.output), "text": described.text_io},
        precisions=variants,
        tools=tool_versions(),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        calibration=calibration[1] or {},
        family=described.family,
        scoring=described.scoring,
    )
    write_manifest(tmp, manifest)
    log(f"export took {time.perf_counter() - t_start:.1f} s")
    return manifest


def _export_graphs(family, model, config, described: Described, work: Path, opset: int, log) -> Graphs:
    """torch.onnx.export of each tower, ONNX Runtime's transformer fusions, then the SkipLayerNorm split."""
    import torch

    work.mkdir()
    log(f"exporting towers (opset {opset})")
    raw = {"vision": work / "vision.raw.onnx", "text": work / "text.raw.onnx"}
    h = described.architecture.image_size
    vision, text = family.towers(model, described)
    export_tower(vision, VISION, torch.zeros(2, 3, h, h), raw["vision"], opset)
    mask = described.text_io.attention_mask
    text_spec = dataclasses.replace(TEXT_MASKED, extra_inputs=(mask,), dynamic_axes=masked_axes(mask)) if mask else TEXT
    export_tower(text, text_spec, family.text_example(described), raw["text"], opset)
    if hasattr(family, "finish_graphs"):
        family.finish_graphs(raw, described)

    log("optimising graphs (attention, SkipLayerNorm, Gelu fusion)")
    fused = {"vision": work / "vision.fp32.onnx", "text": work / "text.fp32.onnx"}
    shapes = family.fusion(config)
    fusions = {t: prec.optimize(raw[t], fused[t], *shapes[t]) for t in ("vision", "text")}
    split = {t: work / f"{t}.fp32.split.onnx" for t in ("vision", "text")}
    for t in ("vision", "text"):
        prec.split_skip_layernorm(fused[t], split[t])
    return Graphs(raw, fused, split, fusions)


def masked_axes(mask: str) -> dict[str, dict[int, str]]:
    return {"input_ids": {0: "batch", 1: "sequence"}, mask: {0: "batch", 1: "sequence"}, "text_embeds": {0: "batch"}}


def _calibration_inputs(images, described: Described, tmp: Path) -> dict[str, list]:
    from clipedge.tokenizer import ClipTokenizer

    from . import calibration as cal

    tokenizer = ClipTokenizer(tmp / "tokenizer.json", described.tokenizer)
    text = cal.text_inputs(tokenizer.tokens, described.text_io.attention_mask)
    return {"vision": [{VISION.input: x} for x in cal.vision_inputs(images, described.preprocess)], "text": text}


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


def _validate(family, model, described: Described, files, graphs: Graphs, tmp: Path, log) -> dict[str, Variant]:
    """Every variant against PyTorch on every provider that can run it; the figures go into the manifest
    and a variant below its threshold fails the export."""
    from clipedge.tokenizer import ClipTokenizer

    from . import validate as val

    log("validating against PyTorch")
    tokenizer = ClipTokenizer(tmp / "tokenizer.json", described.tokenizer)
    ref = _reference(family, model, described, tokenizer)
    variants: dict[str, Variant] = {}
    for p, paths in files.items():
        providers = _validation_providers(p)
        figures: dict[str, Any] = {}
        for provider in providers:
            img, txt = _run_onnx(paths, ref, provider, described.text_io, p)
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


def _reference(family, model, described: Described, tokenizer):
    import torch
    from clipedge.preprocess import preprocess_batch

    from .validate import PROMPTS, Reference, validation_images

    pixel_values = preprocess_batch(validation_images(), described.preprocess)
    tokens = tokenizer.tokens(PROMPTS)
    mask = tokens.mask()
    given = torch.from_numpy(mask) if described.text_io.attention_mask else None
    image, text = family.reference(model, torch.from_numpy(pixel_values), torch.from_numpy(tokens.ids), given)
    return Reference(
        pixel_values=pixel_values,
        input_ids=tokens.ids,
        image_embeds=image.detach().numpy(),
        text_embeds=text.detach().numpy(),
        logit_scale=described.logit_scale,
        attention_mask=mask,
        scoring=described.scoring,
    )


def _run_onnx(files: dict[str, Path], ref, provider: str, text_io: TowerIO, precision: str = "fp32"):
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
    feeds = {text_io.input: ref.input_ids}
    if text_io.attention_mask:
        feeds[text_io.attention_mask] = ref.attention_mask
    txt = text.run(None, feeds)[0]
    return img, txt
