"""The HTTP server Label Studio talks to (FastAPI).

Routes: ``GET /health`` and ``GET /`` (health), ``POST /setup``, ``POST /predict``, ``POST /webhook``,
``GET /versions`` (and ``POST /train``, which older Label Studio versions call on "Start Training"); for CVAT, the
nuclio dashboard's ``GET /api/functions``, ``GET /api/functions/<name>`` and ``POST /api/function_invocations``, and
``POST /cvat/webhook`` (its signed webhooks, for fine-tuning: ``cvat/webhook.py``).

* ``/health``, ``/setup``, ``/versions`` and ``/webhook`` run on the event loop and never wait for the model;
  ``/predict`` runs in a worker thread, and model work is serialised by ``Engine.lock``.
* The model is loaded by the serving process at startup, in a background thread (``/health`` answers meanwhile).
* ``BASIC_AUTH_USER``/``BASIC_AUTH_PASS`` protect every route but ``/health``; bodies above ``MAX_REQUEST_MB``
  get 413; malformed JSON or wrong types get 4xx with a message, never a traceback.

Run with ``adaptiveclick serve`` (see ``cli/backend.py``), or ``uvicorn --factory ml_backend.app:create_app``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import secrets
import threading
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from .config import Settings, auth_pair_problem
from .cvat.interactor import FUNCTION_NAME, CvatInteractor, function_info
from .cvat.webhook import MAX_WEBHOOK_BYTES, SIGNATURE_HEADER, CvatWebhooks
from .errors import BackendError, BadRequest
from .interactive.engine import Engine
from .interactive.sessions import ClientGone, RunStats
from .jsonbody import parse_json
from .labelstudio.adapter import LS_USER_AGENT, Backend
from .media.fetcher import MediaFetcher, in_container, is_loopback_host

log = logging.getLogger("adaptiveclick.backend")
try:
    __version__ = version("adaptiveclick")
except PackageNotFoundError:
    __version__ = "0+unknown"
INLINE_JSON_BYTES = 256 * 1024  # bigger bodies are parsed off the event loop
CVAT_WEBHOOK_PATH = "/cvat/webhook"


class AsciiJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped: any string can be rendered (an echoed lone surrogate never fails the reply)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


class GuardMiddleware:
    """Basic auth (all routes but /health), declared-size limit and Label Studio traffic accounting."""

    def __init__(self, app: ASGIApp, settings: Settings, backend: Backend):
        self.app = app
        self.settings = settings
        self.backend = backend
        user, password = settings.basic_auth_user, settings.basic_auth_pass
        self._expected = ("Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()).encode()
        self._last_401_log = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":  # no route takes one; refused before any route could, auth or not
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":  # lifespan
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if headers.get(b"user-agent", b"").decode("latin-1").startswith(LS_USER_AGENT):
            self.backend.ls_requests += 1
        path = scope.get("path", "")
        # CVAT cannot send basic auth with a webhook; its HMAC signature (checked by the route) authenticates it.
        signed_route = path == CVAT_WEBHOOK_PATH and bool(self.settings.cvat_webhook_secret)
        if self.settings.basic_auth_enabled and path != "/health" and not signed_route:
            given = headers.get(b"authorization", b"")
            if not secrets.compare_digest(given, self._expected):
                self._log_refusal(path, bool(given))
                await _send_json(
                    send,
                    401,
                    {"error": "authentication required: this backend is protected by BASIC_AUTH_USER/BASIC_AUTH_PASS"},
                    extra=[(b"www-authenticate", b'Basic realm="adaptiveclick"')],
                )
                return
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.settings.max_request_bytes
            except ValueError:
                await _send_json(send, 400, {"error": "invalid Content-Length header"})
                return
            if too_big:
                await _send_json(
                    send,
                    413,
                    {"error": f"request body above MAX_REQUEST_MB={self.settings.max_request_bytes // 2**20}"},
                )
                return
        await self.app(scope, receive, send)

    def _log_refusal(self, path: str, had_credentials: bool) -> None:
        now = time.monotonic()
        if now - self._last_401_log < 60:  # at most one line a minute
            return
        self._last_401_log = now
        hint = ""
        if path.rstrip("/") == "/webhook" and not had_credentials:
            hint = (
                " (Label Studio's auto-created webhook sends no credentials: add them with "
                'PATCH /api/webhooks/{id} {"headers": {"Authorization": "Basic <base64 user:pass>"}}, '
                "or ignore this if you need no webhooks)"
            )
        log.warning("401 for %s: %s basic-auth credentials%s", path[:100], "wrong" if had_credentials else "no", hint)


async def _send_json(send: Send, status: int, payload: dict[str, Any], extra: list | None = None) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())] + (extra or [])
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _raw_body(request: Request, limit: int, cap: str = "") -> bytes:
    """The request's bytes, read with a size cap (also for chunked bodies); 413 naming ``cap`` above it."""
    chunks = bytearray()
    async for chunk in request.stream():
        chunks += chunk
        if len(chunks) > limit:
            raise BackendError(f"request body above {cap or f'MAX_REQUEST_MB={limit // 2**20}'}", status=413)
    return bytes(chunks)


async def _json_body(request: Request, limit: int) -> Any:
    """The request's JSON, read with a size cap (also for chunked bodies); 4xx with a message otherwise."""
    chunks = await _raw_body(request, limit)
    if len(chunks) > INLINE_JSON_BYTES:
        return await run_in_threadpool(parse_json, bytes(chunks))
    return parse_json(bytes(chunks))


def _warn_if_no_traffic(backend: Backend, delay: float, stop: threading.Event) -> None:
    if stop.wait(delay) or backend.ls_requests:
        return
    log.warning(
        "no request from Label Studio in %.0f s. If adding this backend in Label Studio fails with 'URL resolves to "
        "a reserved network address' (Label Studio >= 1.23.1 blocks loopback/private addresses), start Label "
        "Studio with ML_BLOCK_LOCAL_IP=false and SSRF_PROTECTION_ENABLED=false, or serve the backend on a public "
        "address; also check the URL given to Label Studio and, with basic auth, the credentials",
        delay,
    )


def _check_label_studio(backend: Backend) -> None:
    """Tell at startup, not on the first click, when LABEL_STUDIO_URL is malformed or unreachable."""
    url = backend.settings.label_studio_url
    if not url:
        return
    if "://" not in url:
        log.error("LABEL_STUDIO_URL=%r has no scheme: write it as http://%s", url, url)
        return
    try:
        backend.fetcher.session.get(url.rstrip("/") + "/health", timeout=3).close()
    except Exception as exc:
        from urllib.parse import urlsplit

        hint = ""
        if is_loopback_host(urlsplit(url).hostname or "") and in_container():
            hint = (
                "; this backend runs in a container, where localhost is the container itself: use the compose "
                "service name (http://label-studio:8080) or http://host.docker.internal:8080"
            )
        log.warning("Label Studio is not reachable at LABEL_STUDIO_URL=%s (%s)%s", url, type(exc).__name__, hint)
    else:
        log.info("Label Studio is reachable at %s", url)


def _warm_up(backend: Backend) -> None:
    _check_label_studio(backend)
    try:
        import label_studio_sdk.converter.brush
        import label_studio_sdk.label_interface  # noqa: F401   and out of /setup's 3 s)
    except Exception:  # pragma: no cover - reported on the first click instead
        log.exception("could not import label_studio_sdk")
    backend.engine.load()


def _log_startup(settings: Settings, backend: Backend) -> None:
    ls_url = settings.label_studio_url
    log.info(
        "AdaptiveClick ML backend %s: engine=%s version=%s LABEL_STUDIO_URL=%s api_key=%s local_files_root=%s "
        "basic_auth=%s cache=%d MB ttl=%.0f s",
        __version__,
        settings.model_engine,
        backend.engine.model_version,
        ls_url or "(unset)",
        backend.fetcher.auth.kind,
        settings.local_files_document_root or "(unset)",
        "on" if settings.basic_auth_enabled else "off",
        settings.session_cache_mb,
        settings.session_ttl_s,
    )
    if not settings.label_studio_api_key:
        log.warning(
            "LABEL_STUDIO_API_KEY is not set: images stored in Label Studio (/data/upload, cloud storage) "
            "cannot be downloaded until it is (the token /setup sends is tried as a fallback)"
        )


def _configure_logging(level: str) -> None:
    logger = logging.getLogger("adaptiveclick")
    logger.setLevel(level)
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"))
        logger.addHandler(handler)


def create_app(
    settings: Settings | None = None, engine: Engine | None = None, fetcher: MediaFetcher | None = None
) -> FastAPI:
    settings = settings or Settings.from_env()
    if settings.basic_auth_enabled and not (settings.basic_auth_user and settings.basic_auth_pass):
        raise ValueError(auth_pair_problem(settings))  # an empty password would be accepted, on 0.0.0.0
    _configure_logging(settings.log_level)
    backend = Backend(settings, engine, fetcher)
    cvat = CvatInteractor(backend.core)
    cvat_webhooks = CvatWebhooks(settings, backend.finetune)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        import anyio.to_thread

        anyio.to_thread.current_default_thread_limiter().total_tokens = max(settings.threads, 2)
        _log_startup(settings, backend)
        threading.Thread(target=_warm_up, args=(backend,), name="model-load", daemon=True).start()
        if backend.finetune is not None:
            backend.finetune.start()  # recover jobs of a dead worker, resume the queue, watch MODEL_DIR/current
        stop = threading.Event()
        if settings.no_traffic_warning_s > 0:
            threading.Thread(
                target=_warn_if_no_traffic,
                args=(backend, settings.no_traffic_warning_s, stop),
                name="no-traffic",
                daemon=True,
            ).start()
        try:
            yield
        finally:
            stop.set()
            backend.close()

    app = FastAPI(
        title="AdaptiveClick ML backend",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        default_response_class=AsciiJSONResponse,
    )
    app.state.backend = backend
    app.state.cvat = cvat
    limiters: dict[str, anyio.CapacityLimiter] = {}  # made on the event loop, at the first request
    app.add_middleware(GuardMiddleware, settings=settings, backend=backend)

    @app.exception_handler(BackendError)
    async def _backend_error(request: Request, exc: BackendError) -> JSONResponse:
        level = logging.WARNING if exc.status < 500 else logging.ERROR
        log.log(level, "%s %s -> %d: %s", request.method, request.url.path, exc.status, exc.message)
        return AsciiJSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return AsciiJSONResponse(
            {"error": f"internal error ({type(exc).__name__}); see the backend log"}, status_code=500
        )

    @app.get("/health")
    @app.get("/")
    async def health() -> AsciiJSONResponse:
        status = backend.health()
        if status["status"] == "UP":
            return AsciiJSONResponse(status)
        # Label Studio accepts any 2xx as a working backend and shows only the status line of anything else, so a
        # model still loading (or one that failed to) answers 503: its connection check then says "503 Service
        # Unavailable" instead of connecting a backend whose clicks would wait or return nothing.
        headers = {"Retry-After": "5"} if status["status"] == "LOADING" else None
        return AsciiJSONResponse(status, status_code=503, headers=headers)

    @app.get("/versions")
    async def versions() -> dict[str, Any]:
        return backend.versions()

    @app.post("/setup")
    async def setup(request: Request) -> dict[str, Any]:
        body = await _json_body(request, settings.max_request_bytes)
        return backend.setup(body)

    @app.post("/webhook")
    async def webhook(request: Request) -> dict[str, Any]:
        body = await _json_body(request, settings.max_request_bytes)
        return backend.webhook(body)

    @app.post("/train")
    async def train(request: Request) -> dict[str, Any]:
        body = await _json_body(request, settings.max_request_bytes)
        if backend.finetune is not None and isinstance(body, dict):  # older Label Studio's "Start Training"
            return backend.webhook({"action": "START_TRAINING", "project": body.get("project")})
        log.info("/train called: fine-tuning is off (it needs MODEL_DIR)")
        return {"status": "ok", "training": "not supported online"}

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        t0 = time.perf_counter()
        body = backend.read(await _json_body(request, settings.max_request_bytes))  # 4xx when malformed
        needed = backend.image_to_fetch(body)
        if needed is not None:
            # Download first, on the download limiter's threads: a burst of slow image hosts then waits for those
            # slots without holding request threads, and clicks on tasks whose image is cached go on meanwhile.
            if "download" not in limiters:
                limiters["download"] = anyio.CapacityLimiter(max(2, settings.threads // 2))  # downloads at once
            await anyio.to_thread.run_sync(backend.fetch_image, *needed, limiter=limiters["download"])
        cancelled = threading.Event()

        async def watch_disconnect() -> None:  # a client that left gets no more forwards computed for it
            while not cancelled.is_set():
                if await request.is_disconnected():
                    cancelled.set()
                    return
                await anyio.sleep(0.05)

        failure: Exception | None = None
        async with anyio.create_task_group() as group:
            group.start_soon(watch_disconnect)
            try:
                reply, stats = await run_in_threadpool(backend.predict, body, cancelled)
            except Exception as exc:  # raised below, outside the task group (which would wrap it in a group)
                failure = exc
            finally:
                cancelled.set()  # ends the watcher
        if isinstance(failure, ClientGone):
            log.info("/predict: the client disconnected; %s", failure)
            return Response(status_code=499)
        if failure is not None:
            raise failure
        # Rendering a large batch reply is CPU work: off the event loop, so /health keeps answering.
        response = await run_in_threadpool(AsciiJSONResponse, reply)
        _timing_headers(response, stats, t0)
        return response

    @app.post(CVAT_WEBHOOK_PATH)
    async def cvat_webhook(request: Request) -> dict[str, Any]:
        # CVAT's job/task/project events (cvat/webhook.py): signature checked before the body is parsed.
        limit = min(settings.max_request_bytes, MAX_WEBHOOK_BYTES)
        body = await _raw_body(request, limit, f"{limit // 1024} KiB (a CVAT webhook is a few kB)")
        return cvat_webhooks.handle(body, request.headers.get(SIGNATURE_HEADER))

    # --- CVAT: the three calls CVAT's lambda manager makes to a nuclio dashboard (CVAT_NUCLIO_HOST/PORT, with
    # CVAT_NUCLIO_INVOKE_METHOD=dashboard), answered by this server: no nuclio needed. Behind the same basic auth.

    def _our_function(name: str) -> None:
        if name != FUNCTION_NAME:
            raise BackendError(f"no function {name[:100]!r} here: this backend serves {FUNCTION_NAME!r}", status=404)

    @app.get("/api/functions")
    async def cvat_functions() -> dict[str, Any]:
        return {FUNCTION_NAME: function_info(cvat.state())}

    @app.get("/api/functions/{name}")
    async def cvat_function(name: str) -> dict[str, Any]:
        _our_function(name)
        return function_info(cvat.state())

    @app.post("/api/function_invocations")
    async def cvat_invoke(request: Request) -> Response:
        t0 = time.perf_counter()
        name = request.headers.get("x-nuclio-function-name")
        if not name:
            raise BadRequest("the x-nuclio-function-name header is missing (CVAT sends the function's name)", 400)
        _our_function(name)
        path = request.headers.get("x-nuclio-path", "/")
        if path not in ("", "/"):
            raise BackendError(f"the function answers x-nuclio-path '/', not {path[:100]!r}", status=404)
        body = await _json_body(request, settings.max_request_bytes)
        stats = RunStats()
        reply = await run_in_threadpool(cvat.invoke, body, stats)
        response = await run_in_threadpool(AsciiJSONResponse, reply)
        _timing_headers(response, stats, t0)
        return response

    return app


def _timing_headers(response: Response, stats: RunStats, t0: float) -> None:
    """Where a click's time went (``Server-Timing``), its forwards (``X-Forwards``) and cache hits (``X-Cache``)."""
    total = (time.perf_counter() - t0) * 1000
    response.headers["Server-Timing"] = (
        f"fetch;dur={stats.fetch_ms:.2f}, queue;dur={stats.queue_ms:.2f}, model;dur={stats.model_ms:.2f}, "
        f"rle;dur={stats.rle_ms:.2f}, store;dur={stats.store_ms:.2f}, total;dur={total:.2f}"
    )
    response.headers["X-Forwards"] = str(stats.forwards)
    hits = (
        ("image", stats.image_hit),
        ("session", stats.session_hit),
        ("result", stats.result_hit),
        ("store", stats.store_hit),
    )
    response.headers["X-Cache"] = ",".join(k for k, v in hits if v) or "miss"
    if stats.superseded:
        response.headers["X-Superseded"] = "1"
