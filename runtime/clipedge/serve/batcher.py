"""Dynamic batching and admission: images from concurrent requests share one vision-tower run, and each
client's queue is bounded by time.

One worker task runs the tower in a thread (the event loop never blocks). While a batch runs, new
requests queue; the next batch takes queued requests round robin between clients, up to `max_batch` images
(one client's large request does not hold the others' images back for more than a batch). An idle worker
waits at most `max_wait` for company before running (0 by default: at low load nothing waits, at high load
the batches fill while the previous one runs). Requests whose client went away are dropped from the queue.

Admission (as Triton's and TorchServe's queue bounds, but in time, and per client as Envoy's and nginx's fair
sharing): a request is priced in seconds of server time before any decoding: the tower's time per image plus
its decoding, measured per pixel (the pixels come from the images' headers) and spread over the decoding
cores. It is refused when its client's own admitted work plus its own would take longer than `max_queue_ms` at
the client's fair share of the server (the measured rate divided among the clients with work in flight). A
client with nothing in flight is always admitted, however large its request (within the per-request caps):
a heavy client slows itself, not the others, who are served in turn by the fair queues of decoding and
batching. Requests still reading their bodies count as an average request of their client, so that a crowd
arriving at an idle server is refused before its bodies are read, not after. With one client (all requests
from one address or key), this is a time-bounded queue for everyone.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor

import numpy as np

OVERHEAD_PIXELS = 250_000  # decoding's cost for an image's own overhead (base64, headers), in pixels


class QueueFull(Exception):
    """The queue cannot take the request in time; `retry_after` is a hint in whole seconds."""

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after

    def public_message(self) -> str:
        return f"server busy: {self}; retry shortly"


class Admission:
    """Work admitted and not yet finished, in seconds of server time, per client, against a time budget
    (module docstring).

    The cost is what the server spends, not what a request waits for: the tower's seconds per image (from its
    batches) plus decoding's CPU seconds per pixel (from the decoders) spread over the cores. Time spent
    waiting on remote URLs is not work and does not lower the rate (a slow remote must not make the server
    refuse everyone else).
    """

    def __init__(self, max_queue_ms: float, max_images: int, rate: float, cores: int = 1, smoothing: float = 0.3):
        self.max_queue_s = max_queue_ms / 1000
        self.max_images = max_images
        self.tower_s = 1.0 / max(rate, 1e-3)  # seconds per image in the tower
        self.decode_s_per_pixel = 0.0  # CPU seconds per pixel decoding (OVERHEAD_PIXELS added per image)
        self.cores = max(1, cores)
        self.smoothing = smoothing
        self.in_flight = 0  # images, every client's
        self._work: dict[str, float] = {}  # seconds admitted and not finished, per client
        self._reading: dict[int, tuple[str, float]] = {}  # bodies being read (size not known yet): client, start
        self._next_reader = 0
        self.per_request = self.tower_s  # a request's cost in seconds, an exponential average
        self.image_pixels = float(OVERHEAD_PIXELS)  # an image's pixels, an exponential average (URLs' price)

    def cost(self, pixels: Sequence[int | None]) -> float:
        """Seconds of server time for images of these sizes (None: not known before fetching, an URL's: priced
        as the average image so far, since waiting on a remote is not work)."""
        total = sum(self.image_pixels if p is None else p for p in pixels)
        decode = self.decode_s_per_pixel * (total + OVERHEAD_PIXELS * len(pixels)) / self.cores
        return self.tower_s * len(pixels) + decode

    def _readers(self, client: str) -> int:
        """A client's bodies being read that count as coming work: those that began within the time budget
        (a body still arriving after that is a slow client's, and must not make the server refuse others)."""
        since = time.monotonic() - self.max_queue_s
        return sum(1 for c, t in self._reading.values() if c == client and t >= since)

    def wait_s(self, client: str = "", cost: float = 0.0) -> float:
        """Estimated seconds until `client`'s admitted work, bodies being read and `cost` more would be done at
        its fair share of the server."""
        mine = self._work.get(client, 0.0) + self._readers(client) * self.per_request
        active = len(self._work) + (client not in self._work and (mine + cost) > 0)
        return (mine + cost) * max(1, active)

    def check(self, client: str = "", cost: float = 0.0, n: int = 0) -> None:
        """Raises QueueFull when a request of `n` images costing `cost` seconds (0: a request whose size is not
        known yet) from `client` cannot be admitted now. A client with nothing in flight and no body being read
        is always admitted (but for the bound on images in flight); a burst of one client arriving at once is
        judged by its bodies' expected cost, so most of it is refused before being read instead of after."""
        if self.in_flight + n > self.max_images:
            raise QueueFull(f"{self.in_flight} images in progress; the queue holds {self.max_images}")
        if client not in self._work and (n or not self._readers(client)):
            return
        wait = self.wait_s(client, cost)
        if wait > self.max_queue_s or (n == 0 and self.wait_s(client) >= self.max_queue_s):
            # when the admitted work will have shrunk back within the budget (bodies being read aside)
            admitted = (self._work.get(client, 0.0) + cost) * max(1, len(self._work) + (client not in self._work))
            retry = max(1, math.ceil(admitted - self.max_queue_s))
            raise QueueFull(
                f"about {wait * 1000:.0f} ms of work queued; the limit is {self.max_queue_s * 1000:.0f} ms", retry
            )

    @contextlib.contextmanager
    def reading_body(self, client: str = ""):
        """While a request's body is read and parsed (its size is not known yet)."""
        self.check(client)
        key, self._next_reader = self._next_reader, self._next_reader + 1
        self._reading[key] = (client, time.monotonic())
        try:
            yield
        finally:
            del self._reading[key]

    def admit(self, client: str, n: int, cost: float) -> None:
        self.per_request = 0.8 * self.per_request + 0.2 * cost  # refused or not, this is what requests weigh
        self.check(client, cost, n)
        self.in_flight += n
        self._work[client] = self._work.get(client, 0.0) + max(cost, 1e-9)

    def release(self, client: str, n: int, cost: float) -> None:
        self.in_flight = max(0, self.in_flight - n)
        left = self._work.get(client, 0.0) - max(cost, 1e-9)
        if left > 1e-9:
            self._work[client] = left
        else:
            self._work.pop(client, None)

    def observe(self, images: int, seconds: float | None = None) -> None:
        """A tower batch of `images` took `seconds`."""
        if images and seconds:
            a = self.smoothing
            self.tower_s = (1 - a) * self.tower_s + a * seconds / images

    def observe_decode(self, seconds: float, pixels: int | None = None) -> None:
        """One image of `pixels` took `seconds` (CPU) to decode and preprocess (after any fetch)."""
        a = self.smoothing / 4
        per_pixel = seconds / ((pixels or 0) + OVERHEAD_PIXELS)
        self.decode_s_per_pixel = (1 - a) * self.decode_s_per_pixel + a * per_pixel
        if pixels:
            self.image_pixels = (1 - a) * self.image_pixels + a * pixels


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
        self._items: deque[tuple[np.ndarray | list[np.ndarray], asyncio.Future, str]] = deque()
        self._pending = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self.running_since: float | None = None  # when the batch on the tower started (None: idle)

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
        for _, fut, _ in self._items:
            if not fut.done():
                fut.set_exception(RuntimeError("server is shutting down"))
        self._items.clear()

    async def submit(self, pixels: np.ndarray | list[np.ndarray], client: str = "") -> np.ndarray:
        """pixel_values [K,3,H,W] (or a list of K [3,H,W] arrays) -> embeddings [K,D], batched with other
        requests (round robin between clients). Cancelling the caller (its client went away) drops the images
        unless their batch already runs. The images are assembled into one array on the inference thread,
        never on the event loop (a 64-image ViT-B/32 request is 38 MB to copy: it held the loop, and every
        refusal, for up to 100 ms)."""
        n = len(pixels)
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._items.append((pixels, fut, client))
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
                batch = self._next_batch()
                if not batch:
                    continue
                size = sum(len(p) for p, _, _ in batch)
                started = time.perf_counter()
                self.running_since = time.monotonic()
                try:
                    emb = await loop.run_in_executor(self.executor, self._assemble_and_run, [p for p, _, _ in batch])
                except Exception as e:  # hand the failure to every waiting request
                    for _, fut, _ in batch:
                        if not fut.done():
                            fut.set_exception(e)
                    continue
                finally:
                    self.running_since = None
                if self.on_batch:
                    self.on_batch(size, time.perf_counter() - started)
                start = 0
                for p, fut, _ in batch:
                    if not fut.done():
                        fut.set_result(emb[start : start + len(p)])
                    start += len(p)

    def _next_batch(self) -> list[tuple[np.ndarray | list[np.ndarray], asyncio.Future, str]]:
        """Queued requests for one tower run, up to `max_batch` images (or one larger request alone), taken
        round robin between clients, each client's in order; cancelled ones are dropped."""
        waiting = [item for item in self._items if not item[1].done()]  # done: cancelled, its client went away
        queues: dict[str, deque] = {}
        for item in waiting:
            queues.setdefault(item[2], deque()).append(item)
        batch: list[tuple[np.ndarray | list[np.ndarray], asyncio.Future, str]] = []
        size, added = 0, True
        while added:
            added = False
            for queue in queues.values():
                if queue and (not batch or size + len(queue[0][0]) <= self.max_batch):
                    item = queue.popleft()
                    batch.append(item)
                    size += len(item[0])
                    added = True
        taken = {id(item) for item in batch}
        self._items = deque(item for item in waiting if id(item) not in taken)
        return batch

    def _assemble_and_run(self, parts: list[np.ndarray | list[np.ndarray]]) -> np.ndarray:
        if len(parts) == 1 and isinstance(parts[0], np.ndarray):
            return self.fn(parts[0])
        return self.fn(np.stack([image for part in parts for image in part]))

    def _queued_images(self) -> int:
        return sum(len(p) for p, _, _ in self._items)
