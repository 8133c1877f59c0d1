"""Procedurally generated captioned images for the demo model: coloured shapes over varied backgrounds.

Numpy and Pillow only (no torch), deterministic from a seed. Classes are "<colour> <shape>" (6 x 5 = 30);
captions vary in phrasing, size, position and background. `write_image_folder` writes a held-out set in
the image-folder layout `clipedge eval` reads (one sub-folder per class).

    python -m clipedge_export.shapes OUT_DIR --per-class 20 --seed 1000
"""

from __future__ import annotations

import argparse
import colorsys
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

COLOURS = {"red": 0, "orange": 30, "yellow": 55, "green": 120, "blue": 225, "purple": 280}  # hue in degrees
SHAPES = ("circle", "square", "triangle", "star", "cross")
CLASSES = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)
BACKGROUNDS = ("plain", "gradient", "noisy", "striped", "checkered")
ROTATION_JITTER = 20.0  # degrees around upright: a square stays a square, not a diamond
POSITION_JITTER = 0.35  # 1: anywhere inside the centre crop, 0: centred
PHRASES = (
    "a {colour} {shape}",
    "a photo of a {colour} {shape}.",
    "a {size} {colour} {shape}",
    "a {colour} {shape} on a {background} background",
    "a {shape} that is {colour}",
    "a {colour} {shape} in the {position}",
    "a picture of a {size} {colour} {shape} on a {background} background.",
    "the {shape} is {colour}",
    "a {colour} {shape} shape",
    "an image of a {colour} {shape}.",
    "{colour} {shape}",
    "a drawing of a {size} {colour} {shape} in the {position}",
)


@dataclass(frozen=True)
class Sample:
    image: Image.Image
    colour: str
    shape: str
    size: str
    position: str
    background: str

    @property
    def label(self) -> str:
        return f"{self.colour} {self.shape}"

    def caption(self, rng: np.random.Generator) -> str:
        phrase = PHRASES[int(rng.integers(len(PHRASES)))]
        return phrase.format(
            colour=self.colour, shape=self.shape, size=self.size, position=self.position, background=self.background
        )


def _rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb((h % 360) / 360, s, v)
    return int(r * 255), int(g * 255), int(b * 255)


def _muted(rng: np.random.Generator) -> tuple[int, int, int]:
    """A background colour: grey-ish (saturation < 0.2), any brightness, so the object's colour stays its own."""
    return _rgb(rng.uniform(0, 360), rng.uniform(0, 0.2), rng.uniform(0.15, 0.95))


def _background(rng: np.random.Generator, w: int, h: int, kind: str) -> Image.Image:
    a, b = np.array(_muted(rng), dtype=np.float32), np.array(_muted(rng), dtype=np.float32)
    if kind == "plain":
        arr = np.broadcast_to(a, (h, w, 3)).copy()
    elif kind == "gradient":
        t = np.linspace(0, 1, w if rng.random() < 0.5 else h, dtype=np.float32)
        line = a[None, :] * (1 - t[:, None]) + b[None, :] * t[:, None]
        arr = np.broadcast_to(line[None, :, :], (h, w, 3)) if len(t) == w else np.broadcast_to(line[:, None], (h, w, 3))
        arr = arr.copy()
    elif kind == "noisy":
        arr = a + rng.normal(0, rng.uniform(10, 35), (h, w, 3)).astype(np.float32)
    elif kind == "striped":
        period = int(rng.integers(4, 16))
        idx = np.arange(w if rng.random() < 0.5 else h) // period % 2
        line = np.where(idx[:, None] == 0, a, b)
        arr = np.broadcast_to(line[None], (h, w, 3)) if len(idx) == w else np.broadcast_to(line[:, None], (h, w, 3))
        arr = arr.copy()
    else:  # checkered
        period = int(rng.integers(4, 16))
        yy, xx = np.mgrid[0:h, 0:w]
        arr = np.where((((yy // period) + (xx // period)) % 2 == 0)[..., None], a, b)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        pts = [
            (math.cos(angle + k * math.pi / 2 + math.pi / 4), math.sin(angle + k * math.pi / 2 + math.pi / 4))
            for k in range(4)
        ]
        pts = [(x * r, y * r) for x, y in pts]
    elif shape == "triangle":
        pts = [(r * math.cos(angle + k * 2 * math.pi / 3), r * math.sin(angle + k * 2 * math.pi / 3)) for k in range(3)]
    elif shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.42
            a = angle + k * math.pi / 5
            pts.append((rad * math.cos(a), rad * math.sin(a)))
    else:  # cross
        t = 0.33
        base = [
            (-t, -1),
            (t, -1),
            (t, -t),
            (1, -t),
            (1, t),
            (t, t),
            (t, 1),
            (-t, 1),
            (-t, t),
            (-1, t),
            (-1, -t),
            (-t, -t),
        ]
        ca, sa = math.cos(angle), math.sin(angle)
        pts = [((x * ca - y * sa) * r, (x * sa + y * ca) * r) for x, y in base]
    return [(cx + x, cy + y) for x, y in pts]


def render(rng: np.random.Generator, colour: str | None = None, shape: str | None = None) -> Sample:
    """One random image of a `colour` `shape` (random when None), sized 64..192 px, any aspect ratio."""
    colour = colour or list(COLOURS)[int(rng.integers(len(COLOURS)))]
    shape = shape or SHAPES[int(rng.integers(len(SHAPES)))]
    w, h = int(rng.integers(64, 193)), int(rng.integers(64, 193))
    side = min(w, h)  # the part that survives a shortest-edge resize + centre crop
    x0, y0 = (w - side) / 2, (h - side) / 2
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    ss = 3  # supersampling for anti-aliased edges
    img = _background(rng, w, h, background).resize((w * ss, h * ss), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(img)
    frac = rng.uniform(0.14, 0.36)
    r = frac * side
    free = (side / 2 - r * 0.9) * POSITION_JITTER
    cx = x0 + side / 2 + rng.uniform(-free, free)
    cy = y0 + side / 2 + rng.uniform(-free, free)
    fill = _rgb(COLOURS[colour] + rng.uniform(-6, 6), rng.uniform(0.75, 1.0), rng.uniform(0.75, 1.0))
    if shape == "circle":
        draw.ellipse([(cx - r) * ss, (cy - r) * ss, (cx + r) * ss, (cy + r) * ss], fill=fill)
    else:
        upright = -math.pi / 2 if shape in ("triangle", "star") else 0.0
        angle = upright + math.radians(rng.uniform(-ROTATION_JITTER, ROTATION_JITTER))
        pts = _polygon(shape, cx * ss, cy * ss, r * ss * (1.1 if shape == "triangle" else 1.0), angle)
        draw.polygon(pts, fill=fill)
    img = img.resize((w, h), Image.Resampling.BOX)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    if rng.random() < 0.5:  # JPEG artefacts, as real inputs have
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(rng.integers(35, 95)))
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    size = "small" if frac < 0.22 else "large" if frac > 0.29 else "medium-sized"
    col = "left" if cx - x0 < side / 3 else "right" if cx - x0 > 2 * side / 3 else ""
    row = "top" if cy - y0 < side / 3 else "bottom" if cy - y0 > 2 * side / 3 else ""
    position = f"{row} {col}".strip() or "center"
    return Sample(img, colour, shape, size, position, background)


def write_image_folder(out_dir: str | Path, per_class: int = 20, seed: int = 1000) -> Path:
    """A held-out set: `out_dir/<colour shape>/<n>.png`, `per_class` images per class."""
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    for label in CLASSES:
        colour, shape = label.split(" ")
        folder = out / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            render(rng, colour, shape).image.save(folder / f"{i:04d}.png")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="write a generated held-out set (image-folder layout)")
    parser.add_argument("out_dir")
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1000)
    args = parser.parse_args(argv)
    print(write_image_folder(args.out_dir, args.per_class, args.seed))


if __name__ == "__main__":
    main()
