"""The benchmark run: which variants exist here, each measured in its own process, fidelity, one report dict.

Every variant (provider x precision x threads x thread pool) of every model is timed in a fresh worker
process (`bench.worker`), one after another, in the same run as the PyTorch eager baseline, so the ratios
compare like with like. Fidelity runs in this process on the demo held-out set.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.util
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROVIDERS = ("cpu", "cuda", "tensorrt", "openvino")
VERSIONED = ("clipedge", "onnxruntime", "onnxruntime-gpu", "onnxruntime-ep-openvino", "numpy", "torch", "transformers")
ORT_NAMES = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
# What each provider runs well; anything else is skipped with the reason unless asked for (--all-pairs).
NOT_FOR = {
    ("cpu", "fp16"): "fp16 has no fast kernels on the CPU provider (it runs, converted op by op)",
    ("cuda", "int8"): "dynamic int8 (DynamicQuantizeMatMul, QAttention) has CPU kernels only",
    ("tensorrt", "int8"): "dynamic int8 graphs are not TensorRT's int8 (it needs QDQ + calibration)",
    ("openvino", "int8"): "the CPU provider's dynamic int8 ops are not OpenVINO ops (runs as fallback)",
}


@dataclass
class Model:
    name: str
    bundle: Path
    checkpoint: Path | None  # Hugging Face folder for the PyTorch baseline (None: no baseline)
    note: str = ""
    random_weights: bool = False  # timings are real; held-out agreement would mean nothing


@dataclass
class Variant:
    model: str
    engine: str  # "pytorch-eager" or "onnxruntime"
    provider: str
    precision: str
    threads: int | None
    pool: str = "shared"  # ONNX Runtime thread pool (clipedge.threads.POOLS); CPU rows vary it
    iobinding: bool = False  # CUDA: input and output bound on the device
    skipped: str = ""
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        if self.engine == "pytorch-eager":
            return f"pytorch eager {self.provider} {self.precision}"
        return (
            f"ort {self.provider} {self.precision}"
            + ("" if self.pool == "shared" else f" {self.pool} pool")
            + (" iobinding" if self.iobinding else "")
        )


def available_providers() -> dict[str, str]:
    """provider -> "" when it can run here, else why not."""
    import onnxruntime as ort

    have = ort.get_available_providers()
    out = {"cpu": ""}
    for key, name in ORT_NAMES.items():
        out[key] = "" if name in have else f"{name} not in this onnxruntime ({', '.join(have)})"
    if importlib.util.find_spec("onnxruntime_ep_openvino") is None:
        out["openvino"] = "package onnxruntime-ep-openvino not installed"
    else:
        from .worker import openvino_providers

        try:
            openvino_providers()
            out["openvino"] = ""
        except Exception as e:
            out["openvino"] = str(e)
    return out


def plan(
    models: Sequence[Model],
    providers: Sequence[str],
    precisions: Sequence[str],
    threads: Sequence[int | None],
    pools: Sequence[str],
    all_pairs: bool = False,
    baseline: bool = True,
    avail: dict[str, str] | None = None,
) -> list[Variant]:
    """Every variant to measure, in run order (baseline first per model); impossible ones carry the reason.
    `avail`: available_providers(), when the caller has it already."""
    from clipedge.bundle import load_bundle

    avail = available_providers() if avail is None else avail
    torch_ok = importlib.util.find_spec("torch") is not None and importlib.util.find_spec("transformers") is not None
    out: list[Variant] = []
    for m in models:
        have = load_bundle(m.bundle, verify=False).manifest.precisions
        if baseline:
            eager = [Variant(m.name, "pytorch-eager", "cpu", "fp32", t) for t in threads]
            if {"cuda", "tensorrt"} & set(providers) and not avail["cuda"]:
                eager += [Variant(m.name, "pytorch-eager", "cuda", p, None) for p in ("fp32", "fp16")]
            for v in eager:
                if not torch_ok:
                    v.skipped = "torch / transformers not installed"
                elif m.checkpoint is None:
                    v.skipped = "no Hugging Face checkpoint for this bundle"
                out.append(v)
        for prov in providers:
            for p in precisions:
                for t in threads if prov in ("cpu", "openvino") else [None]:
                    options = [(pool, False) for pool in pools] if prov == "cpu" else [("shared", False)]
                    options += [("shared", True)] if prov == "cuda" else []
                    for pool, bound in options:
                        v = Variant(m.name, "onnxruntime", prov, p, t, pool, bound)
                        v.skipped = (
                            avail.get(prov, f"unknown provider {prov}")
                            or ("" if p in have else f"the bundle has no {p}")
                            or ("" if all_pairs else NOT_FOR.get((prov, p), ""))
                        )
                        out.append(v)
    return out


def run_worker(args: Sequence[str], timeout: float = 1800) -> tuple[dict[str, Any], float]:
    """Run `python -m bench.worker ARGS`; (its result, seconds from spawn to the result line).

    `clipedge.benchmark.run_worker` does the work: stderr to a file, stdout read in a thread, a worker stuck
    past `timeout` killed; a failure raises RuntimeError with the last line of the worker's stderr."""
    from clipedge.benchmark import run_worker as run

    result, seen = run([sys.executable, "-m", "bench.worker", *args], timeout, cwd=ROOT)["RESULT"]
    return result, seen


def measure(v: Variant, m: Model, opts: dict[str, Any], image: Path, log: Callable[[str], None]) -> None:
    """Time one variant, then its cold start, each in a fresh process; errors are recorded, not raised."""
    common = ["--threads", str(v.threads)] if v.threads else []
    src = ["--bundle", str(m.bundle), "--precision", v.precision, "--provider", v.provider]
    if v.engine == "pytorch-eager":
        src += ["--checkpoint", str(m.checkpoint), "--attention", opts["attention"]]
    src += ["--pool", v.pool]
    src += ["--iobinding"] if v.iobinding else []
    timing = [
        "--batches",
        ",".join(map(str, opts["batches"])),
        "--iters",
        str(opts["iters"]),
        "--min-seconds",
        str(opts["min_seconds"]),
        "--warmup",
        str(opts["warmup"]),
    ]
    log(f"{m.name}: {v.label}" + (f", {v.threads} threads" if v.threads else ""))
    try:
        v.result, _ = run_worker(["time", *src, *common, *timing])
    except Exception as e:
        v.skipped = f"failed: {e}"
        log(f"  {v.skipped}")
        return
    # cold start on the CPU, and for ONNX Runtime on CUDA (not per IO-binding variant)
    gpu_ort = (v.engine, v.provider, v.iobinding) == ("onnxruntime", "cuda", False)
    if opts["cold"] and (v.provider == "cpu" or gpu_ort):
        try:
            cold, seen = run_worker(["cold", *src, *common, "--image", str(image)])
            v.result["cold"] = {**cold, "process_start_to_result_s": round(seen, 3)}
        except Exception as e:  # the timings stand; the report shows the cold start as missing
            v.result["cold_error"] = str(e)
            log(f"  cold start failed: {e}")


def fidelity(m: Model, have: list[str], heldout: Path, provider: str, per_class: int | None) -> dict[str, Any]:
    """Accuracy, top-1 agreement and image-embedding cosine to fp32 on the held-out set (one provider),
    for the precisions `have` of the bundle."""
    from clipedge.evaluate import evaluate
    from clipedge.options import LoadOptions

    if provider == "cuda":
        have = [p for p in have if p != "int8"]
    options = LoadOptions(str(m.bundle), provider=provider)
    report = evaluate(options, heldout, have, limit_per_class=per_class).to_dict()
    report.pop("vision_seconds")
    return report


def bundle_summary(bundle: Path) -> dict[str, Any]:
    """The bundle's architecture, and per precision its size and what the export measured against PyTorch."""
    from clipedge.bundle import load_bundle

    man = load_bundle(bundle, verify=False).manifest
    precisions = {
        p: {
            "bytes": v.vision.bytes + v.text.bytes,
            "vision_bytes": v.vision.bytes,
            "parity_vs_pytorch": {
                prov: {k: fig[k] for k in ("image_cos_min", "text_cos_min", "top1_agreement") if k in fig}
                for prov, fig in v.parity.items()
            },
        }
        for p, v in man.precisions.items()
    }
    return {"architecture": asdict(man.architecture), "precisions": precisions}


def machine() -> dict[str, Any]:
    """CPU model and the instruction-set flags that decide the kernels (`clipedge.benchmark.machine`);
    versions of what ran."""
    from clipedge.benchmark import machine as cpu_and_platform

    info = cpu_and_platform()
    versions = {}
    for pkg in VERSIONED:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[pkg] = metadata.version(pkg)
    info["versions"] = versions
    import onnxruntime as ort

    info["onnxruntime_providers"] = ort.get_available_providers()
    gpu = _gpu_name()
    if gpu:
        info["gpu"] = gpu
    return info


def _gpu_name() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def ratios(variants: list[Variant]) -> None:
    """Add speed-up vs the same model's PyTorch eager fp32 baseline to every timed row: CPU rows against
    eager on the CPU with the same threads, GPU rows against eager fp32 on CUDA."""
    base = {
        (v.model, v.provider, v.threads): {r["batch"]: r for r in v.result.get("rows", [])}
        for v in variants
        if v.engine == "pytorch-eager" and v.precision == "fp32" and not v.skipped
    }
    for v in variants:
        device = "cuda" if v.provider in ("cuda", "tensorrt") else "cpu"
        for row in v.result.get("rows", []):
            row["img_per_s"] = round(row["batch"] * 1000 / row["p50_ms"], 2)
            ref = base.get((v.model, device, v.threads if device == "cpu" else None), {})
            r = ref.get(row["batch"])
            if r and row is not r:
                # same batch: eager p50 / this p50 is both the throughput ratio and the latency ratio
                row["speedup_vs_eager"] = round(r["p50_ms"] / row["p50_ms"], 2)


def run(
    models: Sequence[Model],
    providers: Sequence[str],
    precisions: Sequence[str],
    threads: Sequence[int | None],
    pools: Sequence[str],
    opts: dict[str, Any],
    heldout: Path | None,
    image: Path,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    started = time.time()
    avail = available_providers()
    summaries = {m.name: bundle_summary(m.bundle) for m in models}
    variants = plan(models, providers, precisions, threads, pools, opts["all_pairs"], opts["baseline"], avail)
    by_name = {m.name: m for m in models}
    for v in variants:
        if not v.skipped:
            measure(v, by_name[v.model], opts, image, log)
    ratios(variants)
    fid: dict[str, Any] = {}
    if heldout is not None:
        for m in (m for m in models if not m.random_weights):
            fid[m.name] = {}
            for prov in [p for p in providers if p in ("cpu", "cuda") and not avail.get(p)]:
                log(f"{m.name}: fidelity on {prov}")
                have = list(summaries[m.name]["precisions"])
                fid[m.name][prov] = fidelity(m, have, heldout, prov, opts.get("heldout_per_class"))
    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "duration_s": round(time.time() - started, 1),
        "machine": machine(),
        "options": dict(opts),
        "models": {
            m.name: {"bundle": str(m.bundle), "checkpoint": str(m.checkpoint or ""), "note": m.note} | summaries[m.name]
            for m in models
        },
        "variants": [asdict(v) | {"label": v.label} for v in variants],
        "fidelity": fid,
    }
