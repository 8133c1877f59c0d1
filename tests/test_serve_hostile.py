"""Hostile and unlucky clients against a real `clipedge serve` process on 127.0.0.1: slow remotes, deep
JSON, lone surrogates, template tricks, disconnects, slow clients, big images, broken bundles. Timing
assertions keep a margin of 10x or more over the configured limit or the expected duration."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

from .httpserver import ImageServer
from .serverproc import ServerProcess, children

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "demo"
RED = base64.b64encode((DEMO / "examples" / "red_circle.png").read_bytes()).decode()


def score_body(image: str, labels: str = "red circle, blue cross") -> dict:
    return {"input_data": {"columns": ["image", "text"], "data": [[image, labels]]}}


@pytest.fixture(scope="module")
def server():
    with ServerProcess(DEMO, "--client-timeout", "1") as s:
        yield s


def metrics_count(server, status: str) -> float:
    text = httpx.get(server.url + "/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if f'status="{status}"' in line)


# -- 3. inputs that used to give 500s ------------------------------------------------------------------
def test_malformed_json_is_400_not_500(server):
    deep = b'{"input_data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    huge_int = b'{"input_data": {"columns": ["image", "text"], "data": [[' + b"9" * 50_000 + b', "a"]]}}'
    cases = {
        "deep": (deep, "invalid_json"),
        "huge integer": (huge_int, "invalid_json"),
        "lone surrogate": (json.dumps(score_body(RED, "red circle, \ud800bad")).encode(), "invalid_labels"),
        "not UTF-8": (b'{"input_data": "\xff\xfe"}', "invalid_json"),
    }
    before = metrics_count(server, "500")
    for name, (body, code) in cases.items():
        r = httpx.post(server.url + "/score", content=body, timeout=30)
        assert r.status_code == 400, (name, r.text)
        assert r.json()["error"]["code"] == code, name
    hf = {"inputs": RED, "parameters": {"candidate_labels": ["a\ud800", "b"]}}
    assert httpx.post(server.url + "/", content=json.dumps(hf).encode()).status_code == 400
    assert metrics_count(server, "500") == before


def test_template_rule_everywhere(server):
    files = [("files", ("red.png", (DEMO / "examples" / "red_circle.png").read_bytes(), "image/png"))]
    for template in ("{}{x}", "{{}}{:>20000000}", "{0}", "no placeholder", "{}" + "x" * 300):
        t0 = time.monotonic()
        r = httpx.post(server.url + "/classify", files=files, data={"labels": "a, b", "template": template}, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_template", (template, r.text)
        assert time.monotonic() - t0 < 5  # refused before any label is formatted (it used to take 5 s of CPU)
        assert template not in r.text  # never echoed
    ok = httpx.post(server.url + "/classify", files=files, data={"labels": "a, b", "template": "a photo of a {}."})
    assert ok.status_code == 200


def test_bad_template_at_start_up_stops_the_server(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "clipedge.cli", "serve", "-m", str(DEMO), "--template", "{}{:>99999}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "--template must contain exactly one" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_body_caps_on_chunked_multipart_and_disconnects(tmp_path):
    with ServerProcess(DEMO, "--max-body-mb", "1") as s:

        def chunked_multipart():
            yield b'--XX\r\nContent-Disposition: form-data; name="labels"\r\n\r\na, b\r\n'
            yield b'--XX\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n'
            yield b"Content-Type: image/png\r\n\r\n"
            for _ in range(40):
                yield b"\0" * 65536
            yield b"\r\n--XX--\r\n"

        r = httpx.post(
            s.url + "/classify",
            content=chunked_multipart(),
            headers={"content-type": "multipart/form-data; boundary=XX"},
            timeout=30,
        )
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

        # a client that goes away mid-upload: logged as what it is, never a 500
        with socket.create_connection(("127.0.0.1", s.port)) as sock:
            sock.sendall(
                b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500000\r\n\r\n"
            )
            sock.sendall(b'{"input_data": {"columns": ["image", "text"], "data": [["' + b"A" * 100_000)
        time.sleep(1.0)
        assert metrics_count(s, "500") == 0
        assert httpx.get(s.url + "/health").status_code == 200
    log = s.output()
    assert "Traceback" not in log and "internal error" not in log


# -- 1. slow remotes -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_slow_remotes_do_not_hold_other_clients():
    with ImageServer() as remote, ServerProcess(DEMO, "--allow-private-urls") as s:
        drip = remote.url + "/drip-headers"  # a status line, then one header line a second for a minute

        def slow_request(i: int):
            t0 = time.monotonic()
            r = httpx.post(s.url + "/score", json=score_body(f"{drip}?n={i}"), timeout=120)
            return r, time.monotonic() - t0

        with ThreadPoolExecutor(16) as pool:
            slow = [pool.submit(slow_request, i) for i in range(16)]
            time.sleep(0.5)  # 16 requests now hold fetches
            t0 = time.monotonic()
            quick = httpx.post(s.url + "/score", json=score_body(RED), timeout=60)
            quick_s = time.monotonic() - t0
            results = [f.result() for f in slow]
        assert quick.status_code == 200 and quick_s < 2.0, quick_s  # base64 only: never waits behind URLs
        for r, seconds in results:
            assert r.status_code == 400 and seconds < 50  # 10x the 5 s deadline; the remote drips for 60 s
            message = r.json()["error"]["message"]
            assert f"http://127.0.0.1:{remote.httpd.server_address[1]}/drip-headers: timed out after 5 s" in message
            assert "?n=" not in message  # the query is not echoed


# -- 2. overload -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_overload_is_refused_fast_and_accepted_requests_wait_little(vitb32_bundle):
    args = ("--precision", "int8", "--max-queue-ms", "500", "--max-batch", "16")
    with ServerProcess(vitb32_bundle, *args) as s:
        body = {"input_data": {"columns": ["image", "text"], "data": [[RED, "red, blue"]] + [[RED]] * 15}}
        content, headers = json.dumps(body).encode(), {"content-type": "application/json"}

        # one client for all threads, the body encoded once: a client per call (httpx.post) costs tens of
        # CPU-ms in this process (its SSL context), and 24 threads of that measured the client, not the server
        with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=24)) as client:

            def one(_):
                t0 = time.monotonic()
                r = client.post(s.url + "/score", content=content, headers=headers)
                return r, time.monotonic() - t0

            with ThreadPoolExecutor(24) as pool:
                results = list(pool.map(one, range(48)))  # about 15 s of work offered at once
    accepted = sorted(dt for r, dt in results if r.status_code == 200)
    refused = sorted(dt for r, dt in results if r.status_code == 503)
    assert len(accepted) + len(refused) == 48 and accepted and refused
    assert all(r.headers.get("retry-after", "").isdigit() for r, _ in results if r.status_code == 503)
    assert all(r.json()["error"]["code"] == "queue_full" for r, _ in results if r.status_code == 503)
    assert refused[len(refused) // 2] < 0.5  # median refusal: 10x the 50 ms target
    assert accepted[-1] < 10 * (0.5 + 1.0)  # 10x (max-queue-ms + one batch of 16)


# -- 6, 9. addresses and echoes --------------------------------------------------------------------------
def test_messages_never_echo_the_request(server):
    cases = {
        "/etc/passwd": "<string, 11 chars>",
        "http://admin:s3cret@127.0.0.1:9/img.png?token=abc": "http://127.0.0.1:9/img.png",
        "http://169.254.169.254/latest/meta-data/?x=1": "http://169.254.169.254/latest/meta-data/",
    }
    for image, shown in cases.items():
        r = httpx.post(server.url + "/score", json=score_body(image))
        assert r.status_code == 400
        text = r.text
        assert shown in text, text
        for secret in ("s3cret", "admin", "token=abc", "passwd", "x=1"):
            assert secret not in text, text
    long_label = "secret-label-" + "x" * 400
    r = httpx.post(server.url + "/score", json=score_body(RED, long_label))
    assert r.status_code == 400 and "secret-label" not in r.text and "413 characters" in r.text


def test_link_local_needs_its_own_flag():
    with ServerProcess(DEMO, "--allow-private-urls") as s:
        r = httpx.post(s.url + "/score", json=score_body("http://169.254.169.254/latest/meta-data/"))
        assert r.status_code == 400 and "--allow-link-local-urls" in r.json()["message"]


# -- 10. slow clients and CORS ---------------------------------------------------------------------------
def test_slow_clients_are_cut_off(server):
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\n")
        reply = b""
        try:
            for i in range(30):  # one header byte a second, never finishing the head
                sock.sendall(b"X-Slow-%d: y\r\n" % i)
                time.sleep(0.5)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            reply = sock.recv(4096)
        except (ConnectionResetError, TimeoutError):
            reply = b""
    assert time.monotonic() - t0 < 10  # --client-timeout 1: cut off at 1 s, not after 15 s of dripping
    assert reply == b"" or reply.startswith(b"HTTP/1.1 408")

    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        head = b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
        sock.sendall(head)
        reply = b""
        try:
            for _ in range(40):  # a body at 2 bytes a second
                sock.sendall(b"{ ")
                time.sleep(0.5)
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    reply = sock.recv(4096)
                sock.setblocking(True)
                if reply:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
    assert time.monotonic() - t0 < 10 and reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"request_timeout" in reply


def test_cors_preflight_with_an_api_key():
    env = {"CLIPEDGE_TEST_KEY": "k3y"}
    args = ("--api-key-env", "CLIPEDGE_TEST_KEY", "--cors", "https://app.example")
    with ServerProcess(DEMO, *args, env=env) as s:
        pre = httpx.options(
            s.url + "/score",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert pre.status_code == 200, pre.text
        assert pre.headers["access-control-allow-origin"] == "https://app.example"
        assert "authorization" in pre.headers["access-control-allow-headers"].lower()
        r = httpx.post(
            s.url + "/score",
            json=score_body(RED),
            headers={"Origin": "https://app.example", "Authorization": "Bearer k3y"},
        )
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
        assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
        denied = httpx.post(s.url + "/score", json=score_body(RED), headers={"Origin": "https://app.example"})
        assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == "https://app.example"
        other = httpx.options(
            s.url + "/score", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
        )
        assert "access-control-allow-origin" not in other.headers


# -- 7. memory -------------------------------------------------------------------------------------------
def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def tree_mb(pid: int) -> float:
    """Resident memory of the server and its decoding processes."""
    total = 0.0
    for p in {pid, *children(pid)}:
        with contextlib.suppress(OSError, KeyError):
            total += rss_mb(p)
    return total


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_big_images_at_once_stay_within_the_pixel_budget():
    buf = io.BytesIO()
    Image.new("RGB", (7000, 7000), (200, 30, 30)).save(buf, format="PNG")  # 49 MP, 147 MB decoded
    png = base64.b64encode(buf.getvalue()).decode()
    with ServerProcess(DEMO, "--decode-workers", "4") as s:  # more decoders than the budget lets work at once
        httpx.post(s.url + "/score", json=score_body(RED))
        time.sleep(1.0)
        assert len(children(s.proc.pid)) >= 4
        idle = tree_mb(s.proc.pid)
        samples: list[float] = []
        done = threading.Event()

        def sample() -> None:  # the processes' peaks come at different times: sum them at the same instants
            while not done.is_set():
                samples.append(tree_mb(s.proc.pid))
                time.sleep(0.01)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            with ThreadPoolExecutor(8) as pool:
                codes = list(
                    pool.map(
                        lambda _: httpx.post(s.url + "/score", json=score_body(png), timeout=120).status_code,
                        range(8),
                    )
                )
        finally:
            done.set()
            sampler.join()
        assert codes == [200] * 8
        peak = max(samples)
        time.sleep(10)
        after = tree_mb(s.proc.pid)
    print(f"idle {idle:.0f} MB, peak {peak:.0f} MB, 10 s later {after:.0f} MB (server and decoders)")
    assert peak - idle < 600 and after - idle < 100, (idle, peak, after)


# -- 8. start-up faults ----------------------------------------------------------------------------------
def tampered(tiny_bundle: Path, tmp_path: Path) -> Path:
    b = tmp_path / "tampered"
    shutil.copytree(tiny_bundle, b)
    data = bytearray((b / "vision.int8.onnx").read_bytes())
    data[-5] ^= 0xFF
    (b / "vision.int8.onnx").write_bytes(bytes(data))
    return b


def with_external_data_outside(tiny_bundle: Path, tmp_path: Path) -> Path:
    """A bundle whose fp32 vision tower points an initializer at a file outside the bundle (manifest
    hashes updated, so only ONNX Runtime can notice)."""
    import onnx
    from clipedge.bundle import file_entry, load_bundle, write_manifest

    b = tmp_path / "external"
    shutil.copytree(tiny_bundle, b)
    (tmp_path / "outside.bin").write_bytes(b"\0" * 4096)
    model = onnx.load(str(b / "vision.fp32.onnx"))
    init = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    init.ClearField("raw_data")
    init.data_location = onnx.TensorProto.EXTERNAL
    del init.external_data[:]
    for key, value in (("location", "../outside.bin"), ("offset", "0"), ("length", "4096")):
        entry = init.external_data.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(b / "vision.fp32.onnx"))
    manifest = load_bundle(b, verify=False).manifest
    from dataclasses import replace

    fp32 = replace(manifest.precisions["fp32"], vision=file_entry(b, "vision.fp32.onnx"))
    write_manifest(b, replace(manifest, precisions={**manifest.precisions, "fp32": fp32}))
    return b


def serve_exit(bundle: Path, *args: str) -> subprocess.CompletedProcess:
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    number = port.getsockname()[1]
    port.close()
    cmd = [sys.executable, "-m", "clipedge.cli", "serve", "-m", str(bundle), "--port", str(number), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_a_model_that_cannot_load_stops_the_server(tiny_bundle, tmp_path):
    cases = [
        (tampered(tiny_bundle, tmp_path), ("--precision", "int8"), "does not match its sha256"),
        (with_external_data_outside(tiny_bundle, tmp_path), ("--precision", "fp32"), "ONNX Runtime cannot load"),
    ]
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        cases.append((tiny_bundle, ("--provider", "cuda"), "CUDAExecutionProvider is not available"))
    for bundle, args, reason in cases:
        t0 = time.monotonic()
        proc = serve_exit(bundle, *args)
        assert proc.returncode == 1, proc.stderr[-2000:]
        assert time.monotonic() - t0 < 60
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("clipedge: error: model failed to load: ") and reason in last, proc.stderr[-2000:]
        assert str(tmp_path) not in last and "Traceback" not in proc.stderr


def test_fallback_serves_on_the_cpu_with_a_warning(tiny_bundle):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with ServerProcess(tiny_bundle, "--provider", "cuda", "--provider-fallback") as s:
        ready = httpx.get(s.url + "/ready").json()
        assert ready["providers"] == ["CPUExecutionProvider"] and ready["precision"] == "int8"
        assert "/" not in ready["bundle"]
    assert "falling back to CPUExecutionProvider" in s.output()


def test_classify_on_a_broken_bundle_is_one_line(tiny_bundle, tmp_path):
    bundle = with_external_data_outside(tiny_bundle, tmp_path)
    cmd = [sys.executable, "-m", "clipedge.cli", "classify", str(DEMO / "examples" / "red_circle.png")]
    proc = subprocess.run(
        [*cmd, "-m", str(bundle), "--precision", "fp32", "--labels", "a, b"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "vision.fp32.onnx: ONNX Runtime cannot load this model" in lines[0], proc.stderr


@pytest.mark.slow
def test_work_of_a_client_that_went_away_is_dropped(vitb32_bundle):
    args = ("--precision", "int8", "--max-batch", "4", "--max-queue-ms", "60000")
    with ServerProcess(vitb32_bundle, *args) as s:
        body = {"input_data": {"columns": ["image", "text"], "data": [[RED, "red, blue"]] + [[RED]] * 31}}
        payload = json.dumps(body).encode()

        def images_run() -> float:
            text = httpx.get(s.url + "/metrics").text
            return sum(float(x.split()[1]) for x in text.splitlines() if x.startswith("clipedge_batch_size_sum"))

        before = images_run()
        stayed = ThreadPoolExecutor(1).submit(lambda: httpx.post(s.url + "/score", content=payload, timeout=120))
        time.sleep(0.3)  # its 32 images (8 batches, about 0.6 s) are running
        with socket.create_connection(("127.0.0.1", s.port)) as sock:  # the same work, then gone
            head = f"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: {len(payload)}\r\n\r\n"
            sock.sendall(head.encode() + payload)
            time.sleep(0.2)
        assert stayed.result().status_code == 200
        time.sleep(2.0)
        ran = images_run() - before
    assert ran < 64, ran  # the second request's images were dropped from the queue, not run


def test_replies_before_the_body_close_the_connection():
    env = {"CLIPEDGE_TEST_KEY": "k3y"}
    with ServerProcess(DEMO, "--api-key-env", "CLIPEDGE_TEST_KEY", "--max-body-mb", "1", env=env) as s:
        for head in (
            b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 999999\r\n\r\n",  # no key
            b"POST /score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k3y\r\nContent-Length: 99999999\r\n\r\n",
        ):
            with socket.create_connection(("127.0.0.1", s.port), timeout=10) as sock:
                sock.sendall(head + b"{")
                reply = b""
                t0 = time.monotonic()
                while time.monotonic() - t0 < 10:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break  # closed by the server: nobody can hold it open by dripping the body
                    reply += chunk
            assert reply.split(b"\r\n")[0] in (b"HTTP/1.1 401 Unauthorized", b"HTTP/1.1 413 Request Entity Too Large")
            assert b"connection: close" in reply.lower() and time.monotonic() - t0 < 10


def test_text_tower_work_is_bounded_and_malformed_urls_are_400(server):
    r = httpx.post(server.url + "/score", json=score_body("http://[::1/x.png"))
    assert r.status_code == 400 and "malformed URL" in r.json()["message"]
    texts = {"texts": [f"a text of some length number {i}" for i in range(1000)]}
    with ThreadPoolExecutor(32) as pool:
        codes = list(
            pool.map(lambda _: httpx.post(server.url + "/embed/text", json=texts, timeout=120).status_code, range(32))
        )
    assert set(codes) <= {200, 503} and 200 in codes
    assert httpx.post(server.url + "/score", json=score_body(RED), timeout=60).status_code == 200


@pytest.mark.slow
def test_a_slow_remote_does_not_make_the_server_refuse_others():
    with ImageServer() as remote, ServerProcess(DEMO, "--allow-private-urls", "--max-queue-ms", "200") as s:
        body = {
            "input_data": {
                "columns": ["image", "text"],
                "data": [[remote.url + f"/drip-headers?{i}", "a, b"] for i in range(16)],
            }
        }
        stop = time.monotonic() + 12

        def attacker():
            while time.monotonic() < stop:
                httpx.post(s.url + "/score", json=body, timeout=60)

        with ThreadPoolExecutor(2) as pool:
            attack = pool.submit(attacker)
            time.sleep(1.0)
            codes = []
            while time.monotonic() < stop - 1:
                codes.append(httpx.post(s.url + "/score", json=score_body(RED), timeout=30).status_code)
                time.sleep(0.1)
            attack.result()
    assert codes and codes.count(200) / len(codes) > 0.9, codes


# -- issue 21: fair share, chunk floods, hung decoders ---------------------------------------------------------
def test_a_body_of_tiny_chunks_is_cut_off_and_others_are_served(server):
    """10^5 one-byte chunks and no end: the server does not wait for the rest (it answers 400 naming the
    chunk size, or closes the connection, long before its 1 s client timeout would answer 408), and keeps
    answering everyone else; a chunked body in chunks of a normal size is read as ever."""
    head = b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        answer = b""
        try:
            sock.sendall(head + b"1\r\n{\r\n" * 100_000)
            sock.settimeout(0.5)
            answer = sock.recv(4096)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed with the rest unread: the kernel resets the connection
    assert not answer or answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert not answer or b"chunks_too_small" in answer
    t0 = time.monotonic()
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200
    assert time.monotonic() - t0 < 1.0  # 10x the 100 ms target (figures: bench.serve_load --chunk-flood)

    body = json.dumps(score_body(RED)).encode()

    def pieces():
        for i in range(0, len(body), 4096):
            yield body[i : i + 4096]

    r = httpx.post(server.url + "/score", content=pieces(), headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 200, r.text


@pytest.mark.slow
def test_heavy_clients_slow_themselves_not_a_light_one():
    """Four clients sending 16 one-bit PNGs of 49 megapixels a request back to back (the per-request cap
    lifted, so that their work is admitted and done), one light client sending a small image every 0.5 s,
    each from its own loopback address: the light client is answered (figures, and the 2 s p99 target, in
    bench.serve_load --attack); the heavy ones still get answers. One honest client sending 12 Full-HD JPEGs a
    request does not make the light client's requests fail either."""
    from bench.serve_load import attack, full_hd_jpeg, heavy_png
    from bench.serve_load import score_body as bench_body

    with ServerProcess(DEMO, "--max-request-pixels", "1000000000") as s:
        row = asyncio.run(attack(s.port, bench_body(heavy_png(49), 16), 4, 16, 10))
        light, heavy = row["light"], row["heavy"]
        assert light["requests"] >= 15 and light["share_200"] >= 0.95, row
        assert light["all_p99_ms"] < 10 * 500, row  # 10x what a light request waits for (one 49 MP decode)
        assert heavy["answered_200"] >= 1, row
        honest = asyncio.run(attack(s.port, bench_body(full_hd_jpeg(), 12), 1, 12, 6))
        assert honest["light"]["share_200"] == 1.0 and honest["heavy"]["answered_200"] >= 1, honest
    with ServerProcess(DEMO) as s:  # the default per-request cap: such a request is refused, naming the cap
        r = httpx.post(s.url + "/score", content=bench_body(heavy_png(49), 16), timeout=30)
        assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_pixels"
        assert "the limit is 256,000,000 a request" in r.json()["message"]
