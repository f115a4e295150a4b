"""What every service's HTTP face shares: /health and Prometheus /metrics, and a server thread."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import uvicorn
from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


def ops_app(title: str, health: Callable[[], tuple[bool, dict[str, Any]]], registry: CollectorRegistry) -> FastAPI:
    """A FastAPI app with ``/health`` (200 when ready, else 503) and ``/metrics``."""
    app = FastAPI(title=title, version="1")

    @app.get("/health")
    def _health(response: Response) -> dict[str, Any]:
        ok, info = health()
        response.status_code = 200 if ok else 503
        return {"status": "ok" if ok else "starting", **info}

    @app.get("/metrics")
    def _metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


def serve_in_thread(app: FastAPI, host: str, port: int) -> uvicorn.Server:
    """Run ``app`` in a daemon thread (the main thread keeps the engine); stop with ``should_exit``."""
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    threading.Thread(target=server.run, name="http", daemon=True).start()
    return server
