"""The thread-pool policy: which ONNX Runtime intra-op thread pool a session uses.

Three pools (see `session_options`): "session" (the library's default), "shared" (the CLI, endpoint and
batch workers, which own their process) and "session-spin" (benchmarks). The process-wide shared pool is
process state by nature (ONNX Runtime allows one); it is created on first use, never at import.
"""

from __future__ import annotations

import logging
import threading

import onnxruntime as ort

from .options import POOLS

log = logging.getLogger("clipedge")
_shared_pool: dict[str, int | None] = {}  # set by the first shared-pool session of the process
# Held while choosing a pool and creating a session: a per-session session must not be created after
# another thread made the shared pool between the choice and the creation (ONNX Runtime would refuse it).
pool_lock = threading.RLock()


def _shared_pool_threads(threads: int | None) -> int | None:
    """Create ONNX Runtime's process-wide thread pool on first use (never at import); its size is fixed.

    One intra-op pool serves every session of the process (vision and text, every bundle). Its threads
    spin between runs, which is what makes batch-1 latency low, and, as they are shared, the two towers
    no longer busy-wait against each other (measured in docs/runtime.md, "Thread pools").
    """
    if "threads" not in _shared_pool:
        try:
            ort.set_global_thread_pool_sizes(int(threads or 0), 1)  # 0: one thread per physical core
        except Exception as e:  # created already in this process by other code: use it as it is
            if "already" not in str(e):
                raise
            log.info("ONNX Runtime's global thread pool exists already (%s); sharing it", e)
        _shared_pool["threads"] = threads
    elif threads != _shared_pool["threads"]:
        log.warning(
            "threads=%s ignored: this process shares one ONNX Runtime thread pool, created with threads=%s",
            threads,
            _shared_pool["threads"],
        )
    return _shared_pool["threads"]


def session_options(threads: int | None = None, pool: str = "session") -> ort.SessionOptions:
    """Session options for one of three thread pools (`threads` intra-op threads; None: one per core):

    - "session" (library default): a pool per session whose threads do not spin, so a process that also
      runs other ONNX Runtime sessions, or vision and text at once, does not busy-wait against itself;
    - "shared" (what the clipedge CLI, endpoint and batch workers use: they own their process): one
      process-wide pool whose threads spin, created on first use with the first `threads` given.
      Fastest (see `_shared_pool_threads`), but once it exists ONNX Runtime refuses per-session pools in
      that process, for any session: use it only where clipedge owns the process;
    - "session-spin": a pool per session whose threads spin (benchmarks).

    After a shared pool was created in this process every clipedge session uses it, whatever was asked.
    """
    if pool not in POOLS:
        raise ValueError(f"unknown thread pool {pool!r} (choose from {', '.join(POOLS)})")
    with pool_lock:
        return _options(threads, pool)


def _options(threads: int | None, pool: str) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if pool == "shared" or _shared_pool:
        _shared_pool_threads(threads)
        so.use_per_session_threads = False
        return so
    if threads:
        so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if pool == "session-spin" else "0")
    return so


def shared_pool_exists() -> bool:
    """Whether this process made ONNX Runtime's process-wide pool (then per-session pools are refused)."""
    return bool(_shared_pool)
