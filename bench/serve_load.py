"""Load test of `clipedge serve`: 1, 8, 32 concurrent clients, each sending one-image Azure /score requests
back to back over keep-alive connections; the in-process baselines are measured in the same run.

    python -m bench.serve_load --bundle BUNDLE [--precision int8] [--clients 1,8,32] [--seconds 15]
    python -m bench.serve_load --bundle BUNDLE --overload 64x64 [--max-queue-ms 1000] [--backoff-s 0]
    python -m bench.serve_load --bundle BUNDLE --attack 4 [--heavy 16x49] [--seconds 20]
    python -m bench.serve_load --bundle BUNDLE --honest 12 [--seconds 20]
    python -m bench.serve_load --bundle BUNDLE --chunk-flood 1000000

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

Attack mode (issue 21): N heavy clients send, back to back, requests of 16 one-bit PNGs of 49 megapixels
each (a few KB on the wire each; after a 503 they wait its Retry-After), while one light client sends one
small image every 0.5 s (on time, each on a connection of its own, whatever the earlier ones wait); each client
connects from its own loopback address (127.0.0.2, 127.0.0.3, ...: the server tells clients apart by
address). Reported: the light client's answered share, its p50/p99 and status codes, and the heavy clients'
answered requests and images per second. Honest mode: one client sends 12 Full-HD JPEGs per request back to
back, beside the same light client. Chunk-flood mode: one client sends a /score body as N one-byte chunks
while /health is probed every 20 ms and a one-image /score is sent every 0.25 s from other connections.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
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
    source: str | None = None,
    statuses: list | None = None,
) -> None:
    """Send `request` back to back until `stop_at`, from the local address `source` when given; (re)connects
    when the server closes the connection."""
    reader = writer = None
    local = (source, 0) if source else None
    try:
        while time.perf_counter() < stop_at:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port, local_addr=local)
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
            if statuses is not None:
                statuses.append(status)
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


def heavy_png(megapixels: float) -> bytes:
    """A one-bit PNG of `megapixels` (square): a few KB on the wire, `megapixels` of work to decode."""
    side = int((megapixels * 1e6) ** 0.5)
    buf = io.BytesIO()
    Image.new("1", (side, side), 1).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def full_hd_jpeg() -> bytes:
    """A 1920x1080 JPEG photo-like image (smooth gradient with noise), about what a phone sends."""
    rng = np.random.default_rng(0)
    base = np.asarray(Image.fromarray(rng.integers(0, 256, (9, 16, 3), dtype=np.uint8)).resize((1920, 1080)))
    noisy = np.clip(base.astype(np.float32) + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noisy).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def post(body: bytes, path: str = "/score", host: str = "127.0.0.1") -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def attack(port: int, heavy_body: bytes, heavy_clients: int, heavy_images: int, seconds: float) -> dict:
    """`heavy_clients` clients sending `heavy_body` back to back and one light client sending one small image
    every 0.5 s, each from its own loopback address."""
    light_ok: list[float] = []
    light_bad: list[float] = []
    light_status: list[int] = []
    heavy_ok: list[float] = []
    heavy_bad: list[float] = []
    heavy_status: list[int] = []
    start = time.perf_counter()
    stop = start + seconds
    light_request = post(score_body(request_image(), 1))

    async def one_light() -> None:  # its own connection: sent on time, whatever the previous one waits for
        await client("127.0.0.1", port, light_request, time.perf_counter() + 0.001, light_ok, light_bad,
                     source="127.0.0.2", statuses=light_status)  # fmt: skip

    async def light_client() -> None:
        tasks = []
        while time.perf_counter() < stop:
            tasks.append(asyncio.ensure_future(one_light()))
            await asyncio.sleep(0.5)
        await asyncio.gather(*tasks)

    light = light_client()
    heavy = [
        client(
            "127.0.0.1",
            port,
            post(heavy_body),
            stop,
            heavy_ok,
            heavy_bad,
            source=f"127.0.0.{10 + i}",
            statuses=heavy_status,
        )
        for i in range(heavy_clients)
    ]
    await asyncio.gather(light, *heavy)
    elapsed = time.perf_counter() - start
    light_all = light_ok + light_bad
    return {
        "heavy_clients": heavy_clients,
        "heavy_images_per_request": heavy_images,
        "seconds": round(elapsed, 1),
        "light": {
            "requests": len(light_all),
            "answered_200": len(light_ok),
            "share_200": round(len(light_ok) / len(light_all), 3) if light_all else None,
            "statuses": {str(k): light_status.count(k) for k in sorted(set(light_status))},
            **{f"all_{k}": v for k, v in percentiles(light_all).items()},
            **{f"ok_{k}": v for k, v in percentiles(light_ok).items()},
        },
        "heavy": {
            "answered_200": len(heavy_ok),
            "refused_or_failed": len(heavy_bad),
            "statuses": {str(k): heavy_status.count(k) for k in sorted(set(heavy_status))},
            "images_per_s": round(len(heavy_ok) * heavy_images / elapsed, 2),
            **percentiles(heavy_ok),
        },
    }


async def chunk_flood(port: int, chunks: int) -> dict:
    """A client sends /score bodies as one-byte chunks as fast as it can, `chunks` in all (a new connection
    whenever the server closes one); meanwhile /health is probed every 20 ms and a one-image /score sent every
    0.25 s, each on its own connection."""
    done = asyncio.Event()
    outcome: dict = {"connections": 0, "statuses": []}
    body = score_body(request_image(), 1)

    async def one_body(first: int) -> int:
        """One connection's body, from chunk `first`: the chunks it sent before the server stopped it."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        outcome["connections"] += 1
        writer.write(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")  # fmt: skip
        sent = first
        status: int | str = "connection closed"
        try:
            block = 4096  # chunks per write: as fast as the socket takes them
            while sent < chunks:
                n = min(block, chunks - sent)
                data = b"".join(b"1\r\n" + body[(sent + k) % len(body) : (sent + k) % len(body) + 1] + b"\r\n"
                                for k in range(n))  # fmt: skip
                writer.write(data)
                await writer.drain()
                sent += n
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            line = await reader.readline()
            status = int(line.split()[1]) if line else status
        except (ConnectionError, asyncio.IncompleteReadError):
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, IndexError, ValueError):
                line = await reader.readline()
                status = int(line.split()[1]) if line.startswith(b"HTTP/") else status
        outcome["statuses"].append(status)
        writer.close()
        return sent

    async def flood() -> None:
        t0 = time.perf_counter()
        sent = 0
        while sent < chunks:
            sent = max(sent + 1, await one_body(sent))
        outcome["chunks_sent"] = sent
        outcome["seconds"] = round(time.perf_counter() - t0, 2)
        outcome["statuses"] = {str(k): outcome["statuses"].count(k) for k in set(outcome["statuses"])}
        done.set()

    health: list[float] = []
    score_ok: list[float] = []
    score_bad: list[float] = []

    async def probe() -> None:
        while not done.is_set():
            t0 = time.perf_counter()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            await reader.read()
            writer.close()
            health.append(time.perf_counter() - t0)
            await asyncio.sleep(0.02)

    async def scores() -> None:
        request = post(score_body(request_image(), 1))
        while not done.is_set():
            await client("127.0.0.1", port, request, time.perf_counter() + 0.001, score_ok, score_bad)
            await asyncio.sleep(0.25)

    await asyncio.gather(flood(), probe(), scores())
    return {
        "chunks": chunks,
        "flood": outcome,
        "health": {"n": len(health), **percentiles(health), "max_ms": round(max(health) * 1000, 1) if health else None},
        "score_1_image": {"ok": len(score_ok), "failed": len(score_bad), **percentiles(score_ok + score_bad),
                          "max_ms": round(max(score_ok + score_bad) * 1000, 1) if score_ok + score_bad else None},
    }  # fmt: skip


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
    parser.add_argument("--attack", type=int, default=None, help="N heavy clients beside one light client")
    parser.add_argument("--heavy", default="16x49", help="attack: IMAGESxMEGAPIXELS per heavy request")
    parser.add_argument("--honest", type=int, default=None, help="one client sending N Full-HD JPEGs a request")
    parser.add_argument("--chunk-flood", type=int, default=None, help="a body sent as N one-byte chunks")
    args = parser.parse_args(argv)

    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.serverproc import ServerProcess

    if args.attack is not None or args.honest is not None or args.chunk_flood is not None:
        return hostile(args)
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


def hostile(args: argparse.Namespace) -> None:
    """The attack, honest and chunk-flood modes against one `clipedge serve` (its defaults, but the precision)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.serverproc import ServerProcess

    server = ServerProcess(args.bundle, "--precision", args.precision, *args.server_arg)
    try:
        server.wait_ready()
        if args.chunk_flood is not None:
            row = asyncio.run(chunk_flood(server.port, args.chunk_flood))
        elif args.honest is not None:
            body = score_body(full_hd_jpeg(), args.honest)
            row = asyncio.run(attack(server.port, body, 1, args.honest, args.seconds))
            row["mode"] = f"honest: {args.honest} Full-HD JPEGs a request"
        else:
            images, megapixels = args.heavy.lower().split("x")
            body = score_body(heavy_png(float(megapixels)), int(images))
            row = asyncio.run(attack(server.port, body, args.attack, int(images), args.seconds))
            row["mode"] = f"attack: {args.attack} clients x {images} one-bit PNGs of {megapixels} MP a request"
            row["heavy_body_bytes"] = len(body)
    finally:
        server.stop()
    report = {
        "bundle": args.bundle,
        "precision": args.precision,
        "machine": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
        "row": row,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
