"""Image preprocessing as pure functions: PIL only resizes, numpy does the rest.

Matches transformers' image processors (PIL backend), as the manifest describes them:
- "shortest_edge" (CLIPImageProcessor): resize the shortest edge with the manifest's resample filter on the
  uint8 RGB image (output size int(size * long / short), as `get_resize_output_image_size`), center crop with
  top = (h - crop_h) // 2 (zero padding when the image is smaller);
- "squash" (SiglipImageProcessor, ChineseCLIPImageProcessor): resize to the tower's size, the aspect ratio
  not kept, no crop;
then rescale, normalise with mean/std, channels first.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .images import DecodePolicy, ImageError, ImageInput, decode_image, open_image
from .manifest import Preprocess

RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


def resize_size(width: int, height: int, shortest_edge: int) -> tuple[int, int]:
    """(width, height) after resizing the shortest edge, as transformers' get_resize_output_image_size."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = shortest_edge, int(shortest_edge * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def resize_shortest_edge(image: Image.Image, spec: Preprocess) -> Image.Image:
    """Resize so the shortest edge is the manifest's size.

    For extreme aspect ratios (a long side over 16x the crop after resizing) only a central window of the
    resized image is computed, with PIL's `box`: the same pixels around the crop, without resizing the
    whole strip (a 1x50000 image would otherwise become 224x11,200,000). PIL's two passes then round
    differently: at most one uint8 level from the full resize (tested).
    """
    w, h = image.size
    out_w, out_h = resize_size(w, h, spec.resize_shortest_edge)
    if (out_w, out_h) == (w, h):
        return image
    limit = 16 * max(spec.crop_size)
    if not spec.do_center_crop or max(out_w, out_h) <= limit:
        return image.resize((out_w, out_h), RESAMPLE[spec.resample])
    if out_w > out_h:
        crop = spec.crop_size[1]
        start = (out_w - crop) // 2 - (limit - crop) // 2
        scale = w / out_w
        box = (start * scale, 0.0, (start + limit) * scale, float(h))
        return image.resize((limit, out_h), RESAMPLE[spec.resample], box=box)
    crop = spec.crop_size[0]
    start = (out_h - crop) // 2 - (limit - crop) // 2
    scale = h / out_h
    box = (0.0, start * scale, float(w), (start + limit) * scale)
    return image.resize((out_w, limit), RESAMPLE[spec.resample], box=box)


def center_crop(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Center crop an HWC array; pads with zeros where the image is smaller (as transformers' center_crop)."""
    h, w = array.shape[:2]
    if h < height or w < width:
        ph, pw = max(height, h), max(width, w)
        padded = np.zeros((ph, pw, *array.shape[2:]), dtype=array.dtype)
        top, left = (ph - h + 1) // 2, (pw - w + 1) // 2
        padded[top : top + h, left : left + w] = array
        array, h, w = padded, ph, pw
    top, left = (h - height) // 2, (w - width) // 2
    return array[top : top + height, left : left + width]


def normalise(array: np.ndarray, spec: Preprocess) -> np.ndarray:
    """uint8 HWC RGB -> float32 CHW: (x * rescale - mean) / std, as one fused multiply-add."""
    std = np.asarray(spec.std, dtype=np.float32)
    scale = np.float32(spec.rescale_factor) / std
    bias = -np.asarray(spec.mean, dtype=np.float32) / std
    out = array.astype(np.float32) * scale + bias
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def preprocess(image: Image.Image, spec: Preprocess) -> np.ndarray:
    """One RGB PIL image -> pixel_values float32 [3, crop_h, crop_w]."""
    if image.mode != "RGB":
        raise ValueError(f"preprocess expects an RGB image, got mode {image.mode!r} (decode it with clipedge.images)")
    if spec.resize_mode == "squash":  # SigLIP's, Chinese-CLIP's: to the tower's size, no crop
        h, w = spec.crop_size
        resized = image if image.size == (w, h) else image.resize((w, h), RESAMPLE[spec.resample])
        return normalise(np.asarray(resized), spec)
    resized = resize_shortest_edge(image, spec)
    array = np.asarray(resized)
    if spec.do_center_crop:
        array = center_crop(array, *spec.crop_size)
    return normalise(array, spec)


def preprocess_batch(images: list[Image.Image], spec: Preprocess) -> np.ndarray:
    """RGB PIL images -> pixel_values float32 [N, 3, crop_h, crop_w]."""
    if not images:
        h, w = spec.crop_size
        return np.zeros((0, 3, h, w), dtype=np.float32)
    return np.stack([preprocess(im, spec) for im in images])


def prepare_pixels(source: ImageInput, spec: Preprocess, policy: DecodePolicy, name: str | None = None) -> np.ndarray:
    """Any input `clipedge.images` takes -> pixel_values float32 [3, crop_h, crop_w]: open (caps checked),
    decode, preprocess. The one path from an image to a tower's input,
    whether it runs in the caller's thread (`ZeroShotClassifier.prepare`) or in a decoding process
    (`clipedge.decoders`).

    Raises:
        ImageError: naming the input and the problem, whatever went wrong (never another exception).
    """
    image, name = open_image(source, policy, name)
    return _pixels(image, spec, name)


def _pixels(image: Image.Image, spec: Preprocess, name: str) -> np.ndarray:
    rgb = decode_image(image, name)
    try:
        return preprocess(rgb, spec)
    except Exception as e:  # e.g. a degenerate image that resizes to zero pixels
        raise ImageError(f"{name}: cannot preprocess ({type(e).__name__}: {e})") from None
