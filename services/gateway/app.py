"""The gateway's FastAPI app: ``create_app(config, engine)`` puts together the routes
(:mod:`services.gateway.routes`), the serving classes (:mod:`services.gateway.serving`), the
request/response models (:mod:`services.gateway.protocol`), the body-size limit, request ids and
the error handlers.

Every refusal is a 4xx with an OpenAI-style JSON error (``{"error": {"message", "type", "param",
"code"}}``): bad JSON or fields, or a field that would change the result and is not supported
(400, naming it), a missing or wrong API key (401), an unknown model (404), a body that does not
arrive in time (408), a body over the size limit (413), too many requests in flight (429), a model
still loading or unhealthy (503).  A failure inside the gateway is a 500 whose message holds the request id (also
in the ``X-Request-Id`` header of every response) and nothing internal; the log has the traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.gateway.config import GatewayConfig
from services.gateway.metrics import GatewayMetrics
from services.gateway.protocol import ApiError, internal_error
from services.gateway.routes import Gateway, router

log = logging.getLogger("autothink.gateway")

_CLIENT_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_COUNTED = ("/generate", "/v1/chat/completions", "/v1/completions", "/v1/models")


class BodyLimit:
    """ASGI middleware: reads the whole request body before any handler runs, so that a body over
    ``limit`` bytes gets 413 whether it announced its length or came in chunks, and reading stops
    there (#39: a chunked 10 MB body got 400, as FastAPI turned the error raised while it read into
    a parse error).  The handler then receives the body in one message, and after it the
    connection's own messages (``http.disconnect``), which the routes watch to abort a departed
    client's generation.  A body that trickles is cut off below, in the HTTP protocol
    (:mod:`services.gateway.server`)."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await self._too_large(scope, receive, send)
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before its body was complete: nobody to answer
                return None
            body = message.get("body", b"")
            seen += len(body)
            if seen > self.limit:
                return await self._too_large(scope, receive, send)
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replay: dict | None = {"type": "http.request", "body": chunks[0] if len(chunks) == 1 else b"".join(chunks), "more_body": False}

        async def replayed() -> dict:
            nonlocal replay
            if replay is not None:
                message, replay = replay, None
                return message
            return await receive()

        await self.app(scope, replayed, send)

    async def _too_large(self, scope: dict, receive: Callable, send: Callable) -> None:
        too_big = ApiError(413, f"request body is larger than {self.limit} bytes", code="request_too_large")
        # Connection: close, as the rest of the body is not read
        await JSONResponse(too_big.body(), status_code=413, headers={"Connection": "close"})(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


class RequestIds:
    """ASGI middleware: a request id for every request (the client's ``X-Request-Id`` when it is
    a plain token, else a new one) on ``request.state.request_id`` and on the response; counts
    answers by endpoint and status, and times the non-streaming ones."""

    def __init__(self, app: Any, metrics: GatewayMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        rid = given if _CLIENT_ID.fullmatch(given) else uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = rid
        t0 = time.perf_counter()
        answer: dict[str, Any] = {"status": 500, "stream": False}

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                if not any(k.lower() == b"x-request-id" for k, _ in headers):
                    headers.append((b"x-request-id", rid.encode()))
                message = {**message, "headers": headers}
                answer["status"] = message["status"]
                answer["stream"] = any(k.lower() == b"content-type" and v.startswith(b"text/event-stream") for k, v in headers)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            path = scope.get("path", "")
            if path in _COUNTED:
                self.metrics.requests.labels(path, str(answer["status"])).inc()
                if answer["status"] < 400 and not answer["stream"]:
                    self.metrics.latency.labels(path).observe(time.perf_counter() - t0)


def _request_id(request: Request) -> str:
    return getattr(request.state, "request_id", None) or uuid.uuid4().hex[:16]


def create_app(cfg: GatewayConfig, engine: Any, registry: CollectorRegistry | None = None) -> FastAPI:
    """The FastAPI app around ``engine`` (a :class:`services.gateway.engine.VLLMEngine`, or any
    object with the same members); the engine starts in the background when the app starts."""
    metrics = GatewayMetrics(registry or CollectorRegistry())

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(engine.start())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            await asyncio.to_thread(engine.close)

    app = FastAPI(
        title="AutoThink gateway",
        version="2",
        description="Serves an adaptive-thinking R1-style model: POST /generate and an OpenAI-compatible /v1 API.",
        lifespan=lifespan,
        # /openapi.json, /docs and /redoc are routes of their own, behind the API key (routes.py)
        openapi_url=None, docs_url=None, redoc_url=None,
    )
    app.state.gateway = Gateway.build(cfg, engine, metrics)
    app.state.metrics = metrics
    app.state.slots = app.state.gateway.slots
    app.include_router(router)
    app.add_middleware(BodyLimit, limit=cfg.max_request_bytes)
    app.add_middleware(RequestIds, metrics=metrics)  # outermost: every answer, a 413 included, has an id

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError) -> JSONResponse:
        headers = {"X-Request-Id": _request_id(request)}
        if e.status == 429:
            headers["Retry-After"] = "1"
        elif e.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return JSONResponse(e.body(), status_code=e.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        problems = []
        param = None
        for err in e.errors():
            loc = [str(x) for x in err.get("loc", ()) if x != "body"]
            param = param or (".".join(loc) or None)
            problems.append(f"{'.'.join(loc) or 'body'}: {err.get('msg')}")
        return JSONResponse(ApiError(400, "; ".join(problems) or "invalid request", param=param).body(), status_code=400,
                            headers={"X-Request-Id": _request_id(request)})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return JSONResponse(ApiError(e.status_code, str(e.detail), code=code).body(), status_code=e.status_code,
                            headers={"X-Request-Id": _request_id(request)})

    @app.exception_handler(Exception)
    async def _crash(request: Request, e: Exception) -> JSONResponse:
        rid = _request_id(request)
        log.error("request %s failed", rid, exc_info=e)
        metrics.internal_errors.inc()
        return JSONResponse(internal_error(rid).body(), status_code=500, headers={"X-Request-Id": rid})

    return app
