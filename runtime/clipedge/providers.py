"""Execution providers are chosen here and nowhere else.

"auto": CUDA when onnxruntime offers it and a session really runs on it, else CPU. "cpu", "cuda", or an
explicit ONNX Runtime provider list. After creating a session we read `get_providers()`: ONNX Runtime
silently falls back to CPU when CUDA cannot start, so a requested provider that is not in effect is an
error (or, with strict=False, a loud warning).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnxruntime as ort

log = logging.getLogger("clipedge")

ALIASES = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
ProviderSpec = str | Sequence[str | tuple[str, dict[str, Any]]]


class ProviderError(RuntimeError):
    """A requested execution provider is not available or not in effect."""


class ModelLoadError(RuntimeError):
    """ONNX Runtime refused a model file (damaged, external data outside the bundle, unsupported ops)."""


def _open(path: str | Path, threads: int | None, pool: str, providers: list) -> ort.InferenceSession:
    with _pool_lock:
        options = session_options(threads, pool)
        try:
            return ort.InferenceSession(str(path), options, providers=providers)
        except Exception as e:  # onnxruntime's own exception types (Fail, InvalidGraph, ...) are not exported
            error = e
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise ModelLoadError(f"{Path(path).name}: ONNX Runtime cannot load this model ({without_dirs(first)[:300]})")


def without_dirs(text: str) -> str:
    """`text` with the folders of absolute paths removed (file names stay): messages that reach a
    client or a probe never show where things are installed."""
    return re.sub(r"(?<![\w.])/(?:[^\s\"'/]+/)+", "", text)


def _name(p: str | tuple[str, dict[str, Any]]) -> str:
    return p[0] if isinstance(p, tuple) else p


def resolve_providers(provider: ProviderSpec = "auto", strict: bool = True) -> list[str | tuple[str, dict[str, Any]]]:
    """The provider list for a spec; "auto" gives CUDA first only when onnxruntime offers it.

    A requested provider this onnxruntime does not offer is an error, or with strict=False a warning and
    the remaining providers (the CPU at least).

    Raises:
        ProviderError: an unknown spec, or (strict) a provider this onnxruntime does not offer.
    """
    available = ort.get_available_providers()
    if isinstance(provider, str):
        key = provider.lower()
        if key == "auto":
            return list(ALIASES["cuda"]) if "CUDAExecutionProvider" in available else list(ALIASES["cpu"])
        if key not in ALIASES:
            raise ProviderError(f"unknown provider {provider!r}: use auto, cpu, cuda, tensorrt or a provider list")
        providers: list[str | tuple[str, dict[str, Any]]] = list(ALIASES[key])
    else:
        providers = list(provider)
    missing = [_name(p) for p in providers if _name(p) not in available]
    if missing:
        hint = (
            " (install clipedge[gpu], i.e. onnxruntime-gpu, and the CUDA libraries)" if "CUDA" in str(missing) else ""
        )
        message = (
            f"execution provider {', '.join(missing)} is not available in this onnxruntime "
            f"(available: {', '.join(available)}){hint}"
        )
        if strict:
            raise ProviderError(message)
        providers = [p for p in providers if _name(p) in available] or list(ALIASES["cpu"])
        log.warning("%s; falling back to %s", message, _name(providers[0]))
    return providers


POOLS = ("shared", "session", "session-spin")
_shared_pool: dict[str, int | None] = {}  # set by the first shared-pool session of the process
# Held while choosing a pool and creating a session: a per-session session must not be created after
# another thread made the shared pool between the choice and the creation (ONNX Runtime would refuse it).
_pool_lock = threading.RLock()


def _shared_pool_threads(threads: int | None) -> int | None:
    """Create ONNX Runtime's process-wide thread pool on first use (never at import); its size is fixed.

    One intra-op pool serves every session of the process (vision and text, every bundle). Its threads
    spin between runs, which is what makes batch-1 latency low, and, as they are shared, the two towers
    no longer busy-wait against each other. Measured on the 2-core CPU, ViT-B/32 int8 (README
    "Precision and provider"): one image 16.9-17.0 ms (per-session pools: 18.6-20.8 ms without spinning,
    17.0-17.4 ms with), one image then 3 new labels 24.2-25.8 ms (28.7-30.5 ms without spinning,
    61.8-74.4 ms with).
    """
    if "threads" not in _shared_pool:
        try:
            ort.set_global_thread_pool_sizes(int(threads or 0), 1)  # 0: one thread per physical core
        except Exception as e:  # created already in this process by other code: use it as it is
            if "already" not in str(e):
                raise
            log.info("ONNX Runtime's global thread pool exists already (%s); sharing it", e)
        _shared_pool["threads"] = threads
    elif threads != _shared_pool["threads"]:
        log.warning(
            "threads=%s ignored: this process shares one ONNX Runtime thread pool, created with threads=%s",
            threads,
            _shared_pool["threads"],
        )
    return _shared_pool["threads"]


def session_options(threads: int | None = None, pool: str = "session") -> ort.SessionOptions:
    """Session options for one of three thread pools (`threads` intra-op threads; None: one per core):

    - "session" (library default): a pool per session whose threads do not spin, so a process that also
      runs other ONNX Runtime sessions, or vision and text at once, does not busy-wait against itself;
    - "shared" (what the clipedge CLI, endpoint and batch workers use: they own their process): one
      process-wide pool whose threads spin, created on first use with the first `threads` given.
      Fastest (see `_shared_pool_threads`), but once it exists ONNX Runtime refuses per-session pools in
      that process, for any session: use it only where clipedge owns the process;
    - "session-spin": a pool per session whose threads spin (benchmarks).

    After a shared pool was created in this process every clipedge session uses it, whatever was asked.
    """
    if pool not in POOLS:
        raise ValueError(f"unknown thread pool {pool!r} (choose from {', '.join(POOLS)})")
    with _pool_lock:
        return _options(threads, pool)


def _options(threads: int | None, pool: str) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if pool == "shared" or _shared_pool:
        _shared_pool_threads(threads)
        so.use_per_session_threads = False
        return so
    if threads:
        so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if pool == "session-spin" else "0")
    return so


def create_session(
    path: str | Path,
    provider: ProviderSpec = "auto",
    threads: int | None = None,
    strict: bool = True,
    pool: str = "session",
) -> ort.InferenceSession:
    """An InferenceSession on the resolved providers, checked to really run on the first one requested.

    Raises:
        ProviderError: (strict) the requested provider is missing or not in effect.
        ModelLoadError: ONNX Runtime cannot load the file (one line naming it, never its traceback).
    """
    providers = resolve_providers(provider, strict)
    auto = isinstance(provider, str) and provider.lower() == "auto"
    session = _open(path, threads, pool, providers)
    wanted, active = _name(providers[0]), session.get_providers()
    if wanted not in active:
        if auto:
            log.info("CUDA is offered by onnxruntime but could not start; running on %s", active[0])
            return _open(path, threads, pool, list(ALIASES["cpu"]))
        message = (
            f"{Path(path).name}: requested {wanted} is not in effect (running on {', '.join(active)}); "
            "check the CUDA/cuDNN libraries, or ask for provider='cpu'"
        )
        if strict:
            raise ProviderError(message)
        log.warning("%s", message)
    return session
