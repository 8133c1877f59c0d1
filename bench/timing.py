"""Timing helpers for the benchmarks: warm up, then time many runs; medians and percentiles."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def time_runs(fn: Callable[[], object], warmup: int = 3, iters: int = 20, min_seconds: float = 0.0) -> dict[str, float]:
    """Call `fn` `warmup` times, then at least `iters` times (and `min_seconds`); latency percentiles in ms."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < iters or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    ms = np.array(times) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p95_ms": round(float(np.percentile(ms, 95)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "runs": len(times),
    }
