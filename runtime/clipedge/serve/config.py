"""The endpoint's configuration as data (pure: importing it loads no web framework, so the CLI takes its
defaults from here)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..options import DECODE_S_PER_MEGAPIXEL, DECODE_TIMEOUT_S, LoadOptions

HOST = "127.0.0.1"  # loopback unless told otherwise


def max_decode_workers() -> int:
    """The most decoding processes a server starts: twice the cores (decoding is CPU work, more processes
    only wait for a core, at about 40 MB each)."""
    return 2 * (os.cpu_count() or 1)


PORT = 8000
DRAIN_SECONDS = 30.0  # graceful shutdown limit


@dataclass(frozen=True)
class Limits:
    max_images: int = 64
    max_labels: int = 1000
    max_label_chars: int = 300
    max_image_chars: int = 16 * 1024 * 1024  # one base64 string or URL


@dataclass(frozen=True)
class ServeConfig:
    """The endpoint's configuration: how to load the model, and the server's limits."""

    load: LoadOptions = field(default_factory=lambda: LoadOptions(thread_pool="shared"))
    max_batch: int = 32
    max_wait_ms: float = 0.0
    max_queue: int = 256  # images admitted at once, whatever the time budget says
    max_queue_ms: float = 1000.0  # refuse when the admitted work would take longer than this
    max_body_bytes: int = 32 * 1024 * 1024
    limits: Limits = field(default_factory=Limits)
    api_key: str | None = None  # one key, or several separated by commas or spaces (one per client)
    client_header: str | None = None  # behind a proxy that sets it: the header naming the client's address
    cors_origins: tuple[str, ...] = ()
    # processes decoding and preprocessing images (about 40 MB each at rest): one per core, at most 4
    decode_workers: int = field(default_factory=lambda: max(1, min(4, os.cpu_count() or 1)))
    fetch_workers: int = 32
    pixel_budget: int = 100_000_000  # pixels decoding at once, across requests
    max_request_pixels: int = 256_000_000  # pixels in one request's images (from their headers, before decoding)
    decode_timeout: float = DECODE_TIMEOUT_S  # seconds a decoding job may run, plus decode_s_per_megapixel each MP
    decode_s_per_megapixel: float = DECODE_S_PER_MEGAPIXEL
    # the template for requests that send none; fixed labels (an edge pack's, or `load.label_embeddings`:
    # no text-tower work for them, and with thresholds multi-label requests) must have been made with it
    template: str | None = None
    client_timeout: float = 10.0  # headers, and each gap in a body, must arrive within this
    min_body_rate: float = 4096  # bytes/s a body must average after client_timeout seconds
    max_body_seconds: float = 120.0  # a body must be complete within this, however steadily it arrives
    max_text_jobs: int = 16  # label / text embedding jobs waiting for the text tower

    def __post_init__(self) -> None:
        positive = {
            "max_batch": self.max_batch,
            "max_queue": self.max_queue,
            "max_queue_ms": self.max_queue_ms,
            "max_body_bytes": self.max_body_bytes,
            "decode_workers": self.decode_workers,
            "fetch_workers": self.fetch_workers,
            "pixel_budget": self.pixel_budget,
            "max_request_pixels": self.max_request_pixels,
            "decode_timeout": self.decode_timeout,
            "client_timeout": self.client_timeout,
            "min_body_rate": self.min_body_rate,
            "max_body_seconds": self.max_body_seconds,
            "max_text_jobs": self.max_text_jobs,
            **{f"limits.{k}": v for k, v in vars(self.limits).items()},
        }
        bad = [k for k, v in positive.items() if not (v > 0 and v != float("inf"))]
        if bad or self.max_wait_ms < 0:
            raise ValueError(f"ServeConfig: {', '.join(bad) or 'max_wait_ms'} must be a finite number above 0")
        if self.decode_workers > max_decode_workers():
            raise ValueError(
                f"decode_workers {self.decode_workers}: at most {max_decode_workers()} on this machine (twice its "
                f"{os.cpu_count()} cores; decoding is CPU work, more processes only wait, at about 40 MB each)"
            )
