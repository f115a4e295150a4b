"""HTTP face of the reward service: /health, /metrics, and POST /grade for ad-hoc checks -- on a grader
pool of its own (ad-hoc calls cannot starve the training stream), behind a key when one is set,
with bounded bodies and validation errors that never echo the input."""

from __future__ import annotations

import hmac
import time
from typing import Any

from fastapi import Depends, FastAPI, Header, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
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
    def health() -> tuple[bool, dict[str, Any]]:
        ok = worker.healthy and worker.bus.ping()
        return ok, {"consumer": worker.consumer, "replaced_workers": worker.pool.replaced, "loop_failures": worker.failures}

    app = ops_app("AutoThink reward service", health, registry)
    table, rule = worker.cfg.rewards.table(), worker.cfg.rewards.rule()
    cfg = worker.cfg

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Any) -> Response:
        size = request.headers.get("content-length")
        if request.method == "POST" and (size is None or not size.isdigit() or int(size) > cfg.max_request_bytes):
            return JSONResponse({"detail": f"the body must state its length and be at most {cfg.max_request_bytes} bytes"},
                                status_code=411 if size is None else 413)
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # what was wrong and where, without echoing the input back (it may be huge, or not JSON-serialisable)
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()]
        return JSONResponse({"detail": detail}, status_code=422)

    def authorized(authorization: str | None = Header(None)) -> None:
        if not cfg.api_key:
            return
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), cfg.api_key.encode()):
            raise HTTPException(401, "missing or wrong API key", headers={"WWW-Authenticate": "Bearer"})

    def adhoc_grade(answer_text: str, truth: Any):  # noqa: ANN202 - a GradeResult
        return worker.adhoc_pool.grade(answer_text, truth)

    @app.post("/grade", response_model=GradeResponse, dependencies=[Depends(authorized)])
    def grade(req: GradeRequest) -> GradeResponse:
        t0 = time.perf_counter()
        s = score_sample(req.response, req.num_tokens, req.strategy, req.ground_truth, adhoc_grade, table, rule)
        return GradeResponse(
            correct=s.correct, status=s.status, extracted=s.extracted, mode=s.mode, format_ok=s.format_ok,
            reward=s.reward, grade_ms=(time.perf_counter() - t0) * 1000,
        )

    return app
