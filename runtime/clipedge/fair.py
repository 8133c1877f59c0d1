"""Sharing work fairly between clients: start-time fair queueing (Goyal, Vin and Cheng, 1996), the scheduler
behind Envoy's and nginx's fair sharing in spirit: each client's jobs keep their order, and a client that sends
much waits behind its own work, not in front of everyone else's.

A job's start tag is the later of the queue's virtual time and its client's previous finish tag; its finish
tag is the start tag plus its cost. The job with the smallest start tag goes first, and the virtual time moves
to the start tag of the job taken. A client that was idle starts at the current virtual time, so its first
job goes ahead of the queued work of busy clients; a busy client's jobs are spread out by their cost.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterator
from typing import Any


class FairQueue:
    """Jobs of many clients, taken in start-tag order (not thread-safe: callers hold their own lock)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str, Any]] = []
        self._finish: dict[str, float] = {}
        self._order = itertools.count()
        self.virtual_time = 0.0

    def __len__(self) -> int:
        return len(self._heap)

    def __iter__(self) -> Iterator[Any]:
        return (job for _, _, _, job in sorted(self._heap))

    def push(self, client: str, job: Any, cost: float, first: bool = False) -> None:
        """Queue `job` for `client` at `cost` (any positive unit: seconds, pixels, images); `first` puts it
        ahead of everything queued (work already owed, e.g. a retry)."""
        if first:
            start = self.virtual_time - 1.0
        else:
            start = max(self.virtual_time, self._finish.get(client, 0.0))
            self._finish[client] = start + max(cost, 1e-9)
        heapq.heappush(self._heap, (start, next(self._order), client, job))

    def pop(self, fits: Callable[[Any], bool] = lambda job: True) -> Any | None:
        """The first job (smallest start tag) for which `fits(job)`, removed; None when there is none."""
        skipped = []
        found = None
        while self._heap:
            entry = heapq.heappop(self._heap)
            if fits(entry[3]):
                found = entry
                break
            skipped.append(entry)
        for entry in skipped:
            heapq.heappush(self._heap, entry)
        if found is None:
            return None
        self.virtual_time = max(self.virtual_time, found[0])
        if len(self._finish) > 1024:  # a finish tag behind the virtual time no longer orders anything
            self._finish = {c: f for c, f in self._finish.items() if f > self.virtual_time}
        return found[3]

    def remove(self, keep: Callable[[Any], bool]) -> list[Any]:
        """Remove and return the jobs for which `keep(job)` is False."""
        gone = [e for e in self._heap if not keep(e[3])]
        if gone:
            self._heap = [e for e in self._heap if keep(e[3])]
            heapq.heapify(self._heap)
        return [e[3] for e in gone]
