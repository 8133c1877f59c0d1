"""Dynamic batching: images from concurrent requests share one vision-tower run.

One worker task runs the tower in a thread (the event loop never blocks). While a batch runs, new
requests queue; the next batch takes everything queued, up to `max_batch` images. An idle worker waits at
most `max_wait` for company before running (0 by default: at low load nothing waits, at high load the
batches fill while the previous one runs). The queue is bounded in images: past `max_queue` a request is
refused at once (QueueFull) instead of waiting behind work it cannot finish in time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np


class QueueFull(Exception):
    """More images are waiting than the queue allows."""


class DynamicBatcher:
    def __init__(
        self,
        fn: Callable[[np.ndarray], np.ndarray],
        executor: Executor,
        max_batch: int = 32,
        max_wait: float = 0.0,
        max_queue: int = 256,
        on_batch: Callable[[int], None] | None = None,
    ):
        self.fn, self.executor = fn, executor
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait, max_queue
        self.on_batch = on_batch
        self._items: deque[tuple[np.ndarray, asyncio.Future]] = deque()
        self._pending = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    @property
    def pending(self) -> int:
        """Images queued or running."""
        return self._pending

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for _, fut in self._items:
            if not fut.done():
                fut.set_exception(RuntimeError("server is shutting down"))
        self._items.clear()

    async def submit(self, pixels: np.ndarray) -> np.ndarray:
        """pixel_values [K,3,H,W] -> embeddings [K,D], batched with other requests."""
        n = len(pixels)
        if self._pending + n > self.max_queue:
            raise QueueFull(f"{self._pending} images waiting; the queue holds {self.max_queue}")
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._items.append((pixels, fut))
        self._pending += n
        assert self._wake is not None
        self._wake.set()
        try:
            return await fut
        finally:
            self._pending -= n

    async def _run(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.max_wait > 0 and self._queued_images() < self.max_batch:
                await asyncio.sleep(self.max_wait)
            while self._items:
                batch: list[tuple[np.ndarray, asyncio.Future]] = []
                size = 0
                while self._items and (not batch or size + len(self._items[0][0]) <= self.max_batch):
                    item = self._items.popleft()
                    if item[1].cancelled():
                        continue
                    batch.append(item)
                    size += len(item[0])
                if not batch:
                    continue
                pixels = np.concatenate([p for p, _ in batch]) if len(batch) > 1 else batch[0][0]
                try:
                    emb = await loop.run_in_executor(self.executor, self.fn, pixels)
                except Exception as e:  # hand the failure to every waiting request
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(e)
                    continue
                if self.on_batch:
                    self.on_batch(size)
                start = 0
                for p, fut in batch:
                    if not fut.done():
                        fut.set_result(emb[start : start + len(p)])
                    start += len(p)

    def _queued_images(self) -> int:
        return sum(len(p) for p, _ in self._items)
