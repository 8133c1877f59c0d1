"""The optional OpenVINO engine (extra `openvino`): OpenVINO's runtime reads a bundle's standard-operator
files (int8-static, fp32-unfused) directly and runs them on any x86 CPU, AMD included (ONNX Runtime's
OpenVINO provider is a different thing: it skips non-Intel CPUs). A tower is wrapped with ONNX Runtime's
session interface (`run`, `get_providers`), so the encoder does not care which engine runs it.

OpenVINO's CPU plugin runs float parts in bf16 where the CPU has it (its default); fp32-unfused asks for
f32 explicitly, since that is what a user choosing fp32 expects.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Any

import numpy as np

from .options import DEFAULTS, LoadOptions
from .providers import ModelLoadError, without_dirs

PROVIDER = "OpenVINO:CPU"
ENGINE_PRECISIONS = ("int8-static", "fp32-unfused")


def available() -> bool:
    """OpenVINO's runtime is installed (the check imports nothing)."""
    return importlib.util.find_spec("openvino") is not None


class OpenVinoTower:
    """One tower compiled by OpenVINO for the CPU; thread-safe (one inference at a time per tower)."""

    def __init__(self, path: str | Path, options: LoadOptions = DEFAULTS, precision: str = "int8-static"):
        import openvino as ov

        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if options.threads:
            config["INFERENCE_NUM_THREADS"] = int(options.threads)
        if precision == "fp32-unfused":
            config["INFERENCE_PRECISION_HINT"] = "f32"
        try:
            self._compiled = ov.Core().compile_model(str(path), "CPU", config)
        except Exception as e:  # OpenVINO's errors are long and carry paths: one line, no folders
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            reason = without_dirs(first)[:300]
            raise ModelLoadError(f"{Path(path).name}: OpenVINO cannot compile this model ({reason})") from None
        self._request = self._compiled.create_infer_request()
        self._lock = threading.Lock()

    def run(self, output_names: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with self._lock:  # by input name: a text tower may take an attention mask too
            result = self._request.infer(feeds if len(feeds) > 1 else list(feeds.values()))
            return [np.array(result[0], dtype=np.float32, copy=True)]

    @staticmethod
    def get_providers() -> list[str]:
        return [PROVIDER]
