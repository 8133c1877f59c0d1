"""Decoding in worker processes (clipedge.decoders) and what the endpoint's users see of it: the same
pixels and messages as the in-process path, one pixel budget across processes, a dead worker replaced,
no worker outliving its server (even a killed one)."""

from __future__ import annotations

import asyncio
import base64
import io
import multiprocessing
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
from clipedge.decoders import DecodeProcesses, DecoderCrashed
from clipedge.images import DecodePolicy, ImageError, PixelBudget
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
        decoders = DecodeProcesses(2, UNTRUSTED, SPEC, 10_000_000)
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


def test_chunks_split_a_request_across_the_workers():
    decoders = DecodeProcesses(2, UNTRUSTED, SPEC, 1000)
    try:
        assert [len(r) for r in decoders.chunks(64)] == [16, 16, 16, 16]
        assert [len(r) for r in decoders.chunks(5)] == [3, 2]
        assert [list(r) for r in decoders.chunks(1)] == [[0]] and decoders.chunks(0) == []
    finally:
        decoders.shutdown()


def _hold_budget(budget: PixelBudget, pixels: int, held, release) -> None:
    with budget.hold(pixels):
        held.set()
        release.wait(30)


def test_pixel_budget_is_shared_across_processes():
    ctx = multiprocessing.get_context("spawn")
    budget = PixelBudget(100, timeout=0.3, context=ctx)
    held, release = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_hold_budget, args=(budget, 80, held, release))
    child.start()
    try:
        assert held.wait(30)
        assert budget.in_use == 80
        with pytest.raises(ImageError, match="server busy decoding large images"), budget.hold(50):
            pass
        with budget.hold(20):  # what fits still runs
            assert budget.in_use == 100
        release.set()
        child.join(30)
        with budget.hold(50):
            assert budget.in_use == 50
    finally:
        release.set()
        child.join(30)
    assert budget.in_use == 0


def _wait_broken(decoders: DecodeProcesses, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not getattr(decoders._pool, "_broken", False):
        assert time.monotonic() < deadline, "the pool never noticed its dead worker"
        time.sleep(0.05)


def test_a_dead_worker_fails_its_images_and_is_replaced():
    big = encoded(Image.new("RGB", (6000, 6000), (10, 200, 10)), "PNG")  # a decode that takes a while

    async def main():
        decoders = DecodeProcesses(1, UNTRUSTED, SPEC, 100_000_000)
        try:
            (pid,) = [await asyncio.wrap_future(f) for f in decoders.start()]
            job = asyncio.ensure_future(decoders.prepare([big, big, big]))
            await asyncio.sleep(0.2)
            os.kill(pid, signal.SIGKILL)  # a decoder crash (or the OOM killer) mid-request
            with pytest.raises(DecoderCrashed, match="retry shortly"):
                await job
            [(after, _)] = await decoders.prepare([SOURCES["png"]])  # a new pool, new workers
            assert isinstance(after, np.ndarray) and pid not in decoders.pids()
            # a worker that dies while idle: the next request does not even see it
            (idle_pid,) = decoders.pids()
            os.kill(idle_pid, signal.SIGKILL)
            _wait_broken(decoders)
            [(again, _)] = await decoders.prepare([SOURCES["jpeg"]])
            assert isinstance(again, np.ndarray)
        finally:
            decoders.shutdown()

    run(main())


SCRIPT = """
import asyncio
print("TOP", flush=True)  # no `if __name__ == "__main__":` guard, as many serving scripts are written
from clipedge.bundle import load_bundle
from clipedge.decoders import DecodeProcesses
from clipedge.images import DecodePolicy

spec = load_bundle(DEMO, verify=False).manifest.preprocess
decoders = DecodeProcesses(2, DecodePolicy(allow_paths=False), spec, 10**8)
[f.result(60) for f in decoders.start()]
[(pixels, _)] = asyncio.run(decoders.prepare([open(IMAGE, "rb").read()]))
print("OK", type(pixels).__name__, flush=True)
decoders.shutdown()
"""


@pytest.mark.parametrize("how", ["script", "stdin"])
def test_workers_do_not_run_the_callers_main_module(tmp_path, how):
    """spawn imports the parent's __main__ in every worker by default: a serving script without a main
    guard would run again in each, and code from stdin cannot be imported at all (BrokenProcessPool)."""
    code = SCRIPT.replace("DEMO", repr(str(DEMO))).replace("IMAGE", repr(str(DEMO / "examples" / "red_circle.png")))
    script = tmp_path / "serve_it.py"
    script.write_text(code)
    cmd, stdin = ([sys.executable, str(script)], None) if how == "script" else ([sys.executable, "-"], code)
    out = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["TOP", "OK", "ndarray"], out.stdout


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
