"""Decoding in worker processes: images are decoded and preprocessed (`preprocess.prepare_pixels`, the one
path) in processes of their own, so the caller's process keeps its interpreter lock for its own work.

Why: in threads, decoding holds the GIL for every step Pillow and numpy do in Python, and an event loop in
the same process then waits for the lock after each of its own system calls (accept, read, write, log):
under overload the endpoint's refusals, which cost it 0.2 ms, took up to 100 ms to leave (docs/benchmarks.md,
"Overload"). Processes share no lock with the loop.

The pixel budget is shared by every worker (shared memory and a lock handed to each at start). Workers run
at a lower priority (nice +5) and end with their parent (Linux: PR_SET_PDEATHSIG). A worker that dies (a
crash in a decoder, the OOM killer) costs its requests a 503 and the pool is started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import multiprocessing
import os
import signal
import sys
import time
import types
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from typing import Any

import numpy as np

from .fetch import FetchPolicy
from .images import DecodePolicy, ImageError, PixelBudget
from .manifest import Preprocess
from .preprocess import prepare_pixels

PR_SET_PDEATHSIG = 1
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


class DecoderCrashed(RuntimeError):
    """A decoding process died; the pool has been started again."""


def return_freed_memory() -> None:
    """Large allocations (decoded images) are mapped and unmapped, not kept in glibc's heap (fixed
    thresholds turn off glibc's adaptive ones). No effect where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "mallopt"):
            libc.mallopt(M_MMAP_THRESHOLD, 1 << 20)
            libc.mallopt(M_TRIM_THRESHOLD, 8 << 20)
    except OSError:
        pass


@contextlib.contextmanager
def _without_main() -> Iterator[None]:
    """Processes started meanwhile do not import the parent's __main__ (spawn does by default, to find
    functions defined there): a script serving the app without an `if __name__ == "__main__":` guard
    would run again in every worker, and code from stdin or a notebook cannot be imported at all. The
    workers need only clipedge's own modules."""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


# the worker process's own settings, set by `_start_worker` when the process starts (never at import)
_worker: dict[str, Any] = {}


def _start_worker(policy: DecodePolicy, spec: Preprocess, nice: int) -> None:
    with contextlib.suppress(OSError, AttributeError):  # end with the parent, even if it is killed
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    with contextlib.suppress(OSError, AttributeError):
        os.nice(nice)
    return_freed_memory()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle (it drains, then stops us)
    _worker.update(policy=policy, spec=spec)


def _ready() -> int:
    return os.getpid()


def _prepare(sources: list[Any], names: list[str | None]) -> list[tuple[np.ndarray | ImageError, float]]:
    """In a worker: for each source, (pixel_values [3, H, W] or its ImageError, CPU seconds it took)."""
    out: list[tuple[np.ndarray | ImageError, float]] = []
    for source, name in zip(sources, names, strict=True):
        t0 = time.thread_time()
        try:
            result: np.ndarray | ImageError = prepare_pixels(source, _worker["spec"], _worker["policy"], name)
        except ImageError as e:
            result = e
        out.append((result, time.thread_time() - t0))
    return out


class DecodeProcesses:
    """`workers` processes that run `prepare_pixels` under one decode policy and one pixel budget.

    Sources must be bytes or base64 strings (fetch URLs first: fetching is waiting, not work, and belongs to
    threads).
    """

    def __init__(self, workers: int, policy: DecodePolicy, spec: Preprocess, pixel_budget: int, nice: int = 5):
        self.workers, self.spec, self.nice = workers, spec, nice
        self._context = multiprocessing.get_context("spawn")  # never fork a process that runs threads
        self._policy = replace(policy, budget=None, fetch=FetchPolicy())  # workers never fetch: URLs come as bytes
        self._pixel_budget = pixel_budget
        self._pool: ProcessPoolExecutor | None = None
        self._start_pool()

    def _start_pool(self) -> None:
        budget = PixelBudget(self._pixel_budget, context=self._context)
        self._pool = ProcessPoolExecutor(
            self.workers,
            mp_context=self._context,
            initializer=_start_worker,
            initargs=(replace(self._policy, budget=budget), self.spec, self.nice),
        )

    def start(self) -> list[Future]:
        """Start every worker process now: futures that resolve once workers answer (with their ids).
        Call it from a thread that lives as long as the process (workers end with the thread that
        started them); a pool started again after a worker died is started here too."""
        assert self._pool is not None
        with _without_main():  # one submit per idle slot starts one process (spawn: never more, never later)
            return [self._pool.submit(_ready) for _ in range(self.workers)]

    def pids(self) -> list[int]:
        """The worker processes' ids (for memory figures)."""
        return [p.pid for p in (getattr(self._pool, "_processes", None) or {}).values() if p.pid]

    async def prepare(
        self, sources: list[Any], names: list[str | None] | None = None
    ) -> list[tuple[np.ndarray | ImageError, float]]:
        """For each source, (pixel_values [3, H, W] or the ImageError `prepare_pixels` raises, with the same
        message; CPU seconds it took), decoded in one worker: a request's images go in a few such calls,
        not one each (the calls' overhead is the event loop's). Cancelling the caller drops the work if
        no worker has taken it yet.

        Raises:
            DecoderCrashed: a worker died meanwhile (the pool is started again).
        """
        names = names or [None] * len(sources)
        try:
            self._restart()  # if a worker died since the last call
            assert self._pool is not None
            future = asyncio.get_running_loop().run_in_executor(self._pool, _prepare, sources, names)
        except (BrokenProcessPool, OSError, RuntimeError):  # no process could start, or shutting down
            raise DecoderCrashed("image decoders are restarting; retry shortly") from None
        try:
            return await future
        except BrokenProcessPool:
            with contextlib.suppress(OSError, RuntimeError):
                self._restart()
            raise DecoderCrashed("an image decoder stopped unexpectedly; retry shortly") from None

    def chunks(self, n: int, most: int = 16) -> list[range]:
        """Index ranges that split `n` images of one request across the workers (at most `most` a call,
        so that other requests' images are not held behind a long one)."""
        size = max(1, min(most, -(-n // self.workers)))
        return [range(i, min(n, i + size)) for i in range(0, n, size)]

    def _restart(self) -> None:
        """Start the pool again if a worker died (a broken pool refuses all work)."""
        pool = self._pool
        if pool is not None and getattr(pool, "_broken", False):
            pool.shutdown(wait=False, cancel_futures=True)
            self._start_pool()
            self.start()

    def shutdown(self, grace: float = 2.0) -> None:
        """Stop the workers: queued work is dropped; work already handed to a worker gets `grace` seconds
        (together) to finish, then its process is terminated (a worker still starting up would otherwise
        fail to read what it was handed, and a long queue would hold the caller)."""
        pool = self._pool
        if pool is None:
            return
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + grace
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.terminate()
