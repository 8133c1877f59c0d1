"""Image decode + preprocessing speed: clipedge vs transformers' CLIPImageProcessor, and JPEG draft mode.

    python -m bench.preprocess [--bundle models/demo] [--repeat 20]

Inputs: scikit-image's photographs (astronaut, coffee, chelsea, rocket) as PNG, and the same photos
upscaled to 1920x1080 and 4000x3000 as JPEG (camera-sized). Reports the median time per image for
decode + preprocess and for preprocessing alone (from a decoded image), the max pixel difference to
CLIPImageProcessor, the pixel difference of the draft-mode path (libjpeg decodes at 1/2..1/8 scale), and,
with --bundle, the embedding cosine between the plain and the draft-mode path.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time

import numpy as np
from PIL import Image

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def photos() -> dict[str, bytes]:
    import skimage.data

    out = {}
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        im = Image.fromarray(getattr(skimage.data, name)())
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        out[f"{name}.png"] = buf.getvalue()
        for size in ((1920, 1080), (4000, 3000)):
            buf = io.BytesIO()
            im.resize(size, Image.Resampling.BICUBIC).save(buf, format="JPEG", quality=90)
            out[f"{name}-{size[0]}x{size[1]}.jpg"] = buf.getvalue()
    return out


def median_ms(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=None, help="bundle for the draft-mode embedding check")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", default=None, help="write results here")
    args = parser.parse_args(argv)

    from clipedge.bundle import Preprocess
    from clipedge.images import DecodePolicy, load_image
    from clipedge.preprocess import preprocess
    from transformers import CLIPImageProcessor

    spec = Preprocess(224, "bicubic", (224, 224), True, 1 / 255, OPENAI_MEAN, OPENAI_STD)
    hf = CLIPImageProcessor(
        size={"shortest_edge": 224},
        crop_size={"height": 224, "width": 224},
        image_mean=OPENAI_MEAN,
        image_std=OPENAI_STD,
    )
    plain, draft = DecodePolicy(), DecodePolicy(draft=224)
    clf = None
    if args.bundle:
        from clipedge import ZeroShotClassifier

        clf = ZeroShotClassifier.load(args.bundle, precision="fp32", provider="cpu")
        spec = clf.bundle.manifest.preprocess
        draft = DecodePolicy(draft=spec.resize_shortest_edge)
    rows = []
    for name, data in photos().items():
        ours = median_ms(lambda d=data: preprocess(load_image(d, plain), spec), args.repeat)
        ours_draft = median_ms(lambda d=data: preprocess(load_image(d, draft), spec), args.repeat)
        theirs = median_ms(
            lambda d=data: hf(images=[Image.open(io.BytesIO(d)).convert("RGB")], return_tensors="np"), args.repeat
        )
        decoded = load_image(data, plain)
        only_ours = median_ms(lambda im=decoded: preprocess(im, spec), args.repeat)
        only_theirs = median_ms(lambda im=decoded: hf(images=[im], return_tensors="np"), args.repeat)
        a = preprocess(decoded, spec)
        b = hf(images=[Image.open(io.BytesIO(data)).convert("RGB")], return_tensors="np")["pixel_values"][0]
        row = {
            "image": name,
            "clipedge_ms": round(ours, 2),
            "clipedge_draft_ms": round(ours_draft, 2),
            "transformers_ms": round(theirs, 2),
            "speedup": round(theirs / ours, 2),
            "preprocess_only_clipedge_ms": round(only_ours, 2),
            "preprocess_only_transformers_ms": round(only_theirs, 2),
            "preprocess_only_speedup": round(only_theirs / only_ours, 2),
            "max_abs_diff_vs_transformers": float(np.abs(a - b).max()) if a.shape == b.shape else None,
        }
        d = preprocess(load_image(data, draft), spec)
        row["draft_pixel_max_abs_diff"] = round(float(np.abs(a - d).max()), 4)
        row["draft_pixel_mean_abs_diff"] = round(float(np.abs(a - d).mean()), 4)
        if clf is not None:
            e1 = clf.encoder.embed_pixels(a[None])[0]
            e2 = clf.encoder.embed_pixels(preprocess(load_image(data, draft), spec)[None])[0]
            row["draft_embedding_cos"] = round(float(e1 @ e2), 6)
        rows.append(row)
        print(json.dumps(row))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
