"""HTTP face of the rollout service: /health and /metrics.

/health is 200 only while the service can do its job: the engine is up and alive, Redis answers,
the loop is not failing over and over, and new policy versions are not failing to apply -- so a
supervisor or Kubernetes restarts a replica that cannot work instead of trusting it.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from services._http import ops_app
from services.rollout.worker import RolloutWorker


def create_app(worker: RolloutWorker, registry: Any) -> FastAPI:
    def health() -> tuple[bool, dict[str, Any]]:
        return worker.healthy and worker.bus.ping(), worker.health_info()

    return ops_app("AutoThink rollout service", health, registry)
