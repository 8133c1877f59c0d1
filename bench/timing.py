"""Timing helpers for the benchmarks: the runtime's own (`clipedge.benchmark`, which `clipedge bench` uses),
re-exported so the harness and the installed command time the same way."""

from __future__ import annotations

from clipedge.benchmark import percentiles, time_runs

__all__ = ["percentiles", "time_runs"]
