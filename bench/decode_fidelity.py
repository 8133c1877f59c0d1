"""Reduced-size JPEG decoding (libjpeg's draft mode) against exact decoding: what it changes, on trained
weights and real photos, to decide whether it can be the default.

    python -m bench.decode_fidelity --demo models/demo [--vitb32 BUNDLE] [--per-class 40] [--json out.json]

- The demo model's held-out set (generated, seed 2000, 30 classes) re-encoded as camera-sized JPEGs: each
  64-192 px image upscaled to a long side of 1280-4000 px with a sensor's grain, JPEG quality 90. Exact
  and draft decoding of the same file go through the demo model (fp32): image-embedding cosine, and
  top-1 over the 30 class prompts, unchanged or not.
- Real photos (scikit-image's astronaut, coffee, chelsea, rocket) at 1280-4000 px, JPEG quality 90:
  image-embedding cosine on the ViT-B/32 architecture (random weights) and on the demo model.
Draft factors: libjpeg decodes at the smallest 1/2..1/8 scale that keeps the shortest edge at least
FACTOR x the model's resize size (factor 1 is `--fast-jpeg` as it was; 2 leaves the final 2x+ reduction
to PIL's bicubic filter). Also the decode + preprocess time per image, exact and draft.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image


def camera_jpeg(im: Image.Image, long_side: int, rng: np.random.Generator) -> bytes:
    scale = long_side / max(im.size)
    big = im.convert("RGB").resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.BICUBIC)
    grain = np.asarray(big).astype(np.float32) + rng.normal(0, 3, (big.height, big.width, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(grain, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def embed(clf, data: list[bytes], draft: int | None) -> tuple[np.ndarray, float]:
    policy = replace(clf.decode_policy, draft=draft)
    t0 = time.perf_counter()
    px = np.stack([clf.prepare(d, policy) for d in data])
    seconds = (time.perf_counter() - t0) / len(data)
    return clf.embed(px), seconds


def compare(clf, data: list[bytes], factors: list[int], labels=None) -> dict:
    exact, t_exact = embed(clf, data, None)
    out = {"images": len(data), "exact_ms_per_image": round(t_exact * 1000, 1)}
    for f in factors:
        draft, t_draft = embed(clf, data, f * clf.bundle.manifest.preprocess.resize_shortest_edge)
        cos = (exact * draft).sum(axis=1)
        row = {
            "cos_min": round(float(cos.min()), 7),
            "cos_mean": round(float(cos.mean()), 7),
            "ms_per_image": round(t_draft * 1000, 1),
        }
        if labels is not None:
            same = clf.score(exact, labels).argmax(1) == clf.score(draft, labels).argmax(1)
            row["top1_unchanged"] = round(float(same.mean()), 5)
        out[f"draft x{f}"] = row
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo", default="models/demo")
    p.add_argument("--vitb32", default=None, help="a ViT-B/32-architecture bundle (random weights)")
    p.add_argument("--per-class", type=int, default=40)
    p.add_argument("--factors", default="1,2")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    import skimage.data
    from clipedge import ZeroShotClassifier
    from clipedge_export.shapes import CLASSES, render

    factors = [int(x) for x in args.factors.split(",")]
    rng = np.random.default_rng(2000)
    sizes = np.random.default_rng(1)
    demo = ZeroShotClassifier.load(args.demo, "fp32", "cpu", engine="onnxruntime")
    labels = demo.label_embeddings(CLASSES, "a photo of a {}.")
    heldout = []
    for label in CLASSES:
        colour, shape = label.split(" ")
        for _ in range(args.per_class):
            heldout.append(camera_jpeg(render(rng, colour, shape).image, int(sizes.integers(1280, 4001)), sizes))
    report = {"demo held-out set as camera JPEGs": compare(demo, heldout, factors, labels)}
    photos = []
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        im = Image.fromarray(getattr(skimage.data, name)())
        photos += [camera_jpeg(im, side, sizes) for side in (1280, 1920, 2560, 3200, 4000)]
    report["real photos, demo model"] = compare(demo, photos, factors)
    if args.vitb32:
        vit = ZeroShotClassifier.load(args.vitb32, "fp32", "cpu", engine="onnxruntime")
        report["real photos, ViT-B/32 architecture (random weights)"] = compare(vit, photos, factors)
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), **report}, indent=2))


if __name__ == "__main__":
    main()
