"""The HTTP endpoint's routes (needs the `serve` extra), at module level; the app's State is built in its
lifespan, never at import.

Routes (DESIGN.md, Shared rules): GET / liveness ("Healthy", as Azure's inference server); POST / Hugging
Face's zero-shot-image-classification task; POST /score Azure's model-catalog contract; POST /invocations
MLflow 2.x scoring; POST /classify (multipart upload, or one URL), /embed/image, /embed/text; GET /health,
/ready, /metrics, /swagger.json (OpenAPI 3.1, as FastAPI writes it; also at /openapi.json), /docs; GET /ui
the try-it page (ui.py).

`create_app` returns the plain FastAPI app; `create_guarded_app` wraps it in the Guard (API key, body cap,
slow-client limits, request ids) and, when origins are configured, CORS: that is what the runner serves
and what an embedding application should serve.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from fastapi import APIRouter, FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..classifier import format_result
from ..images import ImageError, is_url, probe_pixels, safe_url
from ..label_rules import LabelRequest
from ..labels import LabelError, parse_labels
from ..providers import without_dirs
from ..templates import TemplateError, validate_template
from ..version import __version__
from .batcher import QueueFull
from .contract import (
    check_labels,
    hf_response,
    parse_hf_request,
    parse_json,
    parse_mlflow_request,
    parse_score_request,
    score_response,
)
from .errors import ApiError, error_body, rows_named
from .guard import BodyTooLarge, Guard, SlowBody, client_of
from .state import ServeConfig, State, run_inference, text_work
from .ui import ui_router

log = logging.getLogger("clipedge.serve")
router = APIRouter()
T = TypeVar("T")
MAX_URL_CHARS = 2048


def state_of(request: Request) -> State:
    return request.app.state.clipedge


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_gone(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it (and dropping its queued images) if the client disconnects first."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        raise ClientGone
    finally:
        gone.cancel()


async def read_json(request: Request) -> Any:
    """The body as JSON; refused (503) before it is read when its client's queue is already full."""
    state = state_of(request)
    _, _, admission = state.require_ready()
    with admission.reading_body(client_of(request.scope)):
        body = await request.body()
        if len(body) < 65536:
            return parse_json(body)
        # a large body is parsed off the event loop, which keeps answering (and refusing) other requests
        return await asyncio.get_running_loop().run_in_executor(state.parse_pool, parse_json, body)


async def infer(request: Request, images: list[Any], labels: LabelRequest | None):
    """Price the request by its images' pixels (read from their headers: no decoding), refuse it when it holds
    more than `max_request_pixels` (400) or when its client's work would wait too long (503), then run it
    unless its client goes away (see `run_inference`)."""
    state = state_of(request)
    _, _, admission = state.require_ready()
    client = client_of(request.scope)
    if sum(len(x) for x in images if isinstance(x, str | bytes)) < PROBE_INLINE_CHARS:
        pixels = probe_all(images)
    else:  # many or large images: their headers are read off the event loop
        pixels = await asyncio.get_running_loop().run_in_executor(state.parse_pool, probe_all, images)
    known = sum(p or 0 for p in pixels)  # an URL's image is known once fetched (its decoding is priced then)
    cap = state.config.max_request_pixels
    if known > cap:
        raise ApiError(
            400, "too_many_pixels", f"the request's images hold {known:,} pixels; the limit is {cap:,} a request"
        )
    cost = admission.cost([p if p is not None or is_url(x) else 0 for p, x in zip(pixels, images, strict=True)])
    admission.admit(client, len(images), cost)
    state.metrics.queue_depth.set(admission.in_flight)
    try:
        return await unless_gone(request, run_inference(state, images, labels, client, pixels))
    finally:
        admission.release(client, len(images), cost)
        state.metrics.queue_depth.set(admission.in_flight)


PROBE_INLINE_CHARS = 1 << 20  # requests under this many characters of images have their headers read inline


def probe_all(images: list[Any]) -> list[int | None]:
    """Each image's pixels from its header (None: an URL, or a header that cannot be read)."""
    return [probe_pixels(x) for x in images]


# -- scoring routes -------------------------------------------------------------------------------------
@router.post("/score", summary="Azure ML contract: input_data with image and text columns")
async def score(request: Request) -> JSONResponse:
    state = state_of(request)
    req = parse_score_request(await read_json(request), state.config.limits)
    label_emb, probs = await infer(request, req.images, state.label_request(req.labels, None))
    return JSONResponse(score_response(list(label_emb.labels), probs))


@router.post("/invocations", summary="MLflow 2.x scoring: dataframe_split or dataframe_records")
async def invocations(request: Request) -> JSONResponse:
    state = state_of(request)
    payload = await read_json(request)
    records = isinstance(payload, dict) and "dataframe_split" not in payload and "dataframe_records" in payload
    with rows_named("record {}" if records else "row {}"):  # MLflow's error body has no row field
        req = parse_mlflow_request(payload, state.config.limits)
        label_emb, probs = await infer(request, req.images, state.label_request(req.labels, None))
    return JSONResponse({"predictions": score_response(list(label_emb.labels), probs)})


@router.post("/", summary="Hugging Face zero-shot-image-classification: inputs + parameters.candidate_labels")
async def hugging_face(request: Request) -> JSONResponse:
    state = state_of(request)
    payload = await read_json(request)
    many = isinstance(payload, dict) and isinstance(payload.get("inputs"), list)
    with rows_named("inputs[{}]" if many else "inputs"):  # Hugging Face's error body has no row field
        req, many = parse_hf_request(payload, state.config.limits)
        label_emb, probs = await infer(request, req.images, state.label_request(req.labels, req.template))
    return JSONResponse(hf_response(list(label_emb.labels), probs, many))


@router.post("/classify", summary="multipart upload: one or more image files and comma-separated labels")
async def classify_upload(
    request: Request,
    files: list[UploadFile] | None = File(None, description="image files (or give url)"),  # noqa: B008
    labels: str | None = Form(None, description="comma-separated labels (optional with fixed labels: a pack's)"),
    template: str | None = Form(None, description='prompt template with one {}, e.g. "a photo of a {}."'),
    url: str | None = Form(None, description="one http(s) image URL instead of files, fetched as /score's URLs"),
    multi_label: bool = Form(False, description="score each label on its own against its calibrated threshold"),
) -> JSONResponse:
    state = state_of(request)
    state.require_ready()
    limits = state.config.limits
    label_list = None  # none given: the model's fixed labels (a pack's, or --label-embeddings'), by the label rules
    if labels is not None and labels.strip():
        label_list = parse_labels(labels)
        check_labels(label_list, limits)
    if template:
        validate_template(template)  # refused before the images are looked at, as the other fields
    label_request = state.label_request(label_list, template or None, multi_label)
    files = [f for f in files or () if f.filename or f.size]  # an HTML form's empty file field is no file
    url = url.strip() if url and url.strip() else None  # an empty field counts as not given
    if bool(files) == (url is not None):
        raise ApiError(400, "invalid_input", "give image files or one url, not both" if files else "no image given")
    sources: list[Any]
    names: list[str | None]
    if url is not None:
        if len(url) > MAX_URL_CHARS or not is_url(url):
            raise ApiError(400, "invalid_input", f"url must be an http or https URL of at most {MAX_URL_CHARS} chars")
        sources, names = [url], [safe_url(url)]  # fetched under the server's URL rules (run_inference)
    else:
        if len(files) > limits.max_images:
            raise ApiError(400, "too_many_images", f"{len(files)} files; the limit is {limits.max_images}")
        sources, names = [await f.read() for f in files], [f.filename for f in files]
    label_emb, probs = await infer(request, sources, label_request)
    if multi_label:  # {"labels", "scores", "present"}: present may be empty ("none of these labels")
        rows = [format_result(label_emb.labels, row, multi_label=True) for row in probs]
    else:
        rows = score_response(list(label_emb.labels), probs)
    return JSONResponse([{"image": n, **r} for n, r in zip(names, rows, strict=True)])


@router.post("/embed/image", summary='image embeddings: {"images": [base64 or URL, ...]}')
async def embed_image(request: Request) -> JSONResponse:
    state = state_of(request)
    images = _json_list(await read_json(request), "images", state.config.limits.max_images)
    _, emb = await infer(request, images, None)
    return JSONResponse({"embeddings": emb.tolist(), "dim": int(emb.shape[1])})


@router.post("/embed/text", summary='text embeddings: {"texts": ["...", ...]}')
async def embed_text(request: Request) -> JSONResponse:
    state = state_of(request)
    limits = state.config.limits
    texts = _json_list(await read_json(request), "texts", limits.max_labels)
    check_labels(texts, limits, what="text")
    clf, _, _ = state.require_ready()
    emb = await unless_gone(request, text_work(state, clf.embed_texts, texts))
    return JSONResponse({"embeddings": emb.tolist(), "dim": int(emb.shape[1])})


def _json_list(payload: Any, key: str, limit: int) -> list[str]:
    items = payload.get(key) if isinstance(payload, dict) else None
    if not isinstance(items, list) or not items or not all(isinstance(x, str) for x in items):
        raise ApiError(400, "invalid_input", f'body must be {{"{key}": [string, ...]}} with at least one item')
    if len(items) > limit:
        raise ApiError(400, f"too_many_{key}", f"{len(items)} {key}; the limit is {limit}")
    return items


# -- probes and descriptions ------------------------------------------------------------------------------
@router.get("/", response_class=PlainTextResponse, summary="liveness, as Azure's inference server")
async def liveness() -> str:
    return "Healthy"


@router.get("/health", summary="alive: 503 when the process cannot make progress (restart it)")
async def health(request: Request) -> JSONResponse:
    problem = state_of(request).stuck()
    if problem:
        return JSONResponse(error_body("/health", 503, "stuck", problem), status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/ready", summary="200 once the model is loaded and warmed up; 503 before and while draining")
async def ready(request: Request) -> JSONResponse:
    state = state_of(request)
    if state.load_error:
        return JSONResponse(error_body("/ready", 503, "load_failed", state.load_error), status_code=503)
    if state.draining:
        return JSONResponse(error_body("/ready", 503, "draining", "server is shutting down"), status_code=503)
    if not state.ready or state.clf is None:
        return JSONResponse(error_body("/ready", 503, "not_ready", "model is loading"), status_code=503)
    if state.decoders is not None and state.decoders.working() == 0:
        message = "no image decoder can work now (they are being replaced)"
        return JSONResponse(error_body("/ready", 503, "decoders_unavailable", message), status_code=503)
    clf = state.clf
    return JSONResponse(
        {
            "status": "ready",
            "bundle": clf.bundle.manifest.name,
            "precision": clf.precision,
            "engine": clf.encoder.choice.engine,
            "providers": clf.encoder.providers,
        }
    )


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    state = state_of(request)
    if state.admission is not None:
        state.metrics.queue_depth.set(state.admission.in_flight)
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")


@router.get("/swagger.json", summary="the API description (OpenAPI 3.1), where Azure's server serves it")
async def swagger(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


# -- errors -------------------------------------------------------------------------------------------------
def _reply(request: Request, status: int, code: str, message: str, row: int | None = None, headers=None):
    return JSONResponse(error_body(request.url.path, status, code, message, row), status_code=status, headers=headers)


async def on_api_error(request: Request, e: ApiError) -> JSONResponse:
    return _reply(request, e.status, e.code, e.message, e.row, e.headers or None)


async def on_bad_value(request: Request, e: Exception) -> JSONResponse:
    code: dict[type[Exception], str] = {
        TemplateError: "invalid_template",
        LabelError: "invalid_labels",
        ImageError: "invalid_image",
    }
    return _reply(request, 400, code.get(type(e), "invalid_input"), str(e))


async def on_validation(request: Request, e: RequestValidationError) -> JSONResponse:
    first = e.errors()[0] if e.errors() else {}
    where = ".".join(str(x) for x in first.get("loc", ()))
    return _reply(request, 400, "invalid_input", f"{where}: {first.get('msg', 'invalid request')}")


async def on_http(request: Request, e: StarletteHTTPException) -> JSONResponse:
    return _reply(request, e.status_code, "http_error", str(e.detail))


async def on_queue_full(request: Request, e: QueueFull) -> JSONResponse:
    headers = {"Retry-After": str(e.retry_after)}
    if not hasattr(request, "_body") and request.method == "POST":
        headers["Connection"] = "close"  # refused before its body was read: never drain a body for nothing
    return _reply(request, 503, "queue_full", e.public_message(), headers=headers)


async def on_client_gone(request: Request, e: Exception) -> Response:
    log.info("client went away before %s finished; its work was dropped", request.url.path)
    return Response(status_code=499)


async def on_internal(request: Request, e: Exception) -> Response:
    if isinstance(e, BodyTooLarge | SlowBody):  # the Guard answers 413 / 408 once the app has unwound
        return Response(status_code=413 if isinstance(e, BodyTooLarge) else 408)
    log.error("internal error on %s: %s", request.url.path, type(e).__name__, exc_info=e)
    return _reply(request, 500, "internal", "internal server error")


HANDLERS: dict[Any, Any] = {
    ApiError: on_api_error,
    TemplateError: on_bad_value,
    LabelError: on_bad_value,
    ImageError: on_bad_value,
    RequestValidationError: on_validation,
    StarletteHTTPException: on_http,
    QueueFull: on_queue_full,
    ClientGone: on_client_gone,
    ClientDisconnect: on_client_gone,
    Exception: on_internal,
}


# -- the app ------------------------------------------------------------------------------------------------
@asynccontextmanager
async def lifespan(app: FastAPI):
    state: State = app.state.clipedge
    loop = asyncio.get_running_loop()

    async def load() -> None:
        try:
            rate = await loop.run_in_executor(state.infer_pool, state.load)
            await state.start_decoders()
        except Exception as e:  # one line, no traceback, no absolute paths; the runner exits non-zero
            state.load_error = load_failure(e)
            log.error("model failed to load: %s", state.load_error)
            if state.on_load_failed is not None:
                state.on_load_failed()
            return
        state.start_batcher(rate)
        clf = state.clf
        assert clf is not None
        log.info("ready: %s %s on %s", clf.bundle.manifest.name, clf.precision, clf.encoder.providers[0])

    loader = asyncio.create_task(load())
    yield
    state.ready = False
    loader.cancel()
    if state.batcher is not None:
        await state.batcher.stop()
    state.shutdown()


def load_failure(e: Exception) -> str:
    """A one-line reason without absolute paths."""
    return without_dirs(" ".join(str(e).split()) or type(e).__name__)[:500]


def create_app(config: ServeConfig) -> FastAPI:
    """The plain FastAPI app (no API key or body cap: serve `create_guarded_app` unless you add your own)."""
    app = FastAPI(
        title="clipedge",
        description="CLIP zero-shot image classification: Azure ML contract at /score, MLflow at /invocations, "
        "Hugging Face's task at POST /",
        version=__version__,
        lifespan=lifespan,
        redirect_slashes=False,  # Starlette's redirect names the Host header's host: /ui/ is simply not found
    )
    app.state.clipedge = State(config)
    app.include_router(router)
    app.include_router(ui_router)
    for exc, handler in HANDLERS.items():
        app.add_exception_handler(exc, handler)
    return app


def create_guarded_app(config: ServeConfig) -> Any:
    """`create_app` wrapped in the Guard and, when origins are configured, CORS (outside the Guard, so that
    preflights need no key and refusals carry CORS headers). This is the ASGI app the runner serves."""
    app = create_app(config)
    guarded: Any = Guard(app, app.state.clipedge)
    if config.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        guarded = CORSMiddleware(
            guarded,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-Api-Key", "Content-Type", "X-Request-Id", "X-Ms-Client-Request-Id"],
            expose_headers=["X-Request-Id", "X-Ms-Request-Id", "X-Ms-Client-Request-Id", "X-Ms-Run-Fn-Exec-Ms"],
        )
    guarded.state = app.state
    return guarded
