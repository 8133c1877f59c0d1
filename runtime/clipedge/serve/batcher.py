"""Dynamic batching and admission: images from concurrent requests share one vision-tower run, and the
queue is bounded by time.

One worker task runs the tower in a thread (the event loop never blocks). While a batch runs, new
requests queue; the next batch takes everything queued, up to `max_batch` images. An idle worker waits at
most `max_wait` for company before running (0 by default: at low load nothing waits, at high load the
batches fill while the previous one runs). Requests whose client went away are dropped from the queue.

Admission (as Triton's and TorchServe's queue bounds, but in time): a request is refused before any
decoding when the images already admitted plus its own would take longer than `max_queue_ms` at the
measured rate. The rate is images finished per second while the server is busy (decoding and inference
together, so it is what a client waits for), an exponential average over batches, seeded at warm-up.
Requests still reading their bodies count as an average request each, so that a crowd arriving at an idle
server is refused before its bodies are read, not after. A request alone on an idle server is always
admitted, however large.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np


class QueueFull(Exception):
    """The queue cannot take the request in time; `retry_after` is a hint in whole seconds."""

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after

    def public_message(self) -> str:
        return f"server busy: {self}; retry shortly"


class Admission:
    """Images admitted and not yet finished, against a time budget at the measured cost per image.

    The cost is what the server spends, not what a request waits for: the tower's seconds per image (from
    its batches) plus decoding's seconds per image spread over the cores (from the decode pool). Time spent
    waiting on remote URLs is not work and does not lower the rate (a slow remote must not make the server
    refuse everyone else).
    """

    def __init__(self, max_queue_ms: float, max_images: int, rate: float, cores: int = 1, smoothing: float = 0.3):
        self.max_queue_s = max_queue_ms / 1000
        self.max_images = max_images
        self.tower_s = 1.0 / max(rate, 1e-3)  # seconds per image in the tower
        self.decode_s = 0.0  # CPU seconds per image decoding
        self.cores = max(1, cores)
        self.smoothing = smoothing
        self.in_flight = 0
        self._reading: dict[int, float] = {}  # requests reading their body (size not known yet): their start
        self._next_reader = 0
        self.per_request = 1.0  # images per request, an exponential average

    @property
    def rate(self) -> float:
        """Images per second the server can finish."""
        return 1.0 / (self.tower_s + self.decode_s / self.cores)

    @property
    def reading(self) -> int:
        """Bodies being read that count as coming work: those that began within the time budget (a body
        still arriving after that is a slow client's, and must not make the server refuse everyone else)."""
        since = time.monotonic() - self.max_queue_s
        return sum(1 for t in self._reading.values() if t >= since)

    def wait_s(self, n: int = 0) -> float:
        """Estimated seconds until `n` more images would be done (bodies being read count too)."""
        return (self.in_flight + self.reading * self.per_request + n) / self.rate

    def check(self, n: int = 0) -> None:
        """Raises QueueFull when `n` more images (0: a request whose size is not known yet) cannot be
        admitted now. Nothing in flight and no body being read: always admitted. A burst arriving at an
        idle server is judged at once by its bodies' expected size, so most of it is refused before
        being read instead of after."""
        if self.in_flight == 0 and (n or not self._reading):
            return
        if self.in_flight + n > self.max_images:
            raise QueueFull(f"{self.in_flight} images in progress; the queue holds {self.max_images}")
        wait = self.wait_s(n)
        if wait > self.max_queue_s or (n == 0 and self.wait_s() >= self.max_queue_s):
            # when the admitted work will have shrunk back within the budget (bodies being read aside)
            retry = max(1, math.ceil((self.in_flight + n) / self.rate - self.max_queue_s))
            raise QueueFull(
                f"about {wait * 1000:.0f} ms of work queued; the limit is {self.max_queue_s * 1000:.0f} ms", retry
            )

    @contextlib.contextmanager
    def reading_body(self):
        """While a request's body is read and parsed (its size is not known yet)."""
        self.check()
        key, self._next_reader = self._next_reader, self._next_reader + 1
        self._reading[key] = time.monotonic()
        try:
            yield
        finally:
            del self._reading[key]

    def admit(self, n: int) -> None:
        self.per_request = 0.8 * self.per_request + 0.2 * n  # refused or not, this is what requests weigh
        self.check(n)
        self.in_flight += n

    def release(self, n: int) -> None:
        self.in_flight = max(0, self.in_flight - n)

    def observe(self, images: int, seconds: float | None = None) -> None:
        """A tower batch of `images` took `seconds`."""
        if images and seconds:
            a = self.smoothing
            self.tower_s = (1 - a) * self.tower_s + a * seconds / images

    def observe_decode(self, seconds: float) -> None:
        """One image took `seconds` to decode and preprocess (after any fetch)."""
        a = self.smoothing / 4
        self.decode_s = (1 - a) * self.decode_s + a * seconds


class DynamicBatcher:
    def __init__(
        self,
        fn: Callable[[np.ndarray], np.ndarray],
        executor: Executor,
        max_batch: int = 32,
        max_wait: float = 0.0,
        on_batch: Callable[[int, float], None] | None = None,
    ):
        self.fn, self.executor = fn, executor
        self.max_batch, self.max_wait = max_batch, max_wait
        self.on_batch = on_batch
        self._items: deque[tuple[np.ndarray | list[np.ndarray], asyncio.Future]] = deque()
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

    async def submit(self, pixels: np.ndarray | list[np.ndarray]) -> np.ndarray:
        """pixel_values [K,3,H,W] (or a list of K [3,H,W] arrays) -> embeddings [K,D], batched with other
        requests. Cancelling the caller (its client went away) drops the images unless their batch already
        runs. The images are assembled into one array on the inference thread, never on the event loop (a
        64-image ViT-B/32 request is 38 MB to copy: it held the loop, and every refusal, for up to 100 ms)."""
        n = len(pixels)
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
                batch: list[tuple[np.ndarray | list[np.ndarray], asyncio.Future]] = []
                size = 0
                while self._items and (not batch or size + len(self._items[0][0]) <= self.max_batch):
                    item = self._items.popleft()
                    if item[1].done():  # cancelled: the client went away
                        continue
                    batch.append(item)
                    size += len(item[0])
                if not batch:
                    continue
                started = time.perf_counter()
                try:
                    emb = await loop.run_in_executor(self.executor, self._assemble_and_run, [p for p, _ in batch])
                except Exception as e:  # hand the failure to every waiting request
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(e)
                    continue
                if self.on_batch:
                    self.on_batch(size, time.perf_counter() - started)
                start = 0
                for p, fut in batch:
                    if not fut.done():
                        fut.set_result(emb[start : start + len(p)])
                    start += len(p)

    def _assemble_and_run(self, parts: list[np.ndarray | list[np.ndarray]]) -> np.ndarray:
        if len(parts) == 1 and isinstance(parts[0], np.ndarray):
            return self.fn(parts[0])
        return self.fn(np.stack([image for part in parts for image in part]))

    def _queued_images(self) -> int:
        return sum(len(p) for p, _ in self._items)
