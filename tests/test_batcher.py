import asyncio
import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from clipedge.serve.batcher import Admission, DynamicBatcher, QueueFull


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_share_batches_and_get_their_own_rows():
    sizes = []

    def fn(x):
        sizes.append(len(x))
        time.sleep(0.05)  # while this runs, the other requests queue up
        return x[:, :1, 0, 0] * 10

    async def main():
        b = DynamicBatcher(fn, ThreadPoolExecutor(1), max_batch=8)
        b.start()
        inputs = [np.full((1 + i % 2, 1, 1, 1), i, dtype=np.float32) for i in range(10)]
        outs = await asyncio.gather(*(b.submit(x) for x in inputs))
        await b.stop()
        return inputs, outs

    inputs, outs = run(main())
    for x, y in zip(inputs, outs, strict=True):
        assert y.shape == (len(x), 1) and (y == x[0, 0, 0, 0] * 10).all()
    assert sum(sizes) == 15 and max(sizes) <= 8 and len(sizes) < 10  # merged, never above max_batch


def test_lists_of_images_are_assembled_off_the_event_loop():
    loop_thread, seen = threading.get_ident(), []

    def fn(x):
        seen.append((threading.get_ident(), x.shape))
        time.sleep(0.02)
        return x[:, :1, 0, 0] * 10

    async def main():
        b = DynamicBatcher(fn, ThreadPoolExecutor(1), max_batch=8)
        b.start()
        as_list = [np.full((1, 1, 1), i, dtype=np.float32) for i in (1, 2, 3)]  # what the endpoint submits
        block = np.full((2, 1, 1, 1), 7, dtype=np.float32)
        outs = await asyncio.gather(b.submit(as_list), b.submit(block), b.submit(as_list[:1]))
        await b.stop()
        return outs

    outs = run(main())
    assert [o[:, 0].tolist() for o in outs] == [[10, 20, 30], [70, 70], [10]]
    assert all(tid != loop_thread for tid, _ in seen) and sum(shape[0] for _, shape in seen) == 6


def test_admission_bounds_each_clients_queue_by_time():
    a = Admission(max_queue_ms=1000, max_images=256, rate=50.0)  # 0.02 s an image in the tower
    big = a.cost([0] * 64)  # 1.28 s
    a.admit("c", 64, big)  # nothing of c's in flight: admitted however large
    with pytest.raises(QueueFull, match="ms of work queued; the limit is 1000 ms") as refused:
        a.admit("c", 1, a.cost([0]))  # c's own 65 images are 1.3 s
    assert refused.value.retry_after >= 1 and a.in_flight == 64
    a.admit("d", 10, a.cost([0] * 10))  # another client is judged by its own work: admitted
    a.check("d", a.cost([0] * 10), 10)  # at its share of the server: 2 clients x 0.4 s
    with pytest.raises(QueueFull):
        a.check("d", a.cost([0] * 20), 20)  # 2 x 0.6 s: its share is half while c has work
    a.release("d", 10, a.cost([0] * 10))
    a.release("c", 64, big)
    a.admit("c", 40, a.cost([0] * 40))
    a.check("c", a.cost([0] * 9), 9)  # 49 images: 0.98 s
    with pytest.raises(QueueFull):
        a.check("c", a.cost([0] * 11), 11)
    small = Admission(max_queue_ms=60_000, max_images=4, rate=1000.0)
    small.admit("c", 3, small.cost([0] * 3))
    with pytest.raises(QueueFull, match="the queue holds 4"):
        small.admit("d", 2, small.cost([0] * 2))  # the bound on images in flight is everyone's


def test_admission_prices_pixels_and_learns_the_cost_of_work_not_of_waiting():
    a = Admission(max_queue_ms=1000, max_images=1000, rate=1000.0, cores=2, smoothing=0.5)
    for _ in range(12):
        a.observe(10, 1.0)  # the tower: 10 images a second
    assert 0.09 < a.cost([0]) < 0.11
    for _ in range(400):
        a.observe_decode(0.1, 750_000)  # decoding: 0.1 CPU-s for a 0.75-megapixel image, over 2 cores
    assert 0.14 < a.cost([750_000]) < 0.16  # 0.1 + 0.1 / 2
    assert 2.5 < a.cost([49_000_000]) < 2.6  # 49 megapixels cost what their decoding costs: 0.1 + 2.46 s
    # time spent waiting on a slow remote is never observed: it does not lower the rate
    a.check("c", a.cost([0] * 500), 500)  # nothing in flight: admitted however large


def test_a_burst_at_an_idle_server_is_refused_before_its_bodies_are_read(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("clipedge.serve.batcher.time.monotonic", lambda: clock[0])
    a = Admission(max_queue_ms=1000, max_images=1000, rate=50.0)
    for _ in range(30):
        a.per_request = 0.8 * a.per_request + 0.2 * a.cost([0] * 64)  # requests have been weighing 64 images
    with contextlib.ExitStack() as reading:
        reading.enter_context(a.reading_body("c"))  # the first body of a burst: read
        with pytest.raises(QueueFull, match="ms of work queued"):
            reading.enter_context(a.reading_body("c"))  # the rest: refused before their bodies (64 images ~ 1.3 s)
        reading.enter_context(a.reading_body("d"))  # another client's body is its own
        clock[0] += 1.5  # that body is still arriving after the whole budget: a slow client, no longer counted
        reading.enter_context(a.reading_body("c"))


def test_cancelled_requests_are_dropped_and_errors_reach_every_request():
    gate = threading.Event()
    seen = []

    def slow(x):
        seen.append(len(x))
        gate.wait(5)
        return x[:, :1, 0, 0]

    async def main():
        b = DynamicBatcher(slow, ThreadPoolExecutor(1), max_batch=2)
        b.start()
        first = asyncio.ensure_future(b.submit(np.zeros((2, 1, 1, 1), np.float32)))
        await asyncio.sleep(0.05)  # running: the next ones queue
        gone = asyncio.ensure_future(b.submit(np.zeros((2, 1, 1, 1), np.float32)))
        kept = asyncio.ensure_future(b.submit(np.ones((1, 1, 1, 1), np.float32)))
        await asyncio.sleep(0.01)
        gone.cancel()  # its client went away while it waited
        gate.set()
        await first
        assert (await kept).tolist() == [[1.0]]
        assert b.pending == 0
        await b.stop()

    run(main())
    assert seen == [2, 1]  # the cancelled request's images never ran

    def broken(x):
        raise RuntimeError("tower failed")

    async def failing():
        b = DynamicBatcher(broken, ThreadPoolExecutor(1), max_batch=4)
        b.start()
        results = await asyncio.gather(
            *(b.submit(np.zeros((1, 1, 1, 1), np.float32)) for _ in range(3)), return_exceptions=True
        )
        await b.stop()
        return results

    assert all(isinstance(r, RuntimeError) for r in run(failing()))


def test_labels_seen_before_do_not_wait_for_the_text_tower():
    """32 clients sending the same labels once filled the text tower's queue (16 jobs) with cache hits and
    got 503s; labels in the cache are now answered on the spot, and only new labels take a turn."""
    from pathlib import Path

    from clipedge.options import LoadOptions
    from clipedge.serve.state import ServeConfig, State, run_inference

    demo = Path(__file__).resolve().parent.parent / "models" / "demo"
    red = (demo / "examples" / "red_circle.png").read_bytes()
    state = State(ServeConfig(load=LoadOptions(bundle=str(demo), thread_pool="shared"), max_text_jobs=1))

    async def main():
        rate = state.load()
        await state.start_decoders()
        state.start_batcher(rate)
        try:
            labels = ["red circle", "blue cross"]
            first, p1 = await run_inference(state, [red], state.label_request(labels, None))  # on the text thread
            state.text_pending = 1  # the text tower's queue is full from now on
            again, p2 = await run_inference(state, [red], state.label_request(labels, None))
            assert again.labels == first.labels and np.array_equal(p1, p2)
            with pytest.raises(QueueFull, match=r"^1 text-tower jobs waiting$"):
                await run_inference(state, [red], state.label_request(["green star"], None))
        finally:
            assert state.batcher is not None
            await state.batcher.stop()
            state.shutdown()

    run(main())
