"""The gateway's HTTP routes (as vLLM's ``api_router``): each endpoint authorises, admits the
request (429 past ``max_concurrency``), hands it to its serving class and shapes the answer.

* A client that goes away stops its generation: a non-streaming request is raced against the
  connection's ``http.disconnect`` and cancelled (the engine aborts its calls); a stream's
  generator is closed, and its slot released, when the response ends for any reason.
* Client mistakes are 4xx :class:`ApiError`; anything else is logged with its traceback under the
  request id and answered with a 500 that carries the id and nothing internal.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.gateway.config import GatewayConfig
from services.gateway.metrics import GatewayMetrics
from services.gateway.protocol import (
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
    GenerateRequest,
    ignored_fields,
    internal_error,
)
from services.gateway.serving import DONE, ServingChat, ServingCompletion, ServingGenerate, sse

log = logging.getLogger("autothink.gateway")

IGNORED_HEADER = "x-autothink-ignored-fields"
_FIELD_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_HEADER_NAMES = 32  # names shown in the header; the rest are counted
_LOG_NAMES = 256  # distinct names logged per process: clients choose them, so the set must not grow for ever
_logged_ignored: set[str] = set()  # field names already logged (once per name and process, as vLLM does)


def ignored(req: Any) -> str | None:
    """The ``x-autothink-ignored-fields`` value of a request (None: every field used); a field that
    would change the result is a 400 instead (:func:`ignored_fields`).  Each name is logged once.
    Names come from the client: only plain ones are shown, at most 32, the others counted.

    >>> ignored(ChatCompletionRequest(messages=[{"role": "user", "content": "q"}], user="u", **{"a b": 1}))
    'user, (+1 more)'
    """
    names = ignored_fields(req)
    if not names:
        return None
    new = [n for n in names if n not in _logged_ignored]
    if new and len(_logged_ignored) < _LOG_NAMES:
        _logged_ignored.update(new)
        log.warning("request fields this gateway does not use (ignored; listed in the %s response header): %s",
                    IGNORED_HEADER, ", ".join(repr(n)[:70] for n in new[:_HEADER_NAMES]))
    shown = [n for n in names if _FIELD_NAME.fullmatch(n)][:_HEADER_NAMES]
    rest = len(names) - len(shown)
    return ", ".join(shown + ([f"(+{rest} more)"] if rest else []))


class Slots:
    """Admission control: at most ``limit`` requests in flight; the rest get 429 at once."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0

    def acquire(self) -> None:
        if self.used >= self.limit:
            raise ApiError(429, f"the gateway is serving {self.used} requests, its limit; retry shortly", "rate_limit_error", code="overloaded")
        self.used += 1

    def release(self) -> None:
        self.used -= 1


@dataclass
class Gateway:
    """Everything the routes need, kept on ``app.state.gateway``."""

    cfg: GatewayConfig
    engine: Any
    metrics: GatewayMetrics
    slots: Slots
    generate: ServingGenerate
    chat: ServingChat
    completion: ServingCompletion

    @classmethod
    def build(cls, cfg: GatewayConfig, engine: Any, metrics: GatewayMetrics) -> Gateway:
        return cls(cfg, engine, metrics, Slots(cfg.max_concurrency), ServingGenerate(cfg, engine, metrics),
                   ServingChat(cfg, engine, metrics), ServingCompletion(cfg, engine, metrics))


def gateway(request: Request) -> Gateway:
    return request.app.state.gateway


async def authorize(request: Request) -> None:  # async: FastAPI runs a plain def in its thread pool
    cfg = gateway(request).cfg
    if not cfg.api_key:
        return
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), cfg.api_key.encode()):
        raise ApiError(401, "missing or wrong API key (send Authorization: Bearer KEY)", "authentication_error", code="invalid_api_key")


def check_model(gw: Gateway, name: str | None) -> None:
    if name is not None and name != gw.cfg.served_model_name:
        raise ApiError(404, f"model {name!r} does not exist; this gateway serves {gw.cfg.served_model_name!r}",
                       param="model", code="model_not_found")


class GuardedStream(StreamingResponse):
    """Server-sent events that always end cleanly: an error becomes an error event, and when the
    response ends — finished, failed, or the client gone — the events' generator is closed (its
    engine calls are aborted) and the request's slot released at once, not at garbage collection."""

    def __init__(self, events: AsyncIterator[str], request_id: str, done: Callable[[], None],
                 aborted: Callable[[], None] = lambda: None, headers: dict[str, str] | None = None):
        self._events, self._request_id, self._done, self._aborted = events, request_id, done, aborted
        self._finished = False  # the last event went out
        super().__init__(self._guarded(), media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Request-Id": request_id, **(headers or {})})

    async def _guarded(self) -> AsyncIterator[str]:
        try:
            async for chunk in self._events:
                yield chunk
        except ApiError as e:
            yield sse(e.body())
            yield DONE
        except Exception:
            log.exception("request %s failed while streaming", self._request_id)
            yield sse(internal_error(self._request_id).body())
            yield DONE
        self._finished = True

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with contextlib.suppress(BaseException):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]
            with contextlib.suppress(BaseException):
                await self._events.aclose()  # type: ignore[attr-defined]
            if not self._finished:  # the client left mid-stream (#39: only non-streaming ones were counted)
                self._aborted()
                log.info("request %s: client disconnected mid-stream; generation aborted", self._request_id)
            self._done()


async def _until_disconnect(request: Request) -> None:
    """Returns when the client closes the connection (the body has been read by then)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def serve(request: Request, create: Callable[[str], Awaitable[Any]], ignored_header: str | None = None) -> Any:
    """Admit, run ``create(request_id)`` while watching the connection, answer; the request's
    ignored fields go in the ``x-autothink-ignored-fields`` header."""
    gw = gateway(request)
    rid = request.state.request_id
    headers = {"X-Request-Id": rid}
    if ignored_header:
        headers[IGNORED_HEADER] = ignored_header
    if not gw.engine.ready:
        why = gw.engine.problem() if hasattr(gw.engine, "problem") else gw.engine.error
        raise ApiError(503, f"the model is not ready: {why}" if why else "the model is not ready; retry when /ready answers 200",
                       "server_error", code="not_ready")
    gw.slots.acquire()
    gw.metrics.in_flight.set(gw.slots.used)
    streaming = False

    def release() -> None:
        gw.slots.release()
        gw.metrics.in_flight.set(gw.slots.used)

    try:
        work = asyncio.ensure_future(create(rid))
        watch = asyncio.ensure_future(_until_disconnect(request))
        try:
            done, _ = await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            work.cancel()
            raise
        finally:
            watch.cancel()
        if work not in done:  # the client left: stop generating for it
            work.cancel()
            with contextlib.suppress(BaseException):
                await work
            gw.metrics.aborted.inc()
            log.info("request %s: client disconnected; generation aborted", rid)
            return Response(status_code=499)
        result = work.result()
        if isinstance(result, AsyncIterator):
            streaming = True
            return GuardedStream(result, rid, release, gw.metrics.aborted.inc, headers)
        return JSONResponse(result, headers=headers)
    except ApiError:
        raise
    except Exception:
        log.exception("request %s failed", rid)
        gw.metrics.internal_errors.inc()
        raise internal_error(rid) from None
    finally:
        if not streaming:
            release()


router = APIRouter()
authorized = [Depends(authorize)]


# -- ops
@router.get("/health", tags=["ops"])
async def health(request: Request) -> JSONResponse:
    """Liveness: 200 while the gateway can serve or is still loading; 503 when the engine died,
    is stuck or failed to start, or the weight follower stopped — restart the process."""
    engine = gateway(request).engine
    problem = engine.problem() if hasattr(engine, "problem") else engine.error
    state = "failed" if problem else ("ready" if engine.ready else "starting")
    body = {"status": "ok" if not problem else "unhealthy", "engine": state, "error": problem}
    return JSONResponse(body, status_code=503 if problem else 200)


@router.get("/ready", tags=["ops"])
async def ready(request: Request) -> JSONResponse:
    """Readiness: 200 while the model serves, else 503 (loading, or unhealthy as /health says)."""
    gw = gateway(request)
    engine = gw.engine
    gw.metrics.version.set(engine.policy_version)
    problem = engine.problem() if hasattr(engine, "problem") else engine.error
    body = {
        "ready": engine.ready, "model": gw.cfg.served_model_name, "policy_version": engine.policy_version, "error": problem,
        "swaps": getattr(engine, "swaps", 0), "last_swap_pause_s": getattr(engine, "last_swap_pause_s", 0.0),
        "last_swap_load_s": getattr(engine, "last_swap_load_s", 0.0),
        "weights": engine.weights_status() if hasattr(engine, "weights_status") else None,
    }
    return JSONResponse(body, status_code=200 if engine.ready else 503)


@router.get("/metrics", tags=["ops"])
async def prometheus(request: Request) -> Response:
    gw = gateway(request)
    gw.metrics.version.set(gw.engine.policy_version)
    gw.metrics.swap_pause.set(getattr(gw.engine, "last_swap_pause_s", 0.0))
    gw.metrics.swaps.set(getattr(gw.engine, "swaps", 0))
    return Response(generate_latest(gw.metrics.registry), media_type=CONTENT_TYPE_LATEST)


# -- the API's description: behind the key like the API itself (#39: /docs and /openapi.json were open)
@router.get("/openapi.json", include_in_schema=False, dependencies=authorized)
async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@router.get("/docs", include_in_schema=False, dependencies=authorized)
async def docs(request: Request) -> Response:
    from fastapi.openapi.docs import get_swagger_ui_html

    return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{request.app.title} - docs")


@router.get("/redoc", include_in_schema=False, dependencies=authorized)
async def redoc(request: Request) -> Response:
    from fastapi.openapi.docs import get_redoc_html

    return get_redoc_html(openapi_url="/openapi.json", title=f"{request.app.title} - ReDoc")


# -- POST /generate
@router.post("/generate", tags=["adaptive"], dependencies=authorized)
async def generate(req: GenerateRequest, request: Request) -> Any:
    """Generate under a mode: `auto` (the model decides whether to think), `think` or `no_think`.

    Returns the answer text, the reasoning separately, the boxed answer, whether the model
    thought, `think_probability` (auto mode: the probability of thinking under this request's
    temperature and top-p, from the step that sampled the first token), usage split into
    prompt/reasoning/answer tokens, the policy version(s) and the latency.  `max_tokens` defaults
    to what fits the context.  With `stream: true`, server-sent events: `delta` events, then one
    `result` event shaped like the non-streaming response, then `[DONE]`.
    """
    return await serve(request, lambda rid: gateway(request).generate.create(req, rid), ignored(req))


# -- OpenAI
@router.get("/v1/models", tags=["openai"], dependencies=authorized)
async def models(request: Request) -> dict[str, Any]:
    gw = gateway(request)
    return {"object": "list", "data": [{
        "id": gw.cfg.served_model_name, "object": "model", "created": int(time.time()), "owned_by": "autothink",
        # root: the served name, not cfg.model: a filesystem path is nobody's business (#39)
        "root": gw.cfg.served_model_name, "max_model_len": gw.engine.max_model_len,
    }]}


@router.post("/v1/chat/completions", tags=["openai"], dependencies=authorized)
async def chat(req: ChatCompletionRequest, request: Request) -> Any:
    """OpenAI chat completions; the reasoning comes back as `reasoning` (and `reasoning_content`).
    Mode: `reasoning_effort` ("none": no thinking; minimal/low/medium/high: a thinking budget),
    `chat_template_kwargs.thinking` ("auto" | "on" | "off"), or `mode`.  `max_completion_tokens`
    bounds reasoning + answer."""
    check_model(gateway(request), req.model)
    return await serve(request, lambda rid: gateway(request).chat.create(req, rid), ignored(req))


@router.post("/v1/completions", tags=["openai"], dependencies=authorized)
async def completions(req: CompletionRequest, request: Request) -> Any:
    """OpenAI text completions: the prompt is sent as is; no mode and no reasoning split."""
    check_model(gateway(request), req.model)
    return await serve(request, lambda rid: gateway(request).completion.create(req, rid), ignored(req))
