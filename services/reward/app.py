"""HTTP face of the reward service: /health, /metrics, and POST /grade for ad-hoc checks.

POST /grade cannot hurt training or the service (issue #39, M1):

* it grades on a pool of its own (``adhoc_grader_workers``), never on the training stream's;
* it is async and bounded: at most ``adhoc_grader_workers + adhoc_queue`` requests are admitted
  (grading or waiting; a waiting request holds no server thread, only a place in the queue), and
  none whose expected wait (the requests ahead of it times the recent grade time) is over
  ``adhoc_max_wait_s``; the next one gets 429 at once, with ``Retry-After``, before its body is
  even read.  An admitted request that still finds no grader free within ``adhoc_max_wait_s``
  gets the same 429 then.  So no request waits longer than that for a grader, and a flood can
  use up neither the threads nor the CPU that ``/health`` and the training stream need;
* it needs the key when one is set, and is closed (403) when none is set and the service listens
  beyond loopback.  The OpenAPI docs (``/docs``, ``/redoc``, ``/openapi.json``) follow the same
  rule; ``/health`` and ``/metrics`` stay open;
* bodies are bounded and validation errors never echo the input.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import Counter, Gauge
from pydantic import BaseModel, Field

from autothink.scoring import score_sample
from services._http import ops_app
from services.reward.worker import RewardWorker


class GradeRequest(BaseModel):
    response: str = Field(max_length=1_000_000, description="The model's response (text after the prompt).")
    ground_truth: str | int | float | list[str | int | float] | None
    strategy: str = Field("ellipsis", pattern="^(standard|no_think|ellipsis)$")
    num_tokens: int = Field(0, ge=0, le=10_000_000)


class GradeResponse(BaseModel):
    correct: bool | None = Field(description="None when the grade could not be made (status timeout or error): not a wrong answer.")
    status: str
    extracted: str | None
    mode: str
    format_ok: bool
    reward: float
    grade_ms: float


def create_app(worker: RewardWorker, registry: Any) -> FastAPI:
    cfg = worker.cfg
    capacity = cfg.adhoc_grader_workers + cfg.adhoc_queue
    admitted = 0  # requests grading or waiting; touched only on the event loop, so no lock
    recent_s = 0.05  # moving average of one ad-hoc grade, for Retry-After
    executor = ThreadPoolExecutor(max_workers=cfg.adhoc_grader_workers, thread_name_prefix="adhoc-grade")
    graders = asyncio.Semaphore(cfg.adhoc_grader_workers)  # a free executor thread (and so a free ad-hoc worker)
    refused = 0
    rejected = Counter("autothink_reward_adhoc_rejected_total", "POST /grade requests refused with 429 (queue full)",
                       registry=registry)
    in_flight = Gauge("autothink_reward_adhoc_in_flight", "POST /grade requests grading or waiting", registry=registry)

    def health() -> tuple[bool, dict[str, Any]]:
        ok = worker.healthy and worker.bus.ping()
        return ok, {
            "consumer": worker.consumer, "replaced_workers": worker.pool.replaced,
            "adhoc_replaced_workers": worker.adhoc_pool.replaced, "adhoc_in_flight": admitted,
            "adhoc_rejected": refused, "loop_failures": worker.failures,
        }

    app = ops_app("AutoThink reward service", health, registry)
    table, rule = cfg.rewards.table(), cfg.rewards.rule()
    closed_reason = (None if cfg.api_key or cfg.loopback_only else
                     f"POST /grade and the API docs are closed: the service listens on {cfg.host}, beyond loopback, "
                     "and no key is set (AUTOTHINK_REWARD_API_KEY)")
    if closed_reason is not None:
        logging.getLogger("autothink.reward").warning("%s", closed_reason)
    docs = {p for p in (app.docs_url, app.redoc_url, app.openapi_url, app.swagger_ui_oauth2_redirect_url) if p}

    def refusal(authorization: str | None) -> HTTPException | None:
        """Why a request to a keyed path is refused, or None to let it in."""
        if closed_reason is not None:
            return HTTPException(403, closed_reason)
        if not cfg.api_key:
            return None
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), cfg.api_key.encode()):
            return HTTPException(401, "missing or wrong API key", headers={"WWW-Authenticate": "Bearer"})
        return None

    def expected_wait_s() -> float:
        """How long a request admitted now would wait for an ad-hoc grader (0 while one is free)."""
        ahead = admitted + 1 - cfg.adhoc_grader_workers
        return 0.0 if ahead <= 0 else ahead / cfg.adhoc_grader_workers * recent_s

    def early_reply(path: str, method: str, headers: dict[bytes, bytes]) -> JSONResponse | None:
        """The refusal of a request from its head alone (no body read), or None to let it in."""
        grading = method == "POST" and path == "/grade"
        if path in docs or grading:
            denied = refusal(headers.get(b"authorization", b"").decode("latin-1"))
            if denied is not None:
                return JSONResponse({"detail": denied.detail}, status_code=denied.status_code, headers=denied.headers)
        size = headers.get(b"content-length", b"").decode("latin-1")
        if method == "POST" and (not size or not size.isdigit() or int(size) > cfg.max_request_bytes):
            return JSONResponse({"detail": f"the body must state its length and be at most {cfg.max_request_bytes} bytes"},
                                status_code=411 if not size else 413)
        if grading:
            wait = expected_wait_s()
            if admitted >= capacity or wait > cfg.adhoc_max_wait_s:
                return too_busy(f"{capacity} ad-hoc grades are in flight or queued (adhoc_grader_workers + adhoc_queue)"
                                if admitted >= capacity else
                                f"the ad-hoc graders are busy for about {wait:.1f} s (over adhoc_max_wait_s = {cfg.adhoc_max_wait_s:g})",
                                max(wait, recent_s))
        return None

    def too_busy(why: str, wait_s: float) -> JSONResponse:
        nonlocal refused
        rejected.inc()
        refused += 1
        retry = max(1, math.ceil(wait_s))
        return JSONResponse({"detail": f"{why}; retry in {retry} s"}, status_code=429, headers={"Retry-After": str(retry)})

    class Guard:
        """Plain ASGI, not ``@app.middleware``: a refused request costs a header check and a small
        reply, which matters when a flood sends hundreds a second."""

        def __init__(self, inner: Any):
            self.inner = inner

        async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
            nonlocal admitted
            if scope["type"] != "http":
                return await self.inner(scope, receive, send)
            path, method = scope["path"], scope["method"]
            reply = early_reply(path, method, dict(scope["headers"]))
            if reply is not None:
                return await reply(scope, receive, send)
            if not (method == "POST" and path == "/grade"):
                return await self.inner(scope, receive, send)
            admitted += 1  # taken before any await, so no two requests get the last place
            in_flight.set(admitted)
            try:
                await self.inner(scope, receive, send)
            finally:
                admitted -= 1
                in_flight.set(admitted)

    app.add_middleware(Guard)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # what was wrong and where, without echoing the input back (it may be huge, or not JSON-serialisable)
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()]
        return JSONResponse({"detail": detail}, status_code=422)

    async def authorized(authorization: str | None = Header(None)) -> None:  # async: no server thread for a check
        denied = refusal(authorization)
        if denied is not None:
            raise denied

    def adhoc_grade(answer_text: str, truth: Any):  # noqa: ANN202 - a GradeResult
        return worker.adhoc_pool.grade(answer_text, truth)

    def score(req: GradeRequest) -> tuple[Any, float]:  # in the executor: parsing a 1 MB response is no work for the event loop
        t0 = time.perf_counter()
        s = score_sample(req.response, req.num_tokens, req.strategy, req.ground_truth, adhoc_grade, table, rule,
                         cfg.max_response_chars)
        return s, time.perf_counter() - t0

    @app.post("/grade", response_model=GradeResponse, dependencies=[Depends(authorized)],
              responses={429: {"description": "Too many ad-hoc grades in flight or queued; retry after Retry-After seconds."}})
    async def grade(req: GradeRequest) -> GradeResponse | JSONResponse:
        nonlocal recent_s
        try:  # admitted by Guard; now wait, holding no thread, for a grader
            await asyncio.wait_for(graders.acquire(), timeout=cfg.adhoc_max_wait_s)
        except asyncio.TimeoutError:
            return too_busy(f"no ad-hoc grader came free within adhoc_max_wait_s = {cfg.adhoc_max_wait_s:g} s", recent_s)
        try:
            s, grade_s = await asyncio.get_running_loop().run_in_executor(executor, score, req)
        finally:
            graders.release()
        recent_s = 0.8 * recent_s + 0.2 * grade_s
        return GradeResponse(
            correct=s.correct, status=s.status, extracted=s.extracted, mode=s.mode, format_ok=s.format_ok,
            reward=s.reward, grade_ms=grade_s * 1000,
        )

    return app
