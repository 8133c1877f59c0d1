"""clipedge: CLIP zero-shot image classification on ONNX Runtime, from an exported bundle.

Imports only onnxruntime, numpy, pillow and tokenizers, and only when a name below is first used: `import
clipedge` (or a light submodule such as `clipedge.benchmark`'s timers) loads no inference library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import lazy_attributes
from .version import __version__

if TYPE_CHECKING:
    from .bundle import Bundle, BundleError, load_bundle
    from .classifier import ZeroShotClassifier
    from .images import ImageError
    from .label_rules import LabelRequest
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
    "LabelRequest": ".label_rules",
    "LoadOptions": ".options",
    "ModelLoadError": ".providers",
    "ProviderError": ".providers",
}
__all__ = [
    "Bundle",
    "BundleError",
    "ImageError",
    "LabelEmbeddings",
    "LabelRequest",
    "LoadOptions",
    "ModelLoadError",
    "ProviderError",
    "ZeroShotClassifier",
    "__version__",
    "load_bundle",
]

__getattr__ = lazy_attributes(__name__, _WHERE)
