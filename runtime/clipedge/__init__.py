"""clipedge: CLIP zero-shot image classification on ONNX Runtime, from an exported bundle.

Imports only onnxruntime, numpy, pillow and tokenizers.
"""

from .bundle import Bundle, BundleError, load_bundle
from .classifier import ZeroShotClassifier
from .images import ImageError
from .labels import LabelEmbeddings
from .options import LoadOptions
from .providers import ModelLoadError, ProviderError

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
