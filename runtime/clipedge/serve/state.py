"""What one running endpoint holds, built when the app starts (never at import), and `run_inference`, the
one path every scoring route takes: admit, embed the labels, fetch and prepare the images, run the vision
tower through the batcher, score and format with the classifier's stages.

Pools: images are decoded and preprocessed in `decode_workers` processes (`clipedge.decoders`: the event
loop then never waits for the interpreter lock behind decoding, and answers probes and refusals at once);
URL fetches wait on remote servers, so they get threads of their own (`fetch_workers`) and never hold
what decodes other clients' images; the vision tower runs on one inference thread, the text tower on
another. A pixel budget, shared by the decoding processes, bounds the pixels being decoded at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..classifier import ZeroShotClassifier, is_url
from ..decoders import DecodeProcesses, DecoderCrashed
from ..fetch import FetchError, fetch_url
from ..images import ImageError, safe_url
from ..labels import LabelEmbeddings, LabelError
from ..options import LoadOptions
from ..templates import TemplateError, resolve_templates
from .batcher import Admission, DynamicBatcher, QueueFull
from .contract import Limits
from .errors import ApiError
from .metrics import Metrics

log = logging.getLogger("clipedge.serve")
FETCHES_PER_REQUEST = 8
IMAGE_ERROR = "The provided image string cannot be decoded. Expected format is base64 string or url string"


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
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    # processes decoding and preprocessing images (about 40 MB each at rest): one per core, at most 4
    decode_workers: int = field(default_factory=lambda: max(1, min(4, os.cpu_count() or 1)))
    fetch_workers: int = 32
    pixel_budget: int = 100_000_000  # pixels decoding at once, across requests
    template: str | None = None
    # a label-embedding file (`labels build` or `calibrate`): its labels need no text-tower work, and with
    # thresholds it enables multi-label requests; an edge pack's own labels play this part by themselves
    label_embeddings: str | None = None
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
            "client_timeout": self.client_timeout,
            "min_body_rate": self.min_body_rate,
            "max_body_seconds": self.max_body_seconds,
            "max_text_jobs": self.max_text_jobs,
            **{f"limits.{k}": v for k, v in vars(self.limits).items()},
        }
        bad = [k for k, v in positive.items() if not (v > 0 and v != float("inf"))]
        if bad or self.max_wait_ms < 0:
            raise ValueError(f"ServeConfig: {', '.join(bad) or 'max_wait_ms'} must be a finite number above 0")


def _yield_to_the_event_loop() -> None:
    """Worker threads run at a lower priority (nice +5) than the event loop, which then answers probes and
    refusals at once even while decoding and inference keep every core busy (Linux: per-thread nice)."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, 0, min(19, os.getpriority(os.PRIO_PROCESS, 0) + 5))


class State:
    """One app's model, batcher, admission, pools and metrics."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.metrics = Metrics()
        self.clf: ZeroShotClassifier | None = None
        self.batcher: DynamicBatcher | None = None
        self.admission: Admission | None = None
        self.ready = False
        self.draining = False
        self.load_error: str | None = None
        self.on_load_failed: Any = None  # set by the runner: stops the server
        self.text_pending = 0
        self.fixed_labels: LabelEmbeddings | None = None  # --label-embeddings, or an edge pack's labels
        self.fixed_match_template = True  # the server's --template (if any) is the fixed labels' own

        def pool(n: int, name: str) -> ThreadPoolExecutor:
            return ThreadPoolExecutor(n, thread_name_prefix=name, initializer=_yield_to_the_event_loop)

        self.decoders: DecodeProcesses | None = None  # started after the model loads (`start_decoders`)
        self.fetch_pool = pool(config.fetch_workers, "clipedge-fetch")
        self.infer_pool = pool(1, "clipedge-vision")  # ONNX Runtime's threads start here and inherit its priority
        self.text_pool = pool(1, "clipedge-text")
        self.parse_pool = pool(2, "clipedge-json")
        # no file paths from the network: base64 or URLs only; messages never repeat the caller's strings
        self.policy = config.load.decode_policy(untrusted=True)

    def load(self) -> float:
        """Load and warm up (runs on the inference thread). Returns the tower's images/s at max_batch."""
        c = self.config
        self.clf = c.load.load(self.policy)
        h, w = self.clf.bundle.manifest.preprocess.crop_size
        for n in sorted({1, c.max_batch}):  # warm up the shapes the batcher will use
            self.clf.embed(np.zeros((n, 3, h, w), dtype=np.float32), batch_size=n)
        pixels = np.zeros((c.max_batch, 3, h, w), dtype=np.float32)
        best = float("inf")
        for _ in range(3):  # the admission's first rate estimate: the tower alone, best of three
            t0 = time.perf_counter()
            self.clf.embed(pixels, batch_size=c.max_batch)
            best = min(best, time.perf_counter() - t0)
        rate = c.max_batch / max(best, 1e-6)
        if c.label_embeddings:
            self.fixed_labels = self.clf.load_labels(c.label_embeddings)
        elif self.clf.packed_labels is not None:
            self.fixed_labels = self.clf.packed_labels
        if self.fixed_labels is not None and c.template is not None:
            self.fixed_match_template = tuple(resolve_templates(c.template)) == tuple(self.fixed_labels.templates)
            if not self.fixed_match_template and not self.clf.bundle.has_text_tower:
                raise TemplateError(
                    f"--template differs from this edge pack's template ({self.fixed_labels.templates[0]!r}); "
                    "a pack cannot embed labels under another one"
                )
        if self.clf.bundle.has_text_tower:
            self.clf.label_embeddings(["warm-up"], c.template)
        return rate

    async def start_decoders(self) -> None:
        """Start the decoding processes (from the event loop's thread, which lives as long as the server:
        the workers end with it) and wait until they answer."""
        assert self.clf is not None
        c = self.config
        policy = replace(self.policy, draft=self.clf.decode_policy.draft)  # --fast-jpeg applies here too
        self.decoders = DecodeProcesses(c.decode_workers, policy, self.clf.bundle.manifest.preprocess, c.pixel_budget)
        await asyncio.gather(*(asyncio.wrap_future(f) for f in self.decoders.start()))

    def start_batcher(self, rate: float) -> None:
        assert self.clf is not None
        c, clf = self.config, self.clf
        cores = min(c.decode_workers, os.cpu_count() or 1)
        self.admission = Admission(c.max_queue_ms, c.max_queue, rate, cores=cores)
        admission = self.admission

        def on_batch(size: int, seconds: float) -> None:
            self.metrics.batch_size.observe(size)
            admission.observe(size, seconds)

        self.batcher = DynamicBatcher(
            lambda px: clf.embed(px, batch_size=c.max_batch),
            self.infer_pool,
            max_batch=c.max_batch,
            max_wait=c.max_wait_ms / 1000,
            on_batch=on_batch,
        )
        self.batcher.start()
        self.ready = True

    def require_ready(self) -> tuple[ZeroShotClassifier, DynamicBatcher, Admission]:
        if not self.ready or self.clf is None or self.batcher is None or self.admission is None:
            raise ApiError(503, "not_ready", "model is loading; retry shortly", headers={"Retry-After": "1"})
        return self.clf, self.batcher, self.admission

    def shutdown(self) -> None:
        for pool in (self.fetch_pool, self.infer_pool, self.text_pool, self.parse_pool):
            pool.shutdown(wait=False, cancel_futures=True)
        if self.decoders is not None:
            self.decoders.shutdown()


def fixed_subset(state: State, labels: list[str] | None, template: str | None, multi_label: bool):
    """The server's fixed labels (a pack's, or --label-embeddings) for this request, or None when the
    request's labels must be embedded. Multi-label requests need fixed labels with thresholds.

    Raises:
        LabelError: a multi-label request the fixed labels cannot answer.
    """
    fixed = state.fixed_labels
    if multi_label:
        if fixed is None or fixed.thresholds is None:
            raise LabelError(
                "multi-label scoring needs calibrated thresholds: start the server with --label-embeddings "
                "FILE from `clipedge calibrate`, or with an edge pack made with them"
            )
        if template:
            raise LabelError("multi-label requests use the calibrated labels' own template: send none")
        return fixed if labels is None else fixed.subset(labels)
    if fixed is None or template or labels is None or not set(labels) <= set(fixed.labels):
        return None
    if not state.fixed_match_template:  # --template differs from the file's: embed as the server says
        return None
    return fixed.subset(labels)


async def run_inference(
    state: State, images: list[Any], labels: list[str] | None, template: str | None, multi_label: bool = False
):
    """The endpoint's one path from request to result rows (admission is the caller's: `app.infer`).

    Returns:
        (label embeddings, probabilities [N, L]) when labels are given (multi-label: scores [N, L], see
        `ZeroShotClassifier.score_multi`), else (None, embeddings [N, D]).

    Raises:
        ApiError: not ready, overloaded (503), a bad image, label or template (400, naming the row).
    """
    clf, batcher, _ = state.require_ready()
    label_task = None
    try:
        fixed = fixed_subset(state, labels, template, multi_label)
    except LabelError as e:
        raise ApiError(400, "invalid_labels", str(e)) from None
    if fixed is not None:
        label_task = asyncio.ensure_future(asyncio.sleep(0, fixed))
    elif labels is not None:
        templates = template or state.config.template
        try:  # labels seen before need no turn on the text tower's thread
            cached = clf.cached_label_embeddings(labels, templates)
        except (LabelError, TemplateError):
            cached = None  # reported in its turn, after the images (as when it is embedded)
        if cached is not None:
            label_task = asyncio.ensure_future(asyncio.sleep(0, cached))
        else:
            label_task = asyncio.ensure_future(text_work(state, clf.labels, labels, templates))
    try:
        pixels = await _prepare_all(state, images)
        emb = await batcher.submit(pixels)
        state.metrics.images.inc(len(pixels))
        if label_task is None:
            return None, emb
        label_emb: LabelEmbeddings = await label_task
    except (LabelError, TemplateError) as e:
        raise ApiError(400, "invalid_labels" if isinstance(e, LabelError) else "invalid_template", str(e)) from None
    finally:
        if label_task is not None and not label_task.done():
            label_task.cancel()
        elif label_task is not None and not label_task.cancelled():
            label_task.exception()  # retrieved: a label error after an image error is not logged as lost
    return label_emb, (clf.score_multi(emb, label_emb) if multi_label else clf.score(emb, label_emb))


async def text_work(state: State, fn: Any, *args: Any) -> Any:
    """Run `fn` on the text tower's thread, refusing (503) when too many text jobs already wait: label
    work is not counted in images, so it has a queue bound of its own."""
    if state.text_pending >= state.config.max_text_jobs:
        raise QueueFull(f"{state.text_pending} text-tower jobs waiting")
    state.text_pending += 1
    try:
        return await asyncio.get_running_loop().run_in_executor(state.text_pool, fn, *args)
    finally:
        state.text_pending -= 1


async def _prepare_all(state: State, sources: list[Any]) -> list[np.ndarray]:
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + state.policy.fetch.timeout  # one deadline for every URL of the request
    fetches = asyncio.Semaphore(FETCHES_PER_REQUEST)  # one request cannot take every fetch thread
    admission, decoders = state.admission, state.decoders
    assert decoders is not None

    async def decode(indices: range | list[int], srcs: list[Any], names: list[str | None]) -> None:
        for i, (result, seconds) in zip(indices, await decoders.prepare(srcs, names), strict=True):
            results[i] = result
            if admission is not None:
                admission.observe_decode(seconds)

    async def fetch_and_decode(i: int, url: str) -> None:
        name = safe_url(url)
        async with fetches:
            try:
                data = await loop.run_in_executor(
                    state.fetch_pool, fetch_url, url.strip(), state.policy.fetch, deadline
                )
            except FetchError as e:
                results[i] = ImageError(f"{name}: {e}")
                return
        await decode([i], [data], [name])

    results: list[Any] = [None] * len(sources)
    urls = [i for i, s in enumerate(sources) if is_url(s)]
    inline = [i for i, s in enumerate(sources) if not is_url(s)]
    jobs = [fetch_and_decode(i, sources[i]) for i in urls]
    for part in decoders.chunks(len(inline)):
        indices = [inline[k] for k in part]
        jobs.append(decode(indices, [sources[i] for i in indices], [None] * len(indices)))
    tasks = [asyncio.ensure_future(j) for j in jobs]
    try:
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for t in tasks:
            t.cancel()
    for i, r in enumerate(results):
        if isinstance(r, ImageError):
            raise ApiError(400, "invalid_image", f"{IMAGE_ERROR} ({r})", row=i)
    for r in outcomes:
        if isinstance(r, DecoderCrashed):
            raise ApiError(503, "decoder_restarted", str(r), headers={"Retry-After": "1"})
        if isinstance(r, BaseException):
            raise r
    return results  # type: ignore[return-value]  # stacked by the batcher, off the event loop
