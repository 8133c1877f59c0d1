"""Choosing what runs, in one place: the provider and the precision of a classifier's towers.

"auto" precision follows a ranking per execution provider (from the benchmarks in docs/benchmarks.md):
the CPU provider runs dynamic int8 fastest, then fp32 (fp16 has no fast CPU kernels); CUDA and TensorRT
run fp16 fastest, then fp32 (dynamic int8 has CPU kernels only). The ranking is applied to the provider
that is really in effect once the session exists: ONNX Runtime falls back to the CPU silently when CUDA
cannot start, and a CUDA choice (fp16) must then not run on the CPU. An explicit precision is never
changed; an explicit provider that is not in effect is an error unless a fallback was asked for
(strict=False).
"""

from __future__ import annotations

import logging

import onnxruntime as ort

from .bundle import Bundle
from .providers import ProviderSpec, create_session, resolve_providers

log = logging.getLogger("clipedge")

RANKING: dict[str, tuple[str, ...]] = {
    "CPUExecutionProvider": ("int8", "fp32", "fp16"),
    "CUDAExecutionProvider": ("fp16", "fp32", "int8"),
    "TensorrtExecutionProvider": ("fp16", "fp32", "int8"),
}


def choose_precision(bundle: Bundle, provider_name: str) -> str:
    """The best precision the bundle has for one execution provider (RANKING; unknown providers rank
    like the CPU). Raises ValueError when the bundle has no precision at all."""
    have = bundle.manifest.precisions
    for p in RANKING.get(provider_name, RANKING["CPUExecutionProvider"]):
        if p in have:
            return p
    if have:
        return next(iter(have))
    raise ValueError(f"{bundle.path}: bundle has no precisions")


def _first(providers: list) -> str:
    p = providers[0]
    return p[0] if isinstance(p, tuple) else p


def open_vision(
    bundle: Bundle,
    precision: str = "auto",
    provider: ProviderSpec = "auto",
    threads: int | None = None,
    strict: bool = True,
    pool: str = "session",
    verify: bool = True,
) -> tuple[str, ProviderSpec, ort.InferenceSession]:
    """Resolve provider and precision and open the vision tower.

    Returns:
        (precision, provider spec for the text tower, vision session): the spec names the provider in
        effect, so the text tower runs where the vision tower does.

    Raises:
        ProviderError: (strict) the requested provider is missing or not in effect.
        BundleError: the bundle lacks the precision, or its files do not match the manifest.
        ModelLoadError: ONNX Runtime cannot load the file.
    """
    requested = resolve_providers(provider, strict)
    chosen = choose_precision(bundle, _first(requested)) if precision == "auto" else precision
    bundle.variant(chosen)
    if verify:
        bundle.verify(chosen)
    session = create_session(bundle.tower_path(chosen, "vision"), provider, threads, strict, pool)
    active = session.get_providers()[0]
    if precision == "auto" and (better := choose_precision(bundle, active)) != chosen:
        log.warning("%s is in effect, not %s: precision auto gives %s there", active, _first(requested), better)
        chosen = better
        if verify:
            bundle.verify(chosen)
        session = create_session(bundle.tower_path(chosen, "vision"), [active], threads, strict, pool)
    effective: ProviderSpec = provider if active == _first(requested) else [active]
    return chosen, effective, session
