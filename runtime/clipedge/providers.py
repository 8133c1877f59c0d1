"""Execution providers are chosen here and nowhere else, and this is the session factory: every ONNX Runtime
session of a tower is made by `create_session` from the load options (`clipedge.options.LoadOptions`).

"auto": CUDA when onnxruntime offers it and a session really runs on it, else CPU. "cpu", "cuda", or an
explicit ONNX Runtime provider list. After creating a session we read `get_providers()`: ONNX Runtime
silently falls back to CPU when CUDA cannot start, so a requested provider that is not in effect is an
error (or, with strict=False, a loud warning).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import onnxruntime as ort

from .options import DEFAULTS, LoadOptions, ProviderSpec
from .threads import pool_lock, session_options

log = logging.getLogger("clipedge")

ALIASES = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


class ProviderError(RuntimeError):
    """A requested execution provider is not available or not in effect."""


class ModelLoadError(RuntimeError):
    """ONNX Runtime refused a model file (damaged, external data outside the bundle, unsupported ops)."""


def _open(path: str | Path, options: LoadOptions, providers: list) -> ort.InferenceSession:
    with pool_lock:
        so = session_options(options.threads, options.thread_pool)
        try:
            return ort.InferenceSession(str(path), so, providers=providers)
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


def create_session(
    path: str | Path, options: LoadOptions = DEFAULTS, provider: ProviderSpec | None = None
) -> ort.InferenceSession:
    """An InferenceSession for one tower file as the load options say (threads, thread pool, strict), on
    `provider` (default: the options' provider), checked to really run on the first provider requested.

    Raises:
        ProviderError: (strict) the requested provider is missing or not in effect.
        ModelLoadError: ONNX Runtime cannot load the file (one line naming it, never its traceback).
    """
    spec = options.provider if provider is None else provider
    strict = options.strict
    providers = resolve_providers(spec, strict)
    auto = isinstance(spec, str) and spec.lower() == "auto"
    session = _open(path, options, providers)
    wanted, active = _name(providers[0]), session.get_providers()
    if wanted not in active:
        if auto:
            log.info("CUDA is offered by onnxruntime but could not start; running on %s", active[0])
            return _open(path, options, list(ALIASES["cpu"]))
        message = (
            f"{Path(path).name}: requested {wanted} is not in effect (running on {', '.join(active)}); "
            "check the CUDA/cuDNN libraries, or ask for provider='cpu'"
        )
        if strict:
            raise ProviderError(message)
        log.warning("%s", message)
    return session
