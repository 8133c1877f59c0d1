"""What one running endpoint holds, built when the app starts (never at import), and `run_inference`, the
one path every scoring route takes: admit, embed the labels, fetch and prepare the images, run the vision
tower through the batcher, score and format with the classifier's stages.

Pools: images are decoded and preprocessed in `decode_workers` processes (`clipedge.decoders`: the event
loop then never waits for the interpreter lock behind decoding, and answers probes and refusals at once);
URL fetches wait on remote servers, so they get threads of their own (`fetch_workers`) and never hold
what decodes other clients' images; the vision tower runs on one inference thread, the text tower on
another. A pixel budget bounds the pixels being decoded at once; decoding and the tower are shared fairly
between clients, and a decoding job runs under a deadline (`clipedge.decoders`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import numpy as np

from ..classifier import ZeroShotClassifier
from ..decoders import Deadline, DecoderCrashed, DecoderPool
from ..fetch import FetchError, fetch_url
from ..images import DecodePolicy, ImageError, is_url, probe_pixels, safe_url
from ..label_rules import LabelRequest
from ..labels import LabelEmbeddings, LabelError, LabelFileError
from ..templates import TemplateError
from .batcher import Admission, DynamicBatcher, QueueFull
from .config import ServeConfig
from .errors import ApiError
from .metrics import Metrics

log = logging.getLogger("clipedge.serve")
FETCHES_PER_REQUEST = 8
STUCK_S = 60.0  # /health fails after this long without progress (the tower on one batch; decoders not starting)
IMAGE_ERROR = "The provided image string cannot be decoded. Expected format is base64 string or url string"


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

        def pool(n: int, name: str) -> ThreadPoolExecutor:
            return ThreadPoolExecutor(n, thread_name_prefix=name, initializer=_yield_to_the_event_loop)

        self.decoders: DecoderPool | None = None  # started after the model loads (`start_decoders`)
        self.fetch_pool = pool(config.fetch_workers, "clipedge-fetch")
        self.infer_pool = pool(1, "clipedge-vision")  # ONNX Runtime's threads start here and inherit its priority
        self.text_pool = pool(1, "clipedge-text")
        self.parse_pool = pool(2, "clipedge-json")
        # no file paths from the network: base64 or URLs only; messages never repeat the caller's strings
        self.policy = DecodePolicy.from_options(config.load, untrusted=True)

    def load(self) -> float:
        """Load and warm up (runs on the inference thread). Returns the tower's images/s at max_batch.

        Raises:
            What `ZeroShotClassifier.load` raises; TemplateError: fixed labels made with another template
            than the server's (the label rules, checked once at start).
        """
        c = self.config
        clf = ZeroShotClassifier.load(c.load, decode_policy=self.policy)
        if clf.fixed_labels is not None:
            clf.labels(self.label_request(None, None))  # the server's template must be the fixed labels' own
        clf.warm_up((1, c.max_batch), c.template)  # the shapes the batcher will use
        h, w = clf.bundle.manifest.preprocess.crop_size
        pixels = np.zeros((c.max_batch, 3, h, w), dtype=np.float32)
        best = float("inf")
        for _ in range(3):  # the admission's first rate estimate: the tower alone, best of three
            t0 = time.perf_counter()
            clf.embed(pixels, batch_size=c.max_batch)
            best = min(best, time.perf_counter() - t0)
        self.clf = clf
        return c.max_batch / max(best, 1e-6)

    def label_request(self, labels: list[str] | None, template: str | None, multi_label: bool = False) -> LabelRequest:
        """A request's labels (None: the fixed labels), under its template or else the server's."""
        names = None if labels is None else tuple(labels)
        return LabelRequest(names, None, template or self.config.template, multi_label)

    async def start_decoders(self) -> None:
        """Start the decoding processes and wait until they answer."""
        assert self.clf is not None
        c = self.config
        if c.decode_workers > (os.cpu_count() or 1):
            log.warning(
                "%d decoding processes on %d cores: more than one per core only adds memory (about 40 MB each)",
                c.decode_workers,
                os.cpu_count() or 1,
            )
        policy = replace(self.policy, draft=self.clf.decode_policy.draft)  # --fast-jpeg applies here too
        deadline = Deadline(c.decode_timeout, c.decode_s_per_megapixel)
        spec = self.clf.bundle.manifest.preprocess
        self.decoders = DecoderPool(c.decode_workers, policy, spec, c.pixel_budget, deadline=deadline)
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

    def stuck(self) -> str | None:
        """Why the process cannot make progress at all (an orchestrator should restart it), or None: the
        inference thread held by one batch for over STUCK_S, or no decoding process able to start for as
        long."""
        batcher, decoders = self.batcher, self.decoders
        if batcher is not None and batcher.running_since is not None:
            held = time.monotonic() - batcher.running_since
            if held > STUCK_S:
                return f"the vision tower has been running one batch for {held:.0f} s"
        if decoders is not None and decoders.failing_for() > STUCK_S:
            return f"no image decoder could start for {decoders.failing_for():.0f} s"
        return None

    def require_ready(self) -> tuple[ZeroShotClassifier, DynamicBatcher, Admission]:
        if not self.ready or self.clf is None or self.batcher is None or self.admission is None:
            raise ApiError(503, "not_ready", "model is loading; retry shortly", headers={"Retry-After": "1"})
        return self.clf, self.batcher, self.admission

    def shutdown(self) -> None:
        for pool in (self.fetch_pool, self.infer_pool, self.text_pool, self.parse_pool):
            pool.shutdown(wait=False, cancel_futures=True)
        if self.decoders is not None:
            self.decoders.shutdown()


async def run_inference(
    state: State,
    images: list[Any],
    labels: LabelRequest | None,
    client: str = "",
    pixels: list[int | None] | None = None,
):
    """The endpoint's one path from request to result rows (admission is the caller's: `app.infer`): decoding
    and the tower are shared fairly between clients (`client`: the Guard's identity); `pixels` are the images'
    sizes from their headers (None: not known).

    Returns:
        (label embeddings, probabilities [N, L]) when labels are asked for (multi-label: scores [N, L], see
        `ZeroShotClassifier.score_multi`), else (None, embeddings [N, D]).

    Raises:
        ApiError: not ready, overloaded (503), a bad image, label or template (400, naming the row).
    """
    clf, batcher, _ = state.require_ready()
    label_task = None
    if labels is not None:
        try:  # fixed labels, and labels seen before, need no turn on the text tower's thread
            ready = clf.ready_labels(labels)
        except (LabelError, LabelFileError, TemplateError) as e:
            raise label_error(e) from None
        if ready is not None:
            label_task = asyncio.ensure_future(asyncio.sleep(0, ready))
        else:
            label_task = asyncio.ensure_future(text_work(state, clf.labels, labels))
    try:
        prepared = await _prepare_all(state, images, client, pixels or [None] * len(images))
        emb = await batcher.submit(prepared, client)
        state.metrics.images.inc(len(prepared))
        if label_task is None or labels is None:
            return None, emb
        label_emb: LabelEmbeddings = await label_task
    except (LabelError, LabelFileError, TemplateError) as e:
        raise label_error(e) from None
    finally:
        if label_task is not None and not label_task.done():
            label_task.cancel()
        elif label_task is not None and not label_task.cancelled():
            label_task.exception()  # retrieved: a label error after an image error is not logged as lost
    return label_emb, (clf.score_multi(emb, label_emb) if labels.multi_label else clf.score(emb, label_emb))


def label_error(e: Exception) -> ApiError:
    """A label rule's refusal as a 400: invalid_template for templates, invalid_labels otherwise."""
    return ApiError(400, "invalid_template" if isinstance(e, TemplateError) else "invalid_labels", str(e))


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


async def _prepare_all(state: State, sources: list[Any], client: str, pixels: list[int | None]) -> list[np.ndarray]:
    """Fetch URLs (threads of their own) and decode everything (the decoding processes, in jobs of a few images
    each, shared fairly with other clients)."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + state.policy.fetch.timeout  # one deadline for every URL of the request
    fetches = asyncio.Semaphore(FETCHES_PER_REQUEST)  # one request cannot take every fetch thread
    admission, decoders = state.admission, state.decoders
    assert decoders is not None

    async def decode(indices: list[int], srcs: list[Any], names: list[str | None], sizes: list[int | None]) -> None:
        for i, (result, seconds) in zip(indices, await decoders.prepare(srcs, names, sizes, client), strict=True):
            results[i] = result
            if admission is not None:
                admission.observe_decode(seconds, pixels[i])

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
        pixels[i] = probe_pixels(data)
        await decode([i], [data], [name], [pixels[i]])

    results: list[Any] = [None] * len(sources)
    urls = [i for i, s in enumerate(sources) if is_url(s)]
    inline = [i for i, s in enumerate(sources) if not is_url(s)]
    jobs = [fetch_and_decode(i, sources[i]) for i in urls]
    for part in decoders.chunks([pixels[i] for i in inline]):
        indices = [inline[k] for k in part]
        jobs.append(decode(indices, [sources[i] for i in indices], [None] * len(indices), [pixels[i] for i in indices]))
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
    return results  # stacked by the batcher, off the event loop
