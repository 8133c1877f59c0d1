"""Load test of `clipedge serve`: 1, 8, 32 concurrent clients, each sending one-image Azure /score requests
back to back over keep-alive connections; the in-process baselines are measured in the same run.

    python -m bench.serve_load --bundle BUNDLE [--precision int8] [--clients 1,8,32] [--seconds 15]

Baselines (same bundle, same precision, measured before the server starts, in this process):
- offline batch throughput: the vision tower on already-preprocessed tensors, best of batch 8/16/32;
- in-process classify latency: ZeroShotClassifier.classify of one image (decode, preprocess, vision,
  probabilities; labels cached), p50.
The client is a minimal asyncio HTTP/1.1 client with a pre-built body, so it costs the 2-core machine
little next to the server.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import platform
import time
from pathlib import Path

import numpy as np
from PIL import Image

from .timing import time_runs

LABELS = "a photo of a cat, a photo of a dog, a red circle, a blue square, a bird"


def request_image(size=(320, 240)) -> bytes:
    """A JPEG of a typical small upload (gradient + shape), the same bytes for every request."""
    x = np.linspace(0, 255, size[0], dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, size[1], dtype=np.float32)[:, None, None]
    arr = np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def baselines(bundle: str, precision: str, image: bytes) -> dict:
    from clipedge import ZeroShotClassifier

    clf = ZeroShotClassifier.load(bundle, precision=precision, provider="cpu")
    h, w = clf.bundle.manifest.preprocess.crop_size
    best = 0.0
    per_batch = {}
    for b in (8, 16, 32):
        x = np.random.default_rng(0).standard_normal((b, 3, h, w)).astype(np.float32)
        t = time_runs(lambda x=x, b=b: clf.encoder.embed_pixels(x, batch_size=b), warmup=2, iters=10, min_seconds=2)
        per_batch[b] = round(b * 1000 / t["p50_ms"], 1)
        best = max(best, per_batch[b])
    labels = [s.strip() for s in LABELS.split(",")]
    clf.label_embeddings(labels)
    t = time_runs(lambda: clf.classify([image], labels), warmup=5, iters=50, min_seconds=3)
    return {"offline_img_per_s_by_batch": per_batch, "offline_best_img_per_s": best, "inprocess_classify_1": t}


async def client(host: str, port: int, request: bytes, stop_at: float, latencies: list, errors: list) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            writer.write(request)
            await writer.drain()
            status = int((await reader.readline()).split()[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            (latencies if status == 200 else errors).append(time.perf_counter() - t0)
    finally:
        writer.close()


async def load(host: str, port: int, body: bytes, clients: int, seconds: float) -> dict:
    head = (
        f"POST /score HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    latencies: list[float] = []
    errors: list[float] = []
    warm_until = time.perf_counter() + 2
    await asyncio.gather(*(client(host, port, head + body, warm_until, [], []) for _ in range(clients)))
    start = time.perf_counter()
    await asyncio.gather(*(client(host, port, head + body, start + seconds, latencies, errors) for _ in range(clients)))
    elapsed = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": len(errors),
        "req_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.serverproc import ServerProcess

    image = request_image()
    base = baselines(args.bundle, args.precision, image)
    print(json.dumps(base))
    body = json.dumps(
        {
            "input_data": {
                "columns": ["image", "text"],
                "index": [0],
                "data": [[base64.b64encode(image).decode(), LABELS]],
            }
        }
    ).encode()
    rows = []
    server = ServerProcess(
        args.bundle, "--precision", args.precision, "--max-batch", str(args.max_batch), "--queue-size", "1024"
    )
    try:
        server.wait_ready()
        for n in [int(c) for c in args.clients.split(",")]:
            row = asyncio.run(load("127.0.0.1", server.port, body, n, args.seconds))
            row["vs_offline_best"] = round(row["req_per_s"] / base["offline_best_img_per_s"], 3)
            row["p50_vs_inprocess"] = round(row["p50_ms"] / base["inprocess_classify_1"]["p50_ms"], 3)
            rows.append(row)
            print(json.dumps(row))
    finally:
        server.stop()
    report = {
        "bundle": args.bundle,
        "precision": args.precision,
        "machine": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
        "baselines": base,
        "rows": rows,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
