"""Choosing what runs, in one place: the engine, the provider and the precision of a classifier's towers.

The ranking, from the benchmarks (docs/benchmarks.md), applied to what is really in effect:
- CPU, with the `openvino` extra installed and an int8-static variant in the bundle: OpenVINO on
  int8-static (static scales, fastest on the CPUs measured, AMD included);
- CPU otherwise (ONNX Runtime): int8 (dynamic, run one item at a time so results do not depend on the
  batch), then fp32, int8-static, fp32-unfused, fp16 (fp16 has no fast CPU kernels);
- CUDA and TensorRT (ONNX Runtime): fp16, then fp32, fp32-unfused, int8-static, int8 (dynamic int8 has
  CPU kernels only).
The ranking is applied once the session exists: ONNX Runtime falls back to the CPU silently when CUDA
cannot start, and a CUDA choice (fp16) must then not run on the CPU. An optional engine that fails to
start falls back to ONNX Runtime with a warning. An explicit precision is never changed; an explicit
engine or provider that cannot be had is an error unless a fallback was asked for (strict=False).
Override with the load options' `engine` ("onnxruntime", "openvino"), `provider` and `precision`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import openvino_engine as ove
from .bundle import Bundle
from .options import ENGINES, LoadOptions, ProviderSpec
from .providers import ModelLoadError, ProviderError, create_session, resolve_providers

log = logging.getLogger("clipedge")

RANKING: dict[str, tuple[str, ...]] = {
    "CPUExecutionProvider": ("int8", "fp32", "int8-static", "fp32-unfused", "fp16"),
    "CUDAExecutionProvider": ("fp16", "fp32", "fp32-unfused", "int8-static", "int8"),
    "TensorrtExecutionProvider": ("fp16", "fp32", "fp32-unfused", "int8-static", "int8"),
    ove.PROVIDER: ove.ENGINE_PRECISIONS,
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


def _first(providers: Sequence[Any]) -> str:
    p = providers[0]
    return p[0] if isinstance(p, tuple) else p


@dataclass(frozen=True)
class Choice:
    """What runs: the engine, the precision, and (ONNX Runtime) the provider spec in effect."""

    engine: str
    precision: str
    provider: ProviderSpec

    def open(self, path: str | Path, options: LoadOptions) -> Any:
        """A session for one tower file (ONNX Runtime's, or an OpenVINO tower with the same interface)."""
        if self.engine == "openvino":
            return ove.OpenVinoTower(path, options, self.precision)
        return create_session(path, options, self.provider)

    def for_precision(self, precision: str) -> Choice:
        """The same engine and provider for another precision (ONNX Runtime's where the engine cannot run it)."""
        if precision == self.precision:
            return self
        if self.engine == "openvino" and precision not in ove.ENGINE_PRECISIONS:
            return Choice("onnxruntime", precision, "cpu")
        return Choice(self.engine, precision, self.provider)


def _wants_cpu(provider: ProviderSpec) -> bool:
    return isinstance(provider, str) and provider.lower() in ("auto", "cpu")


def _openvino(bundle: Bundle, options: LoadOptions) -> str | None:
    """The precision OpenVINO should run, or None when ONNX Runtime should."""
    precision, provider, engine = options.precision, options.provider, options.engine
    if engine == "onnxruntime" or (engine == "auto" and not _wants_cpu(provider)):
        return None
    wanted = (
        [precision] if precision != "auto" else [p for p in ove.ENGINE_PRECISIONS if p in bundle.manifest.precisions]
    )
    usable = [p for p in wanted if p in ove.ENGINE_PRECISIONS and p in bundle.manifest.precisions]
    if engine == "auto":  # OpenVINO is the ranked engine for its precisions on the CPU, when installed
        candidate = "int8-static" if precision == "auto" else precision
        if candidate in ove.ENGINE_PRECISIONS and candidate in bundle.manifest.precisions and ove.available():
            import onnxruntime as ort

            cuda = "CUDAExecutionProvider" in ort.get_available_providers()
            if provider == "cpu" or precision != "auto" or not cuda:
                return candidate
        return None
    problem = None
    if not ove.available():
        problem = "engine openvino needs the openvino extra: pip install 'clipedge[openvino]'"
    elif not _wants_cpu(provider):
        problem = "engine openvino runs on the CPU: use provider auto or cpu with it"
    elif not usable:
        have = ", ".join(bundle.manifest.precisions)
        problem = f"engine openvino runs {' or '.join(ove.ENGINE_PRECISIONS)}; this bundle has {have}"
    if problem is None:
        return usable[0]
    if options.strict:
        raise ProviderError(problem)
    log.warning("%s; falling back to ONNX Runtime", problem)
    return None


def open_vision(bundle: Bundle, options: LoadOptions) -> tuple[Choice, Any]:
    """Resolve engine, provider and precision from the load options and open the vision tower.

    Returns:
        (the choice, the vision session); the choice opens the text tower the same way.

    Raises:
        ProviderError: (strict) the requested engine or provider is missing or not in effect.
        BundleError: the bundle lacks the precision, or its files do not match the manifest.
        ModelLoadError: the engine cannot load the file.
    """
    if options.engine not in ENGINES:
        raise ProviderError(f"unknown engine {options.engine!r} (choose from {', '.join(ENGINES)})")
    ov_precision = _openvino(bundle, options)
    if ov_precision is not None:
        choice = Choice("openvino", ov_precision, "cpu")
        if options.verify:
            bundle.verify(ov_precision)
        try:
            return choice, choice.open(bundle.tower_path(ov_precision, "vision"), options)
        except ModelLoadError as e:
            if options.engine == "openvino" and options.strict:
                raise
            log.warning("%s; falling back to ONNX Runtime", e)
    return _open_onnxruntime(bundle, options)


def _open_onnxruntime(bundle: Bundle, options: LoadOptions) -> tuple[Choice, Any]:
    precision = options.precision
    requested = resolve_providers(options.provider, options.strict)
    chosen = choose_precision(bundle, _first(requested)) if precision == "auto" else precision
    if chosen not in bundle.manifest.precisions:
        bundle.variant(chosen)  # raises BundleError naming what the bundle has
    if options.verify:
        bundle.verify(chosen)
    session = create_session(bundle.tower_path(chosen, "vision"), options)
    active = session.get_providers()[0]
    if precision == "auto" and (better := choose_precision(bundle, active)) != chosen:
        log.warning("%s is in effect, not %s: precision auto gives %s there", active, _first(requested), better)
        chosen = better
        if options.verify:
            bundle.verify(chosen)
        session = create_session(bundle.tower_path(chosen, "vision"), options, [active])
    effective: ProviderSpec = options.provider if active == _first(requested) else [active]
    return Choice("onnxruntime", chosen, effective), session


__all__ = ["ENGINES", "RANKING", "Choice", "choose_precision", "open_vision"]
