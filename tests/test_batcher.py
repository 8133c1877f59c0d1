import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from clipedge.serve.batcher import DynamicBatcher, QueueFull


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_share_batches_and_get_their_own_rows():
    sizes = []

    def fn(x):
        sizes.append(len(x))
        time.sleep(0.05)  # while this runs, the other requests queue up
        return x[:, :1, 0, 0] * 10

    async def main():
        b = DynamicBatcher(fn, ThreadPoolExecutor(1), max_batch=8, max_queue=100)
        b.start()
        inputs = [np.full((1 + i % 2, 1, 1, 1), i, dtype=np.float32) for i in range(10)]
        outs = await asyncio.gather(*(b.submit(x) for x in inputs))
        await b.stop()
        return inputs, outs

    inputs, outs = run(main())
    for x, y in zip(inputs, outs, strict=True):
        assert y.shape == (len(x), 1) and (y == x[0, 0, 0, 0] * 10).all()
    assert sum(sizes) == 15 and max(sizes) <= 8 and len(sizes) < 10  # merged, never above max_batch


def test_queue_full_is_immediate_and_errors_reach_every_request():
    gate = threading.Event()

    def slow(x):
        gate.wait(5)
        return x[:, :1, 0, 0]

    async def main():
        b = DynamicBatcher(slow, ThreadPoolExecutor(1), max_batch=2, max_queue=3)
        b.start()
        first = asyncio.ensure_future(b.submit(np.zeros((3, 1, 1, 1), np.float32)))
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        with pytest.raises(QueueFull):
            await b.submit(np.zeros((1, 1, 1, 1), np.float32))
        assert time.monotonic() - t0 < 0.1
        gate.set()
        await first
        assert b.pending == 0
        await b.stop()

    run(main())

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
