"""The calibration set of the static int8 variant: images (shipped in clipedge_export/data/calibration, with
their licences, or a folder of the user's) and prompts, turned into the towers' inputs.

Each image gives two inputs, as itself and mirrored; each prompt one, tokenised alone (no padding). The set
is recorded in the manifest: where it came from, how many files, a sha256 over their contents.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from clipedge.images import IMAGE_EXTENSIONS, ImageError, load_image
from clipedge.preprocess import preprocess
from PIL import Image

from .errors import ExportError

MAX_IMAGES = 256
SHIPPED = "clipedge_export/data/calibration"
WORDS = (
    "cat", "dog", "bird", "car", "truck", "bicycle", "person", "child", "house", "tree", "flower", "mountain",
    "beach", "city street", "kitchen", "plate of food", "cup of coffee", "laptop", "phone", "book", "chair",
    "table", "horse", "cow", "boat", "airplane", "train", "bridge", "rocket", "planet", "galaxy", "cell",
    "x-ray", "chart", "document", "sign", "logo", "painting", "sketch", "toy", "shoe", "shirt", "clock",
    "coin", "brick wall", "gravel", "grass", "sky",
)  # fmt: skip
TEMPLATES = ("a photo of a {}.", "{}", "a blurry photo of the {}.", "an illustration of a {}")


def shipped_folder() -> Path:
    return Path(str(resources.files("clipedge_export") / "data" / "calibration"))


def calibration_images(folder: str | Path | None = None) -> tuple[list[Image.Image], dict[str, Any]]:
    """The images (sorted by name, at most 256) and the manifest's record of them.

    Raises:
        ExportError: the folder is missing, holds no readable image, or an image cannot be decoded.
    """
    root = Path(folder) if folder else shipped_folder()
    if not root.is_dir():
        raise ExportError(f"{root}: no such calibration folder")
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())[:MAX_IMAGES]
    if not files:
        raise ExportError(f"{root}: no images to calibrate on ({', '.join(IMAGE_EXTENSIONS)})")
    digest = hashlib.sha256()
    images = []
    for f in files:
        data = f.read_bytes()
        digest.update(hashlib.sha256(data).digest())
        try:
            images.append(load_image(data))
        except ImageError as e:
            raise ExportError(f"{f}: calibration image cannot be decoded ({e})") from None
    record = {
        "images": SHIPPED if folder is None else str(root),
        "files": len(files),
        "sha256": digest.hexdigest(),
        "licences": f"{SHIPPED}/LICENSES.md" if folder is None else "the user's own",
        "prompts": len(prompts()),
    }
    return images, record


def vision_inputs(images: list[Image.Image], spec: Any) -> list[np.ndarray]:
    """[1,3,H,W] pixel_values per image and per mirrored image."""
    out = []
    for im in images:
        for view in (im, im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)):
            out.append(preprocess(view, spec)[None])
    return out


def prompts() -> list[str]:
    return [t.replace("{}", w) for w in WORDS for t in TEMPLATES]


def text_inputs(tokenize: Any, mask: str | None = None) -> list[dict[str, np.ndarray]]:
    """The text tower's feeds per prompt, each tokenised alone (padded only where the family's padding is
    fixed): input_ids [1,L], and the attention mask under the name `mask` where the tower takes one."""
    feeds = []
    for p in prompts():
        tokens = tokenize([p])
        feeds.append({"input_ids": tokens.ids, **({mask: tokens.mask()} if mask else {})})
    return feeds
