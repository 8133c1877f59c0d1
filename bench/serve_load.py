"""Load test of `clipedge serve`: 1, 8, 32 concurrent clients, each sending one-image Azure /score requests
back to back over keep-alive connections; the in-process baselines are measured in the same run.

    python -m bench.serve_load --bundle BUNDLE [--precision int8] [--clients 1,8,32] [--seconds 15]
    python -m bench.serve_load --bundle BUNDLE --overload 64x64 [--max-queue-ms 1000] [--backoff-s 0]

Overload mode: C clients each send requests of N images back to back (after a 503 they wait its
Retry-After, at least --backoff-s, as well-behaved clients do); reported: accepted and refused p50/p99
(refused also after the first second: the cold start, before the server has seen what a request weighs),
the refused share, connections reset before an answer, accepted images per second, and the CPU the load
generator itself used (cores, from its process time).

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


async def client(
    host: str,
    port: int,
    request: bytes,
    stop_at: float,
    latencies: list,
    errors: list,
    backoff: float = 0.0,
    resets: list | None = None,
    starts: dict | None = None,
) -> None:
    """Send `request` back to back until `stop_at`; (re)connects when the server closes the connection."""
    reader = writer = None
    try:
        while time.perf_counter() < stop_at:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            t0 = time.perf_counter()
            try:
                writer.write(request)
                await writer.drain()
                status_line = await reader.readline()
                if not status_line:
                    raise ConnectionResetError
                status = int(status_line.split()[1])
                length, close, retry = 0, False, 0.0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                    if line.lower().startswith(b"retry-after:"):
                        retry = float(line.split(b":")[1])
                    close = close or line.lower().startswith(b"connection: close")
                await reader.readexactly(length)
            except (ConnectionError, asyncio.IncompleteReadError):
                if resets is not None:
                    resets.append(time.perf_counter() - t0)
                writer.close()
                reader = writer = None
                continue
            (latencies if status == 200 else errors).append(time.perf_counter() - t0)
            if starts is not None:
                starts[status == 200].append(t0)
            if close:
                writer.close()
                reader = writer = None
            if status != 200 and (backoff or retry):
                if writer is not None:  # a new connection after the pause, as clients do after a long backoff
                    writer.close()
                reader = writer = None
                await asyncio.sleep(max(backoff, retry))  # as clients that honour Retry-After do
    finally:
        if writer is not None:
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


def percentiles(seconds: list[float]) -> dict:
    if not seconds:
        return {"p50_ms": None, "p99_ms": None}
    ms = np.array(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1)}


async def overload(
    host: str, port: int, body: bytes, clients: int, images: int, seconds: float, backoff: float
) -> dict:
    head = (
        f"POST /score HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    accepted: list[float] = []
    refused: list[float] = []
    resets: list[float] = []
    starts: dict[bool, list[float]] = {True: [], False: []}  # when each accepted / refused request was sent
    cpu0, start = time.process_time(), time.perf_counter()
    request = head.encode() + body
    await asyncio.gather(
        *(
            client(host, port, request, start + seconds, accepted, refused, backoff, resets, starts)
            for _ in range(clients)
        )
    )
    # the first second is a cold start: the server has not yet seen what a request weighs, so the opening
    # burst is read before it is refused; reported apart from the steady state
    steady = [t for t, t0 in zip(refused, starts[False], strict=True) if t0 - start >= 1.0]
    elapsed = time.perf_counter() - start
    total = len(accepted) + len(refused)
    return {
        "clients": clients,
        "images_per_request": images,
        "backoff_s": backoff,
        "seconds": round(elapsed, 1),
        "requests": total,
        "accepted": {"n": len(accepted), **percentiles(accepted)},
        "refused": {"n": len(refused), **percentiles(refused)},
        "refused_after_first_second": {"n": len(steady), **percentiles(steady)},
        "refused_share": round(len(refused) / total, 3) if total else None,
        "connections_reset": len(resets),
        "accepted_img_per_s": round(len(accepted) * images / elapsed, 1),
        "load_generator_cpu_cores": round((time.process_time() - cpu0) / elapsed, 2),
    }


def score_body(image: bytes, n: int) -> bytes:
    b64 = base64.b64encode(image).decode()
    rows = [[b64, LABELS]] + [[b64]] * (n - 1)
    return json.dumps({"input_data": {"columns": ["image", "text"], "index": list(range(n)), "data": rows}}).encode()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--json", default=None)
    parser.add_argument("--overload", default=None, help="CLIENTSxIMAGES, e.g. 64x64: the overload mode")
    parser.add_argument("--max-queue-ms", type=float, default=1000.0)
    parser.add_argument("--server-arg", action="append", default=[], help="extra `clipedge serve` argument")
    parser.add_argument("--backoff-s", type=float, default=0.0, help="overload: least pause after a 503")
    args = parser.parse_args(argv)

    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.serverproc import ServerProcess

    image = request_image()
    base = baselines(args.bundle, args.precision, image)
    print(json.dumps(base))
    rows = []
    server_args = ["--precision", args.precision, "--max-batch", str(args.max_batch), *args.server_arg]
    if args.overload:
        server_args += ["--max-queue-ms", str(args.max_queue_ms)]
    else:  # throughput and latency, not admission
        server_args += ["--queue-size", "1024", "--max-queue-ms", "60000"]
    server = ServerProcess(args.bundle, *server_args)
    try:
        server.wait_ready()
        if args.overload:
            clients, images = (int(x) for x in args.overload.lower().split("x"))
            body = score_body(image, images)
            row = asyncio.run(overload("127.0.0.1", server.port, body, clients, images, args.seconds, args.backoff_s))
            row["max_queue_ms"] = args.max_queue_ms
            row["vs_offline_best"] = round(row["accepted_img_per_s"] / base["offline_best_img_per_s"], 3)
            rows.append(row)
            print(json.dumps(row))
        for n in [] if args.overload else [int(c) for c in args.clients.split(",")]:
            row = asyncio.run(load("127.0.0.1", server.port, score_body(image, 1), n, args.seconds))
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
