"""The HTTP endpoint: FastAPI app speaking the Azure ML contract (/score) plus native routes.

Inference never runs on the event loop: decoding and preprocessing go to a thread pool, the vision tower
to the dynamic batcher's single inference thread, label embeddings (cached) to the text thread. The
model loads and warms up in the background: /health answers at once, /ready says 503 until warm.
"""

from __future__ import annotations

import asyncio
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..classifier import ZeroShotClassifier, softmax
from ..fetch import FetchPolicy
from ..images import DEFAULT_MAX_PIXELS, DecodePolicy, ImageError
from ..templates import parse_labels
from .batcher import DynamicBatcher, QueueFull
from .contract import ApiError, Limits, check_labels, parse_score_request, score_response
from .guard import BodyTooLarge, Guard
from .metrics import Metrics

log = logging.getLogger("clipedge.serve")
IMAGE_ERROR = "The provided image string cannot be decoded. Expected format is base64 string or url string"


@dataclass(frozen=True)
class ServeConfig:
    bundle: str
    precision: str = "auto"
    provider: str = "auto"
    threads: int | None = None
    thread_pool: str = "shared"  # the server owns its process (clipedge.providers.session_options)
    max_batch: int = 32
    max_wait_ms: float = 0.0
    max_queue: int = 256
    max_body_bytes: int = 32 * 1024 * 1024
    limits: Limits = field(default_factory=Limits)
    max_pixels: int = DEFAULT_MAX_PIXELS
    allow_private_urls: bool = False
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    decode_workers: int = 4
    template: str | None = None


class State:
    """What one running app holds; built in its lifespan, never at import."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.metrics = Metrics()
        self.clf: ZeroShotClassifier | None = None
        self.batcher: DynamicBatcher | None = None
        self.ready = False
        self.draining = False
        self.load_error: str | None = None
        self.decode_pool = ThreadPoolExecutor(config.decode_workers, thread_name_prefix="clipedge-decode")
        self.infer_pool = ThreadPoolExecutor(1, thread_name_prefix="clipedge-vision")
        self.text_pool = ThreadPoolExecutor(1, thread_name_prefix="clipedge-text")
        self.policy = DecodePolicy(  # no file paths from the network: base64 or URLs only
            max_pixels=config.max_pixels, fetch=FetchPolicy(allow_private=config.allow_private_urls), allow_paths=False
        )

    def load(self) -> None:
        c = self.config
        self.clf = ZeroShotClassifier.load(
            c.bundle,
            precision=c.precision,
            provider=c.provider,
            threads=c.threads,
            thread_pool=c.thread_pool,
            decode_policy=self.policy,
        )
        h, w = self.clf.bundle.manifest.preprocess.crop_size
        for n in sorted({1, c.max_batch}):  # warm up the shapes the batcher will use
            self.clf.encoder.embed_pixels(np.zeros((n, 3, h, w), dtype=np.float32), batch_size=n)
        self.clf.label_embeddings(["warm-up"], c.template)


def _error(status: int, code: str, message: str, row: int | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(ApiError(status, code, message, row).body(), status_code=status, headers=headers)


def create_app(config: ServeConfig) -> FastAPI:
    state = State(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()

        async def load() -> None:
            try:
                await loop.run_in_executor(state.infer_pool, state.load)
            except Exception as e:  # reported by /ready, never a crash loop
                state.load_error = f"{type(e).__name__}: {e}"
                log.error("model failed to load: %s", state.load_error)
                return
            assert state.clf is not None
            state.batcher = DynamicBatcher(
                lambda px: state.clf.encoder.embed_pixels(px, batch_size=config.max_batch),  # type: ignore[union-attr]
                state.infer_pool,
                max_batch=config.max_batch,
                max_wait=config.max_wait_ms / 1000,
                max_queue=config.max_queue,
                on_batch=state.metrics.batch_size.observe,
            )
            state.batcher.start()
            state.ready = True
            log.info("ready: %s %s on %s", config.bundle, state.clf.precision, state.clf.encoder.providers[0])

        loader = asyncio.create_task(load())
        yield
        state.ready = False
        loader.cancel()
        if state.batcher is not None:
            await state.batcher.stop()
        for pool in (state.decode_pool, state.infer_pool, state.text_pool):
            pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="clipedge",
        description="CLIP zero-shot image classification (Azure ML model-catalog contract at /score)",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.clipedge = state

    @app.exception_handler(ApiError)
    async def api_error(_: Request, e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        return _error(400, "invalid_input", f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        return _error(e.status_code, "http_error", str(e.detail))

    @app.exception_handler(BodyTooLarge)  # raised by the Guard's capped receive while a route reads the body
    async def body_too_large(_: Request, e: BodyTooLarge) -> JSONResponse:
        return _error(413, "body_too_large", f"request body exceeds {config.max_body_bytes:,} bytes")

    @app.exception_handler(QueueFull)
    async def queue_full(_: Request, e: QueueFull) -> JSONResponse:
        return _error(503, "queue_full", f"server busy: {e}; retry shortly", headers={"Retry-After": "1"})

    @app.exception_handler(Exception)
    async def internal(_: Request, e: Exception) -> JSONResponse:
        log.error("internal error: %s", type(e).__name__, exc_info=e)
        return _error(500, "internal", "internal server error")

    def require_ready() -> tuple[ZeroShotClassifier, DynamicBatcher]:
        if not state.ready or state.clf is None or state.batcher is None:
            raise ApiError(503, "not_ready", "model is loading; retry shortly")
        return state.clf, state.batcher

    async def decode_all(sources: list[Any]) -> np.ndarray:
        loop = asyncio.get_running_loop()
        assert state.clf is not None
        futures = [loop.run_in_executor(state.decode_pool, state.clf.prepare_image, s) for s in sources]
        results = await asyncio.gather(*futures, return_exceptions=True)
        for i, r in enumerate(results):
            if isinstance(r, ImageError):
                raise ApiError(400, "invalid_image", f"{IMAGE_ERROR} ({r})", row=i)
            if isinstance(r, BaseException):
                raise r
        return np.stack(results)  # type: ignore[arg-type]

    async def classify(sources: list[Any], labels: list[str], template: str | None) -> list[dict[str, Any]]:
        clf, batcher = require_ready()
        loop = asyncio.get_running_loop()
        label_task = loop.run_in_executor(state.text_pool, clf.label_embeddings, labels, template)
        pixels = await decode_all(sources)
        state.metrics.queue_depth.set(batcher.pending + len(pixels))
        emb = await batcher.submit(pixels)
        label_emb = await label_task
        state.metrics.images.inc(len(pixels))
        probs = softmax(clf.bundle.manifest.logit_scale * (emb @ label_emb.embeddings.T).astype(np.float64))
        return score_response(labels, probs)

    @app.post("/score", summary="Azure ML contract: input_data with image and text columns")
    async def score(request: Request) -> JSONResponse:
        body = await request.body()
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ApiError(400, "invalid_json", "request body is not valid JSON") from None
        req = parse_score_request(payload, config.limits)
        return JSONResponse(await classify(req.images, req.labels, config.template))

    @app.post("/classify", summary="multipart upload: one or more image files and comma-separated labels")
    async def classify_upload(
        files: list[UploadFile] = File(..., description="image files"),  # noqa: B008
        labels: str = Form(..., description="comma-separated labels"),
        template: str | None = Form(None, description='prompt template, e.g. "a photo of a {}."'),
    ) -> JSONResponse:
        label_list = parse_labels(labels)
        check_labels(label_list, config.limits)
        if len(files) > config.limits.max_images:
            raise ApiError(400, "too_many_images", f"{len(files)} files; the limit is {config.limits.max_images}")
        data = [await f.read() for f in files]
        results = await classify(data, label_list, template or config.template)
        return JSONResponse([{"image": f.filename, **r} for f, r in zip(files, results, strict=True)])

    @app.post("/embed/image", summary='image embeddings: {"images": [base64 or URL, ...]}')
    async def embed_image(request: Request) -> JSONResponse:
        images = _json_list(await request.body(), "images", config.limits.max_images)
        _, batcher = require_ready()
        emb = await batcher.submit(await decode_all(images))
        state.metrics.images.inc(len(emb))
        return JSONResponse({"embeddings": emb.tolist(), "dim": int(emb.shape[1])})

    @app.post("/embed/text", summary='text embeddings: {"texts": ["...", ...]}')
    async def embed_text(request: Request) -> JSONResponse:
        texts = _json_list(await request.body(), "texts", config.limits.max_labels)
        long = next((i for i, t in enumerate(texts) if len(t) > config.limits.max_label_chars), None)
        if long is not None:
            raise ApiError(400, "text_too_long", f"text {long} exceeds {config.limits.max_label_chars} characters")
        clf, _ = require_ready()
        emb = await asyncio.get_running_loop().run_in_executor(state.text_pool, clf.embed_texts, texts)
        return JSONResponse({"embeddings": emb.tolist(), "dim": int(emb.shape[1])})

    @app.get("/health", summary="alive")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="200 once the model is loaded and warmed up; 503 before and while draining")
    async def ready() -> JSONResponse:
        if state.load_error:
            return _error(503, "load_failed", state.load_error)
        if state.draining:
            return _error(503, "draining", "server is shutting down")
        if not state.ready or state.clf is None:
            return _error(503, "not_ready", "model is loading")
        clf = state.clf
        return JSONResponse(
            {
                "status": "ready",
                "bundle": clf.bundle.manifest.name,
                "precision": clf.precision,
                "providers": clf.encoder.providers,
            }
        )

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        if state.batcher is not None:
            state.metrics.queue_depth.set(state.batcher.pending)
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"])
    return Guard(app, state, config.api_key, config.max_body_bytes)  # type: ignore[return-value]


def _json_list(body: bytes, key: str, limit: int) -> list[str]:
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "invalid_json", "request body is not valid JSON") from None
    items = payload.get(key) if isinstance(payload, dict) else None
    if not isinstance(items, list) or not items or not all(isinstance(x, str) for x in items):
        raise ApiError(400, "invalid_input", f'body must be {{"{key}": [string, ...]}} with at least one item')
    if len(items) > limit:
        raise ApiError(400, f"too_many_{key}", f"{len(items)} {key}; the limit is {limit}")
    return items
