"""Decoding in worker processes: images are decoded and preprocessed (`preprocess.prepare_pixels`, the one
path) in processes of their own, shared fairly between clients, each job under a deadline.

Why processes: in threads, decoding holds the GIL for every step Pillow and numpy do in Python, and an event
loop in the same process then waits for the lock after each of its own system calls (accept, read, write,
log): under overload the endpoint's refusals, which cost it 0.2 ms, took up to 100 ms to leave
(docs/benchmarks.md, "Overload"). Processes share no lock with the loop, and a process can be killed.

- Fair share: jobs wait in one `clipedge.fair.FairQueue`, priced by their pixels, so a client that sends
  gigapixels waits behind its own work; a worker takes the next job when it is free.
- Pixel budget: the pixels being decoded at once (known from the images' headers before decoding) are bounded
  here, in the parent; a job runs alone when it is larger than the whole budget.
- Watchdog: a job that runs past its deadline (`Deadline`: a base plus a time per megapixel) has its worker
  killed and replaced; a job of several images is then retried image by image, so that only the image that
  hangs a decoder gets an error, naming it, and the others are answered.
- A worker that dies otherwise (a crash in a decoder, the OOM killer) costs its job a `DecoderCrashed` (the
  endpoint's 503); a new worker takes its place.

Workers run at a lower priority (nice +5), end with their parent (Linux: PR_SET_PDEATHSIG), never import the
caller's __main__, and ignore Ctrl-C (the parent drains, then stops them).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import types
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .fair import FairQueue
from .fetch import FetchPolicy
from .images import DecodePolicy, ImageError
from .manifest import Preprocess
from .options import DECODE_S_PER_MEGAPIXEL, DECODE_TIMEOUT_S
from .preprocess import prepare_pixels

log = logging.getLogger("clipedge")

PR_SET_PDEATHSIG = 1
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


class DecoderCrashed(RuntimeError):
    """A decoding process died (or none can start, or the pool is shutting down): retry shortly."""


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


def _worker_main(conn: Any, policy: DecodePolicy, spec: Preprocess, nice: int) -> None:
    """A worker process: answer each (sources, names) with `_prepare`'s results until told to stop."""
    _start_worker(policy, spec, nice)
    conn.send(os.getpid())
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        conn.send(_prepare(*message) if message else os.getpid())  # () is a heartbeat


@dataclass(frozen=True)
class Deadline:
    """How long a decoding job may run: `base_s` plus `per_megapixel_s` for each megapixel it holds (a
    49-megapixel PNG decodes in about 0.3 s on the machines measured: docs/serving.md, "Hung decoders")."""

    base_s: float = DECODE_TIMEOUT_S
    per_megapixel_s: float = DECODE_S_PER_MEGAPIXEL

    def seconds(self, pixels: int) -> float:
        return self.base_s + self.per_megapixel_s * pixels / 1e6


UNKNOWN_PIXELS = 1_000_000  # what a job of an image whose header could not be read is priced at
HEARTBEAT_S = 1.0  # an idle worker is asked to answer this often (a stopped one is found before work reaches it)


@dataclass
class _Job:
    client: str
    sources: list[Any]
    names: list[str | None]
    pixels: list[int]
    future: Future

    @property
    def total(self) -> int:
        return sum(self.pixels)


_HEARTBEAT = _Job("", [], [], [], Future())  # what an idle slot sends its worker: "are you there?"


@dataclass
class _Slot:
    """One worker process and the thread that feeds it (its parent: the worker ends with this thread)."""

    index: int
    process: Any = None
    conn: Any = None
    job: _Job | None = None
    deadline: float = 0.0
    killed: bool = False  # by the watchdog, for running past its deadline
    failing_since: float | None = None  # the process could not be started since then
    thread: threading.Thread | None = None
    ready: Future = field(default_factory=Future)


class DecoderPool:
    """`workers` processes that run `prepare_pixels` under one decode policy, fed from a fair queue under a
    pixel budget and a deadline per job (module docstring). Usable from threads (`submit`) and from an event
    loop (`prepare`).

    Sources are bytes, base64 strings, or (where the policy allows paths) paths; never URLs: fetch them first
    (fetching is waiting, not work, and belongs to threads).
    """

    def __init__(
        self,
        workers: int,
        policy: DecodePolicy,
        spec: Preprocess,
        pixel_budget: int,
        nice: int = 5,
        deadline: Deadline | None = None,
    ):
        self.workers, self.spec, self.nice = workers, spec, nice
        self.deadline = deadline or Deadline()
        self.pixel_budget = pixel_budget
        self._context = multiprocessing.get_context("spawn")  # never fork a process that runs threads
        self._policy = replace(policy, fetch=FetchPolicy())  # workers never fetch: URLs come as bytes
        self._cond = threading.Condition()
        self._queue = FairQueue()
        self._in_use = 0  # pixels being decoded
        self.peak_pixels = 0  # the most pixels decoded at once so far
        self._closed = False
        self._slots = [_Slot(i) for i in range(workers)]
        self._watchdog: threading.Thread | None = None
        self.timeouts = 0  # jobs whose worker was killed for running past its deadline
        self.crashes = 0  # workers that died otherwise

    # -- life ------------------------------------------------------------------------------------------
    def start(self) -> list[Future]:
        """Start every worker now: futures that resolve once each answers (with its process id). The workers
        end with the threads started here, which live as long as the pool."""
        for slot in self._slots:
            slot.thread = threading.Thread(target=self._feed, args=(slot,), name=f"clipedge-decoder-{slot.index}")
            slot.thread.daemon = True
            slot.thread.start()
        self._watchdog = threading.Thread(target=self._watch, name="clipedge-decode-watchdog", daemon=True)
        self._watchdog.start()
        return [slot.ready for slot in self._slots]

    def pids(self) -> list[int]:
        """The worker processes' ids (for memory figures and tests)."""
        return [s.process.pid for s in self._slots if s.process is not None and s.process.pid]

    def working(self) -> int:
        """Workers that can take work: started, alive, and not past a deadline."""
        now = time.monotonic()
        with self._cond:
            return sum(
                1
                for s in self._slots
                if s.process is not None and s.process.is_alive() and not (s.job is not None and now > s.deadline)
            )

    def failing_for(self) -> float:
        """Seconds for which no worker could be started (0 when one runs): the process cannot decode at all."""
        with self._cond:
            if any(s.failing_since is None and s.process is not None for s in self._slots):
                return 0.0
            since = [s.failing_since for s in self._slots if s.failing_since is not None]
        return time.monotonic() - min(since) if since else 0.0

    def shutdown(self, grace: float = 2.0) -> None:
        """Stop: queued work is dropped (`DecoderCrashed`); work already handed to a worker gets `grace` seconds
        (together) to finish, then its process is killed."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            dropped = self._queue.remove(lambda job: False)
            self._cond.notify_all()
        for job in dropped:
            _fail(job.future, DecoderCrashed("the server is shutting down"))
        deadline = time.monotonic() + grace
        for slot in self._slots:
            while slot.job is not None and time.monotonic() < deadline:
                time.sleep(0.02)
            self._kill(slot)
        for slot in self._slots:
            if slot.thread is not None:
                slot.thread.join(max(0.0, deadline + 1 - time.monotonic()))

    # -- work ------------------------------------------------------------------------------------------
    def submit(
        self,
        sources: Sequence[Any],
        names: Sequence[str | None] | None = None,
        pixels: Sequence[int | None] | None = None,
        client: str = "",
    ) -> Future:
        """Decode `sources` in one job for `client`: a Future of [(pixel_values [3, H, W] or the ImageError
        `prepare_pixels` raises, with the same message; CPU seconds it took)], one per source. `pixels` are
        the images' sizes from their headers (None: not known). Cancelling the future before a worker takes
        the job drops it.

        Raises (through the future): DecoderCrashed when the worker dies, no worker can start, or the pool
        shuts down.
        """
        n = len(sources)
        job = _Job(
            client,
            list(sources),
            list(names or [None] * n),
            [UNKNOWN_PIXELS if p is None else int(p) for p in (pixels or [None] * n)],
            Future(),
        )
        self._enqueue(job)
        return job.future

    async def prepare(
        self,
        sources: Sequence[Any],
        names: Sequence[str | None] | None = None,
        pixels: Sequence[int | None] | None = None,
        client: str = "",
    ) -> list[tuple[np.ndarray | ImageError, float]]:
        """`submit`, awaited (cancelling the caller drops the job if no worker has taken it yet)."""
        return await asyncio.wrap_future(self.submit(sources, names, pixels, client))

    def chunks(self, pixels: Sequence[int | None], most: int = 16, megapixels: float = 32) -> list[list[int]]:
        """Index groups that split a request's images into jobs: at most `most` images and about `megapixels`
        a job (a large image is a job of its own), spread over the workers, so that other clients' images
        wait for at most one such job per worker."""
        n = len(pixels)
        size = max(1, min(most, -(-n // self.workers)))
        groups: list[list[int]] = []
        current: list[int] = []
        total = 0
        for i, p in enumerate(pixels):
            p = UNKNOWN_PIXELS if p is None else p
            if current and (len(current) >= size or total + p > megapixels * 1e6):
                groups.append(current)
                current, total = [], 0
            current.append(i)
            total += p
        return [*groups, current] if current else groups

    def _enqueue(self, job: _Job, first: bool = False) -> None:
        with self._cond:
            if self._closed:
                _fail(job.future, DecoderCrashed("the server is shutting down"))
                return
            self._queue.push(job.client, job, job.total + 100_000 * len(job.sources), first=first)
            self._cond.notify_all()

    def _take(self, slot: _Slot) -> _Job | None:
        """The next job for this slot's worker (waiting for one that fits the budget), a heartbeat after
        HEARTBEAT_S idle, or None when closed."""
        with self._cond:
            idle_since = time.monotonic()
            while not self._closed:
                if slot.process is None or not slot.process.is_alive():
                    return None  # the caller starts a process first (a worker that died while idle: a new one)
                job = self._queue.pop(lambda j: self._in_use == 0 or self._in_use + j.total <= self.pixel_budget)
                if job is None:
                    if time.monotonic() - idle_since >= HEARTBEAT_S:
                        job = _HEARTBEAT
                        slot.job, slot.killed = job, False
                        slot.deadline = time.monotonic() + self.deadline.base_s
                        self._cond.notify_all()
                        return job
                    self._cond.wait(HEARTBEAT_S)
                    continue
                if not job.future.set_running_or_notify_cancel():
                    continue  # its client went away
                self._in_use += job.total
                self.peak_pixels = max(self.peak_pixels, self._in_use)
                slot.job, slot.killed = job, False
                slot.deadline = time.monotonic() + self.deadline.seconds(job.total)
                self._cond.notify_all()  # the watchdog learns the new deadline
                return job
        return None

    def _feed(self, slot: _Slot) -> None:
        """A slot's thread: keep a worker running and hand it jobs, one at a time."""
        while not self._closed:
            if slot.process is not None and not slot.process.is_alive():
                self.crashes += 1  # died while idle (the OOM killer, a signal): replaced before any work
                self._kill(slot)
            if slot.process is None and not self._spawn(slot):
                time.sleep(1.0)  # out of processes or memory: try again, and say so meanwhile (`failing_for`)
                continue
            job = self._take(slot)
            if job is None:
                continue
            try:
                slot.conn.send((job.sources, job.names) if job is not _HEARTBEAT else ())
                results = slot.conn.recv()
                outcome = "ok"
            except (EOFError, OSError):  # the worker died: killed by the watchdog, or otherwise
                results, outcome = None, "timeout" if slot.killed else "crashed"
            with self._cond:
                self._in_use -= job.total
                slot.job = None
                self._cond.notify_all()
            if outcome != "ok":
                self._kill(slot)
            if job is _HEARTBEAT:
                if outcome == "timeout":
                    self.timeouts += 1
                    log.warning("an idle image decoder stopped answering; it was replaced")
                continue
            self._deliver(job, outcome, results)
        self._kill(slot)

    def _deliver(self, job: _Job, outcome: str, results: Any) -> None:
        if outcome == "ok":
            job.future.set_result(results)
        elif outcome == "crashed":
            self.crashes += 1
            job.future.set_exception(DecoderCrashed("an image decoder stopped unexpectedly; retry shortly"))
        elif len(job.sources) > 1:  # which image hangs the decoder? each again, alone, ahead of the queue
            self.timeouts += 1
            self._retry_alone(job)
        else:
            self.timeouts += 1
            seconds = self.deadline.seconds(job.total)
            name = job.names[0]
            problem = f"decoding did not finish within {seconds:.1f} s (its decoder was stopped and replaced)"
            job.future.set_result([(ImageError(f"{name}: {problem}" if name else problem), seconds)])

    def _retry_alone(self, job: _Job) -> None:
        parts = [
            _Job(job.client, [src], [name], [px], Future())
            for src, name, px in zip(job.sources, job.names, job.pixels, strict=True)
        ]
        results: list[Any] = [None] * len(parts)
        remaining = [len(parts)]
        lock = threading.Lock()

        def done(i: int, part: Future) -> None:
            error = part.exception()
            with lock:
                if error is not None:
                    if not job.future.done():
                        job.future.set_exception(error)
                    return
                results[i] = part.result()[0]
                remaining[0] -= 1
                last = remaining[0] == 0
            if last and not job.future.done():
                job.future.set_result(results)

        for i, part in enumerate(parts):
            part.future.add_done_callback(functools.partial(done, i))
            self._enqueue(part, first=True)

    # -- processes -------------------------------------------------------------------------------------
    def _spawn(self, slot: _Slot) -> bool:
        """Start this slot's worker (from its own thread: the worker ends with it) and wait for its hello."""
        try:
            parent, child = self._context.Pipe()
            with _spawn_lock, _without_main():
                process = self._context.Process(
                    target=_worker_main, args=(child, self._policy, self.spec, self.nice), daemon=True
                )
                process.start()
            child.close()
            if not parent.poll(60) or parent.recv() != process.pid:
                raise OSError("the decoding process did not start")
        except (OSError, EOFError, RuntimeError) as e:
            with self._cond:
                if slot.failing_since is None:
                    slot.failing_since = time.monotonic()
                    log.error("an image decoder cannot start (%s); trying again", e)
                self._fail_if_none_can_start()
            return False
        with self._cond:
            slot.process, slot.conn, slot.failing_since = process, parent, None
            self._cond.notify_all()
        if not slot.ready.done():
            slot.ready.set_result(process.pid)
        return True

    def _fail_if_none_can_start(self) -> None:
        """(Under the lock.) No worker runs and none can start: queued jobs get DecoderCrashed (a 503)."""
        if all(s.process is None for s in self._slots):
            for job in self._queue.remove(lambda job: False):
                _fail(job.future, DecoderCrashed("image decoders cannot start; retry shortly"))

    def _kill(self, slot: _Slot) -> None:
        with self._cond:
            process, conn = slot.process, slot.conn
            slot.process = slot.conn = None
        if process is None:
            return
        with contextlib.suppress(OSError, ValueError):
            process.kill()
        process.join(5)
        with contextlib.suppress(OSError):
            conn.close()

    def _watch(self) -> None:
        """Kill the worker of any job past its deadline (its slot's thread then sees the pipe close)."""
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                waits = []
                for slot in self._slots:
                    if slot.job is None or slot.killed:
                        continue
                    if now >= slot.deadline:
                        slot.killed = True
                        with contextlib.suppress(OSError, ValueError, AttributeError):
                            slot.process.kill()  # SIGKILL: works on a stopped process too
                    else:
                        waits.append(slot.deadline - now)
                self._cond.wait(min(waits) if waits else None)


_spawn_lock = threading.Lock()  # `_without_main` swaps a process-wide module: one start at a time


def _fail(future: Future, error: Exception) -> None:
    if future.set_running_or_notify_cancel():
        future.set_exception(error)
