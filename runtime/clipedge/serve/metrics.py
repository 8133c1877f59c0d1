"""Prometheus metrics of one server (its own registry: nothing global)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "clipedge_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "clipedge_request_seconds", "request latency by route", ["route"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "clipedge_batch_size", "images per vision-tower run", buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("clipedge_queue_depth", "images waiting or running in the batcher", registry=r)
        self.images = Counter("clipedge_images", "images classified or embedded", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
