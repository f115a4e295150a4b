"""HTTP face of the rollout service: /health (ready once the engine is up) and /metrics."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from services._http import ops_app
from services.rollout.worker import RolloutWorker


def create_app(worker: RolloutWorker, registry: Any) -> FastAPI:
    def health() -> tuple[bool, dict[str, Any]]:
        ok = worker.ready.is_set() and worker.bus.ping()
        return ok, {"consumer": worker.consumer, "policy_version": worker.policy_version, "model": worker.cfg.model}

    return ops_app("AutoThink rollout service", health, registry)
