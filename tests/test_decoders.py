"""Decoding in worker processes (clipedge.decoders) and what the endpoint's users see of it: the same
pixels and messages as the in-process path, one pixel budget across processes, a fair share between clients,
a dead worker replaced, a hung one killed at its deadline with only the image that hung it failing, no
worker outliving its server (even a killed one)."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from clipedge.bundle import load_bundle
from clipedge.decoders import Deadline, DecoderCrashed, DecoderPool
from clipedge.images import DecodePolicy, ImageError, probe_pixels
from clipedge.preprocess import prepare_pixels
from PIL import Image

from .serverproc import ServerProcess, alive, children

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "demo"
SPEC = load_bundle(DEMO, verify=False).manifest.preprocess
UNTRUSTED = DecodePolicy(allow_paths=False)


def encoded(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def truncated_gif() -> bytes:
    frames = [Image.new("P", (64, 48), i) for i in range(3)]
    data = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:])
    return data[: len(data) // 2]


SOURCES = {
    "png": encoded(Image.new("RGB", (90, 60), (200, 30, 30)), "PNG"),
    "jpeg": encoded(Image.effect_mandelbrot((320, 240), (-2, -1.2, 1, 1.2), 50).convert("RGB"), "JPEG"),
    "rgba base64": base64.b64encode(encoded(Image.new("RGBA", (40, 70), (0, 0, 255, 90)), "PNG")).decode(),
    "truncated gif": truncated_gif(),
    "not an image": b"just some bytes",
    "bad base64": "%%%not base64%%%",
}


def run(coro):
    return asyncio.run(coro)


def test_workers_give_the_in_process_pixels_and_messages():
    async def main():
        decoders = DecoderPool(2, UNTRUSTED, SPEC, 10_000_000)
        try:
            await asyncio.gather(*(asyncio.wrap_future(f) for f in decoders.start()))
            assert len(decoders.pids()) == 2 and os.getpid() not in decoders.pids()
            return await decoders.prepare(list(SOURCES.values()), list(SOURCES))
        finally:
            decoders.shutdown()

    results = run(main())
    assert len(results) == len(SOURCES)
    for (name, source), (got, seconds) in zip(SOURCES.items(), results, strict=True):
        assert seconds >= 0
        try:
            want = prepare_pixels(source, SPEC, UNTRUSTED, name)
        except ImageError as e:
            assert isinstance(got, ImageError) and str(got) == str(e), name
            continue
        assert isinstance(got, np.ndarray) and got.dtype == np.float32, name
        np.testing.assert_array_equal(got, want, err_msg=name)  # bit for bit: the same code path
    messages = {n: str(r) for n, (r, _) in zip(SOURCES, results, strict=True) if isinstance(r, ImageError)}
    assert set(messages) == {"truncated gif", "not an image", "bad base64"}
    assert "damaged or truncated" in messages["truncated gif"]


def test_chunks_split_a_request_across_the_workers_and_by_pixels():
    decoders = DecoderPool(2, UNTRUSTED, SPEC, 1000)
    small = 100_000
    assert [len(r) for r in decoders.chunks([small] * 64)] == [16, 16, 16, 16]
    assert [len(r) for r in decoders.chunks([small] * 5)] == [3, 2]
    assert decoders.chunks([small]) == [[0]] and decoders.chunks([]) == []
    assert decoders.chunks([49_000_000, 49_000_000, small]) == [[0], [1], [2]]  # a large image is a job alone
    assert decoders.chunks([10_000_000] * 8) == [[0, 1, 2], [3, 4, 5], [6, 7]]  # about 32 megapixels a job


def png_of(megapixels: float) -> bytes:
    side = int((megapixels * 1e6) ** 0.5)
    return encoded(Image.new("1", (side, side), 1), "PNG")


def test_the_pixel_budget_holds_across_workers_and_a_large_image_runs_alone():
    big = png_of(30)
    pixels = probe_pixels(big)  # 5477 x 5477
    for budget, peak in ((40_000_000, pixels), (100_000_000, 2 * pixels)):
        decoders = DecoderPool(2, UNTRUSTED, SPEC, budget)
        try:
            [f.result(60) for f in decoders.start()]
            jobs = [decoders.submit([big], pixels=[pixels]) for _ in range(4)]
            assert all(isinstance(j.result(60)[0][0], np.ndarray) for j in jobs)
            assert decoders.peak_pixels == peak  # one at a time under 40 MP, two at a time under 100 MP
        finally:
            decoders.shutdown()
    decoders = DecoderPool(1, UNTRUSTED, SPEC, 1_000_000)  # an image larger than the whole budget: alone
    try:
        [f.result(60) for f in decoders.start()]
        assert isinstance(decoders.submit([big], pixels=[30_000_000]).result(60)[0][0], np.ndarray)
    finally:
        decoders.shutdown()


def test_a_client_that_sends_much_waits_behind_its_own_work():
    """One worker, a heavy client's eight 30-megapixel jobs queued first: a light client's job, queued after
    them, runs second (as soon as the worker is free), not ninth."""
    big, small = png_of(30), SOURCES["png"]
    decoders = DecoderPool(1, UNTRUSTED, SPEC, 10**9)
    order: list[str] = []
    try:
        [f.result(60) for f in decoders.start()]
        heavy = [decoders.submit([big], pixels=[30_000_000], client="heavy") for _ in range(8)]
        light = decoders.submit([small], pixels=[probe_pixels(small)], client="light")
        for name, futures in (("heavy", heavy), ("light", [light])):
            for f in futures:
                f.add_done_callback(lambda _, name=name: order.append(name))
        [f.result(120) for f in [*heavy, light]]
    finally:
        decoders.shutdown()
    assert order.index("light") <= 1, order


def test_a_dead_worker_fails_its_images_and_is_replaced():
    big = encoded(Image.new("RGB", (6000, 6000), (10, 200, 10)), "PNG")  # a decode that takes a while

    async def main():
        decoders = DecoderPool(1, UNTRUSTED, SPEC, 100_000_000, deadline=Deadline(60))
        try:
            (pid,) = [await asyncio.wrap_future(f) for f in decoders.start()]
            job = asyncio.ensure_future(decoders.prepare([big, big, big]))
            await asyncio.sleep(0.2)
            os.kill(pid, signal.SIGKILL)  # a decoder crash (or the OOM killer) mid-request
            with pytest.raises(DecoderCrashed, match="retry shortly"):
                await job
            [(after, _)] = await decoders.prepare([SOURCES["png"]])  # a new worker
            assert isinstance(after, np.ndarray) and pid not in decoders.pids()
            # a worker that dies while idle: the next request does not even see it
            (idle_pid,) = decoders.pids()
            os.kill(idle_pid, signal.SIGKILL)
            time.sleep(0.2)
            [(again, _)] = await decoders.prepare([SOURCES["jpeg"]])
            assert isinstance(again, np.ndarray) and idle_pid not in decoders.pids()
        finally:
            decoders.shutdown()

    run(main())


SCRIPT = """
import asyncio
print("TOP", flush=True)  # no `if __name__ == "__main__":` guard, as many serving scripts are written
from clipedge.bundle import load_bundle
from clipedge.decoders import DecoderPool
from clipedge.images import DecodePolicy

spec = load_bundle(DEMO, verify=False).manifest.preprocess
decoders = DecoderPool(2, DecodePolicy(allow_paths=False), spec, 10**8)
[f.result(60) for f in decoders.start()]
[(pixels, _)] = asyncio.run(decoders.prepare([open(IMAGE, "rb").read()]))
print("OK", type(pixels).__name__, flush=True)
decoders.shutdown()
"""


@pytest.mark.parametrize("how", ["script", "stdin"])
def test_workers_do_not_run_the_callers_main_module(tmp_path, how):
    """spawn imports the parent's __main__ in every worker by default: a serving script without a main
    guard would run again in each, and code from stdin cannot be imported at all."""
    code = SCRIPT.replace("DEMO", repr(str(DEMO))).replace("IMAGE", repr(str(DEMO / "examples" / "red_circle.png")))
    script = tmp_path / "serve_it.py"
    script.write_text(code)
    cmd, stdin = ([sys.executable, str(script)], None) if how == "script" else ([sys.executable, "-"], code)
    out = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["TOP", "OK", "ndarray"], out.stdout


def test_a_stopped_worker_is_killed_at_its_deadline_and_only_the_culprit_fails():
    """SIGSTOP a worker (a decoder hung in a library call looks the same): at the job's deadline it is killed
    and replaced; a job of several images is retried image by image, and all are answered; an image that
    hangs its decoder alone gets an ImageError naming it."""
    deadline = Deadline(base_s=1.0, per_megapixel_s=0.0)

    async def main():
        decoders = DecoderPool(1, UNTRUSTED, SPEC, 100_000_000, deadline=deadline)
        try:
            (pid,) = [await asyncio.wrap_future(f) for f in decoders.start()]
            os.kill(pid, signal.SIGSTOP)
            t0 = time.monotonic()
            results = await decoders.prepare([SOURCES["png"], SOURCES["jpeg"], SOURCES["png"]], ["a", "b", "c"])
            assert all(isinstance(r, np.ndarray) for r, _ in results)  # retried alone on a new worker
            assert time.monotonic() - t0 < 1.0 + 10  # the deadline, a restart, three decodes
            assert decoders.timeouts == 1 and pid not in decoders.pids() and decoders.working() == 1
            (pid,) = decoders.pids()
            os.kill(pid, signal.SIGSTOP)
            [(alone, _)] = await decoders.prepare([SOURCES["png"]], ["the culprit"])
            assert isinstance(alone, ImageError)
            assert (
                str(alone) == "the culprit: decoding did not finish within 1.0 s (its decoder was stopped and replaced)"
            )
            [(after, _)] = await decoders.prepare([SOURCES["jpeg"]])
            assert isinstance(after, np.ndarray)
        finally:
            decoders.shutdown()

    run(main())


# -- against a real server -------------------------------------------------------------------------------
def score_body(image: str) -> dict:
    return {"input_data": {"columns": ["image", "text"], "data": [[image, "red circle, blue cross"]]}}


RED = base64.b64encode((DEMO / "examples" / "red_circle.png").read_bytes()).decode()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_server_decodes_in_workers_that_end_with_it_even_when_killed():
    s = ServerProcess(DEMO, "--decode-workers", "2")
    try:
        s.wait_ready()
        workers = children(s.proc.pid)
        assert len(workers) >= 2  # the two decoders (and multiprocessing's resource tracker)
        # a worker killed while idle: the next requests are answered as usual
        decoders = [p for p in workers if "resource_tracker" not in Path(f"/proc/{p}/cmdline").read_text()]
        os.kill(decoders[0], signal.SIGKILL)
        time.sleep(0.5)
        codes = [httpx.post(s.url + "/score", json=score_body(RED), timeout=30).status_code for _ in range(3)]
        assert codes[-1] == 200 and set(codes) <= {200, 503}, codes
        workers = children(s.proc.pid)
        s.proc.kill()  # SIGKILL: no drain, no cleanup of ours runs
        s.proc.wait(10)
        deadline = time.monotonic() + 15
        while any(alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(p) for p in workers), "decoding processes outlived their server"
    finally:
        s.stop()
        for p in workers if "workers" in locals() else ():
            if alive(p):
                os.kill(p, signal.SIGKILL)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_server_whose_decoders_hang_answers_and_recovers():
    """Every decoding process stopped (SIGSTOP) mid-service: a request of three images (a job on each stopped
    worker) is answered after the deadline, its images retried alone on new workers; /ready says that no
    decoder can work while they are replaced; a one-image request to a stopped worker gets the culprit's 400
    naming its row; the server serves again without a restart."""
    import threading

    s = ServerProcess(DEMO, "--decode-workers", "2", "--decode-timeout", "2")
    stop = threading.Event()
    try:
        s.wait_ready()

        def decoders() -> list[int]:
            return [p for p in children(s.proc.pid) if "resource_tracker" not in Path(f"/proc/{p}/cmdline").read_text()]

        ready: list[int] = []

        def probe() -> None:
            while not stop.is_set():
                ready.append(httpx.get(s.url + "/ready", timeout=10).status_code)
                time.sleep(0.02)

        prober = threading.Thread(target=probe)
        prober.start()
        stopped = decoders()
        assert len(stopped) == 2
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        body = {"input_data": {"columns": ["image", "text"], "data": [[RED, "red circle, blue cross"], [RED], [RED]]}}
        t0 = time.monotonic()
        r = httpx.post(s.url + "/score", json=body, timeout=60)
        elapsed = time.monotonic() - t0
        assert r.status_code in (200, 400, 503), r.text
        assert r.status_code != 400 or "decoding did not finish within" in r.json()["message"]
        assert elapsed < 10 * (2 + 2)  # the deadline plus a restart (10x margin: DESIGN.md, timing in tests)
        assert not any(alive(p) for p in stopped)  # the stopped ones were killed
        (victim, _) = decoders()
        os.kill(victim, signal.SIGSTOP)  # one of the new ones
        codes = [httpx.post(s.url + "/score", json=score_body(RED), timeout=60) for _ in range(4)]
        culprits = [c for c in codes if c.status_code == 400]
        assert all(
            c.json()["error"]["row"] == 0 and "did not finish within 2.0 s" in c.json()["message"] for c in culprits
        )
        assert codes[-1].status_code == 200 and len(culprits) <= 1, [c.text for c in codes]
        stop.set()
        prober.join(30)
        assert 503 in ready and ready[-1] == 200, ready  # "no image decoder can work" while they were replaced
        assert httpx.get(s.url + "/health", timeout=10).status_code == 200
    finally:
        stop.set()
        s.stop()
