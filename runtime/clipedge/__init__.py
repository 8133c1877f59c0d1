"""clipedge: CLIP zero-shot image classification on ONNX Runtime, from an exported bundle.

Imports only onnxruntime, numpy, pillow and tokenizers, and only when a name below is first used: `import
clipedge` (or a light submodule such as `clipedge.benchmark`'s timers) loads no inference library.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .bundle import Bundle, BundleError, load_bundle
    from .classifier import ZeroShotClassifier
    from .images import ImageError
    from .labels import LabelEmbeddings
    from .options import LoadOptions
    from .providers import ModelLoadError, ProviderError

_WHERE = {
    "Bundle": ".bundle",
    "BundleError": ".bundle",
    "load_bundle": ".bundle",
    "ZeroShotClassifier": ".classifier",
    "ImageError": ".images",
    "LabelEmbeddings": ".labels",
    "LoadOptions": ".options",
    "ModelLoadError": ".providers",
    "ProviderError": ".providers",
}
__all__ = [
    "Bundle",
    "BundleError",
    "ImageError",
    "LabelEmbeddings",
    "LoadOptions",
    "ModelLoadError",
    "ProviderError",
    "ZeroShotClassifier",
    "load_bundle",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'clipedge' has no attribute {name!r}")
