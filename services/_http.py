"""What every service's HTTP face shares: /health and Prometheus /metrics, a server thread, and the
run loop of a stream consumer (reward, rollout) beside it."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Any, Protocol

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
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", log_config=None))
    threading.Thread(target=server.run, name="http", daemon=True).start()
    return server


class Consumer(Protocol):
    """A service's worker: ``run()`` loops until ``stop`` is set; ``close()`` frees what it holds."""

    stop: threading.Event

    def run(self) -> None: ...

    def close(self) -> None: ...


def serve_consumer(name: str, worker: Consumer, app: FastAPI, host: str, port: int) -> int:
    """Run ``worker`` in the main thread (vLLM's engine wants it) with ``app`` served beside it.

    SIGTERM and SIGINT ask the worker to stop after its current entry.  A worker that dies logs
    why and the process exits 1: a service must not keep answering /health without its worker.
    """
    server = serve_in_thread(app, host, port)
    stop = lambda *_: worker.stop.set()  # noqa: E731
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        worker.run()
        return 0
    except BaseException:
        logging.getLogger(f"autothink.{name}").exception("the %s worker stopped", name)
        return 1
    finally:
        server.should_exit = True
        worker.close()
