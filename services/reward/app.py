"""HTTP face of the reward service: POST /grade for ad-hoc checks, /health, /metrics."""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field

from autothink.scoring import score_sample
from services._http import ops_app
from services.reward.worker import RewardWorker


class GradeRequest(BaseModel):
    response: str = Field(max_length=1_000_000, description="The model's response (text after the prompt).")
    ground_truth: str | int | float | list[str | int | float] | None
    strategy: str = Field("ellipsis", pattern="^(standard|no_think|ellipsis)$")
    num_tokens: int = Field(0, ge=0)


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

    @app.post("/grade", response_model=GradeResponse)
    def grade(req: GradeRequest) -> GradeResponse:
        t0 = time.perf_counter()
        s = score_sample(req.response, req.num_tokens, req.strategy, req.ground_truth, worker.grade, table, rule)
        return GradeResponse(
            correct=s.correct, status=s.status, extracted=s.extracted, mode=s.mode, format_ok=s.format_ok,
            reward=s.reward, grade_ms=(time.perf_counter() - t0) * 1000,
        )

    return app
