"""What `clipedge bench` measures: every engine, provider and precision this machine can run for one bundle,
measured where it will serve, with only the lean runtime installed (never torch).

Each combination runs in its own fresh process (`python -m clipedge.benchmark`, the worker below): cold start
to the first answer (process start, imports, load, one image classified), that process's peak RSS, then
warm latency percentiles and throughput per batch size of the full classification path (the classifier's
prepare, embed and score stages, on JPEG bytes) and of the vision tower alone (`embed` on preprocessed
pixels). Choices are made by `clipedge.selection` exactly as `ZeroShotClassifier.load` makes them; a combination it
refuses is listed with its reason. The timing, RSS and machine helpers are shared with the repository's
harness (bench/).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from .options import LoadOptions

DEFAULT_LABELS = ("a dog", "a cat", "a car", "a tree", "a house")
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "neon")
VERSIONED = ("clipedge", "onnxruntime", "onnxruntime-gpu", "openvino", "numpy", "pillow", "tokenizers")
ORT_PROVIDERS = ("cpu", "cuda", "tensorrt")


class BenchmarkError(ValueError):
    """The benchmark cannot run: no images in --images, or no combination could be measured."""


@dataclass(frozen=True)
class BenchSettings:
    """What to time: batch sizes, at least `seconds` and `min_runs` runs per cell after `warmup` runs;
    `images` a folder of images (None: generated 640x480 JPEGs); `labels` (None: the model's own labels,
    e.g. an edge pack's, else DEFAULT_LABELS)."""

    batch_sizes: tuple[int, ...] = (1, 8, 32)
    seconds: float = 2.0
    warmup: int = 2
    min_runs: int = 5
    images: str | None = None
    labels: tuple[str, ...] | None = None
    timeout: float = 1800.0  # seconds per combination's worker

    @classmethod
    def quick(cls, **kw: Any) -> BenchSettings:
        """Short cells for smoke tests: figures are rough."""
        return cls(**{"seconds": 0.05, "warmup": 1, "min_runs": 3, **kw})


# -- helpers shared with bench/ -------------------------------------------------------------------------------
def percentiles(ms: Sequence[float]) -> dict[str, float]:
    """Latency statistics.

    Args:
        ms: latencies in milliseconds.

    Returns:
        {"p50_ms", "p95_ms", "p99_ms", "mean_ms"}, rounded to the microsecond.
    """
    a = np.asarray(ms, dtype=np.float64)
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 3),
        "p95_ms": round(float(np.percentile(a, 95)), 3),
        "p99_ms": round(float(np.percentile(a, 99)), 3),
        "mean_ms": round(float(a.mean()), 3),
    }


def time_runs(fn: Callable[[], object], warmup: int = 3, iters: int = 20, min_seconds: float = 0.0) -> dict[str, float]:
    """Time `fn`: warm up, then many runs.

    Args:
        fn: what to time (its result is ignored).
        warmup: untimed calls first.
        iters: timed calls at least.
        min_seconds: and go on until this much time has passed.

    Returns:
        {"p50_ms", "p95_ms", "p99_ms", "mean_ms", "runs"}.
    """
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < iters or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return {**percentiles(times), "runs": len(times)}


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB: VmHWM (Linux keeps getrusage's ru_maxrss across exec, so a
    process started by a big parent would report the parent's peak), else ru_maxrss."""
    with contextlib.suppress(OSError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else the machine type."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def machine() -> dict[str, Any]:
    """Platform, Python, core count, CPU model and the instruction-set flags that decide the kernels."""
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version()}
    info["cpus"] = os.cpu_count()
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        info["cpu"] = fields.get("model name", platform.processor())
        flags = set((fields.get("flags") or fields.get("Features", "")).split())
        info["cpu_flags"] = [f for f in CPU_FLAGS if f in flags]
    except OSError:
        info["cpu"] = platform.processor()
    return info


def run_worker(
    argv: Sequence[str], timeout: float = 1800, cwd: str | Path | None = None, stdin: str = ""
) -> dict[str, tuple[Any, float]]:
    """Run a worker process that prints `TAG {json}` lines.

    Returns:
        {tag: (its JSON payload, seconds from spawn to that line)}.

    Raises:
        RuntimeError: the worker failed (the last line of its stderr) or ran past `timeout` seconds.
    """
    t0 = time.perf_counter()
    found: dict[str, tuple[Any, float]] = {}
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryFile("w+") as err:  # a file, not a pipe: a chatty child cannot fill it
        proc = subprocess.Popen(
            list(argv), cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, env=env
        )

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                tag, _, payload = line.partition(" ")
                if tag.isupper() and payload.startswith(("{", "[")):
                    found[tag] = (json.loads(payload), time.perf_counter() - t0)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            assert proc.stdin is not None
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.write(stdin)
                proc.stdin.close()
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"worker killed after {timeout:.0f} s") from None
        finally:
            reader.join(timeout=10)
        if proc.returncode != 0 or "RESULT" not in found:
            err.seek(0)
            tail = err.read().strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
            raise RuntimeError(tail[0])
    return found


# -- images -------------------------------------------------------------------------------------------------
def synthetic_images(n: int, size: tuple[int, int] = (640, 480), seed: int = 0) -> list[bytes]:
    """Random-ish photographs: smooth colour fields, shapes and sensor-like noise, so that decoding and
    resizing cost what a camera's image costs at that size.

    Args:
        n: how many.
        size: (width, height).
        seed: the first image's seed (image i uses seed + i).

    Returns:
        JPEG bytes (quality 90), one per image.
    """
    from PIL import Image, ImageDraw

    out = []
    for i in range(n):
        rng = np.random.default_rng(seed + i)
        base = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(size, Image.Resampling.BICUBIC)
        draw = ImageDraw.Draw(base)
        for _ in range(6):
            x, y = int(rng.integers(0, size[0])), int(rng.integers(0, size[1]))
            r = int(rng.integers(size[1] // 16, size[1] // 3))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x - r, y - r, x + r, y + r), fill=colour)
        noisy = np.asarray(base, dtype=np.float32) + rng.normal(0, 6, (size[1], size[0], 3))
        buf = io.BytesIO()
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def image_files(settings: BenchSettings, folder: Path) -> tuple[list[str], dict[str, Any]]:
    """The images' paths (generated into `folder` unless settings.images names a folder) and their description.

    Raises:
        BenchmarkError: settings.images is not a folder with images.
    """
    from .images import IMAGE_EXTENSIONS

    if settings.images:
        src = Path(settings.images)
        files = sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS) if src.is_dir() else []
        if not files:
            raise BenchmarkError(f"{src}: no such folder, or no images in it ({', '.join(IMAGE_EXTENSIONS)})")
        files = files[: max(settings.batch_sizes)]
        return [str(p) for p in files], {"source": str(src), "count": len(files)}
    paths = []
    for i, data in enumerate(synthetic_images(min(8, max(settings.batch_sizes)))):
        paths.append(str(folder / f"photo-{i}.jpg"))
        Path(paths[-1]).write_bytes(data)
    return paths, {"source": "generated", "count": len(paths), "size": "640x480", "format": "JPEG"}


# -- what can run -------------------------------------------------------------------------------------------
def combinations(load: LoadOptions) -> list[dict[str, Any]]:
    """Every engine x provider x precision to try for the bundle (load's "auto" fields mean all of them),
    each {"engine", "provider", "precision", "skipped"}; `skipped` is why `clipedge.selection` would refuse
    it here (checked without loading a model), or "".

    Raises:
        NoBundleError, BundleError: no bundle, or not one.
    """
    from .bundle import BundleError, load_bundle
    from .providers import ProviderError, resolve_providers
    from .selection import _openvino

    bundle = load_bundle(str(load.resolved().bundle), verify=False)
    precisions = list(bundle.manifest.precisions) if load.precision == "auto" else [load.precision]
    engines = ["onnxruntime", "openvino"] if load.engine == "auto" else [load.engine]
    out = []
    for engine in engines:
        if load.provider != "auto":
            providers = [load.provider]
        else:  # OpenVINO runs on the CPU (the provider of its Choice); ONNX Runtime on each provider
            providers = ["cpu"] if engine == "openvino" else list(ORT_PROVIDERS)
        for provider in providers:
            for precision in precisions:
                reason = ""
                try:
                    bundle.variant(precision)
                    if engine == "openvino":
                        _openvino(
                            bundle, load.replace(precision=precision, provider=provider, engine=engine, strict=True)
                        )
                    else:
                        resolve_providers(provider, strict=True)
                except (BundleError, ProviderError) as e:
                    reason = str(e)
                out.append({"engine": engine, "provider": provider, "precision": precision, "skipped": reason})
    return out


def label(row: dict[str, Any]) -> str:
    """How reports name a combination: "engine provider precision"."""
    return f"{row['engine']} {row['provider']} {row['precision']}"


# -- the driver ---------------------------------------------------------------------------------------------
def run_benchmark(
    load: LoadOptions, settings: BenchSettings | None = None, log: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """Measure every combination `combinations(load)` allows, each in a fresh worker process.

    Args:
        load: the bundle and how to load it (threads, thread pool, verification); its engine, provider and
            precision select combinations ("auto": all).
        settings: what to time (default BenchSettings()).
        log: progress lines.

    Returns:
        The report: {"date", "machine", "versions", "onnxruntime_providers", "bundle", "settings", "rows",
        "skipped", "torch_imported"}; each row {"engine", "provider", "precision", "default",
        "providers_in_effect", "cold_start_s", "load_s", "first_answer_s", "rss_first_answer_mb",
        "peak_rss_mb", "labels", "classify": [...], "tower": [...], "torch_imported"}, one timing per batch
        size {"batch", "p50_ms", "p95_ms", "p99_ms", "mean_ms", "runs", "img_per_s"}.

    Raises:
        NoBundleError, BundleError: no bundle, or not one.
        BenchmarkError: no images in settings.images, or nothing could be measured.
    """
    import onnxruntime as ort

    from .bundle import load_bundle

    settings = settings or BenchSettings()
    load = load.resolved()
    bundle = load_bundle(str(load.bundle), verify=False)
    plan = combinations(load)
    rows, skipped = [], [c for c in plan if c["skipped"]]
    with tempfile.TemporaryDirectory(prefix="clipedge-bench-") as tmp:
        images, described = image_files(settings, Path(tmp))

        def worker(opts: LoadOptions, timed: bool) -> dict[str, Any]:
            job = {"load": asdict(opts), "images": images, "settings": asdict(settings), "timed": timed}
            cmd = [sys.executable, "-m", "clipedge.benchmark"]
            found = run_worker(cmd, settings.timeout, stdin=json.dumps(job))
            return {**found["RESULT"][0], "cold_start_s": round(found["FIRST"][1], 3)}

        default = None
        with contextlib.suppress(RuntimeError):  # which combination plain `load()` picks here
            default = worker(load, timed=False)
        for c in (c for c in plan if not c["skipped"]):
            log(f"measuring {label(c)}")
            opts = replace(load, engine=c["engine"], provider=c["provider"], precision=c["precision"], strict=True)
            try:
                result = worker(opts, timed=True)
            except RuntimeError as e:
                skipped.append({**c, "skipped": str(e)})
                log(f"  not measured: {e}")
                continue
            same = ("engine", "precision", "providers_in_effect")
            is_default = default is not None and all(default[k] == result[k] for k in same)
            rows.append({k: c[k] for k in ("engine", "provider", "precision")} | {"default": is_default, **result})
    if not rows:
        reasons = "; ".join(f"{label(c)}: {c['skipped']}" for c in skipped[:3])
        raise BenchmarkError(f"no combination could be measured ({reasons})")
    versions = {}
    for pkg in VERSIONED:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[pkg] = metadata.version(pkg)
    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions,
        "onnxruntime_providers": ort.get_available_providers(),
        "bundle": {
            "path": str(load.bundle),
            "hash": bundle.bundle_hash,
            "precisions": list(bundle.manifest.precisions),
        },
        "settings": asdict(settings) | {"images": described, "load": asdict(load)},
        "rows": rows,
        "skipped": [{k: c[k] for k in ("engine", "provider", "precision", "skipped")} for c in skipped],
        "torch_imported": any(r["torch_imported"] for r in rows),
    }


# -- the worker: one combination in a fresh process ---------------------------------------------------------
def _worker(job: dict[str, Any]) -> None:
    from .classifier import ZeroShotClassifier

    t0 = time.perf_counter()
    settings = BenchSettings(**{**job["settings"], "batch_sizes": tuple(job["settings"]["batch_sizes"])})
    clf = ZeroShotClassifier.load(LoadOptions(**job["load"]))
    loaded = time.perf_counter()
    names = settings.labels or (None if clf.fixed_labels is not None else DEFAULT_LABELS)  # a pack: its own
    labels = clf.labels(names)
    clf.classify([job["images"][0]], labels)
    first = time.perf_counter()
    result: dict[str, Any] = {
        "engine": clf.encoder.choice.engine,
        "precision": clf.precision,
        "providers_in_effect": clf.encoder.providers,
        "load_s": round(loaded - t0, 3),
        "first_answer_s": round(first - t0, 3),
        "rss_first_answer_mb": peak_rss_mb(),
        "labels": list(labels.labels),
    }
    print("FIRST {}", flush=True)
    if job["timed"]:
        data = [Path(p).read_bytes() for p in job["images"]]
        for path in ("classify", "tower"):
            result[path] = []
            for b in settings.batch_sizes:
                batch = [data[i % len(data)] for i in range(b)]
                if path == "classify":  # the whole path: prepare (decode, preprocess), embed, score, format

                    def fn(batch=batch, b=b):
                        return clf.classify(batch, labels, batch_size=b)
                else:
                    pixels = np.stack([clf.prepare(x) for x in batch])

                    def fn(pixels=pixels, b=b):
                        return clf.embed(pixels, b)

                cell = time_runs(fn, settings.warmup, settings.min_runs, settings.seconds)
                result[path].append({"batch": b, **cell, "img_per_s": round(b * 1000 / cell["p50_ms"], 2)})
    result["peak_rss_mb"] = peak_rss_mb()
    result["torch_imported"] = "torch" in sys.modules
    print("RESULT " + json.dumps(result), flush=True)


def main() -> int:
    """Worker entry (`python -m clipedge.benchmark`, a job as JSON on stdin); errors are one line on stderr."""
    job = json.loads(sys.stdin.read())
    try:
        _worker(job)
    except Exception as e:
        lines = str(e).strip().splitlines() or [""]
        print(f"{type(e).__name__}: {lines[0]}".rstrip(": "), file=sys.stderr)
        return 1
    return 0


__all__ = [
    "BenchSettings",
    "BenchmarkError",
    "combinations",
    "cpu_model",
    "machine",
    "peak_rss_mb",
    "percentiles",
    "run_benchmark",
    "run_worker",
    "synthetic_images",
    "time_runs",
]

if __name__ == "__main__":
    sys.exit(main())
