"""Execution providers are chosen here and nowhere else.

"auto": CUDA when onnxruntime offers it and a session really runs on it, else CPU. "cpu", "cuda", or an
explicit ONNX Runtime provider list. After creating a session we read `get_providers()`: ONNX Runtime
silently falls back to CPU when CUDA cannot start, so a requested provider that is not in effect is an
error (or, with strict=False, a loud warning).
"""

from __future__ import annotations

import logging
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


def _name(p: str | tuple[str, dict[str, Any]]) -> str:
    return p[0] if isinstance(p, tuple) else p


def resolve_providers(provider: ProviderSpec = "auto") -> list[str | tuple[str, dict[str, Any]]]:
    """The provider list for a spec; "auto" gives CUDA first only when onnxruntime offers it."""
    available = ort.get_available_providers()
    if isinstance(provider, str):
        key = provider.lower()
        if key == "auto":
            return ALIASES["cuda"] if "CUDAExecutionProvider" in available else ALIASES["cpu"]
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
        raise ProviderError(
            f"execution provider {', '.join(missing)} is not available in this onnxruntime "
            f"(available: {', '.join(available)}){hint}"
        )
    return providers


def session_options(threads: int | None = None, spinning: bool = False) -> ort.SessionOptions:
    """Session options: `threads` intra-op threads (None: ONNX Runtime's default, one per core).

    Spinning is off by default: two sessions (vision + text) in one process otherwise fight over the
    cores with busy-waiting thread pools (1 image + 3 labels: 42-46 ms with spinning, 29.5 ms without).
    """
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return so


def create_session(
    path: str | Path,
    provider: ProviderSpec = "auto",
    threads: int | None = None,
    strict: bool = True,
    spinning: bool = False,
) -> ort.InferenceSession:
    """An InferenceSession on the resolved providers, checked to really run on the first one requested."""
    providers = resolve_providers(provider)
    auto = isinstance(provider, str) and provider.lower() == "auto"
    session = ort.InferenceSession(str(path), session_options(threads, spinning), providers=providers)
    wanted, active = _name(providers[0]), session.get_providers()
    if wanted not in active:
        if auto:
            log.info("CUDA is offered by onnxruntime but could not start; running on %s", active[0])
            return ort.InferenceSession(str(path), session_options(threads, spinning), providers=ALIASES["cpu"])
        message = (
            f"{Path(path).name}: requested {wanted} is not in effect (running on {', '.join(active)}); "
            "check the CUDA/cuDNN libraries, or ask for provider='cpu'"
        )
        if strict:
            raise ProviderError(message)
        log.warning("%s", message)
    return session
