"""`python -m services.rollout`: the vLLM rollout service."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from services._cli import configure_logging, service_settings
    from services.rollout.config import RolloutServiceConfig

    cfg, args = service_settings(
        "rollout",
        "Sample groups of responses for prompts read off the run's Redis stream, with vLLM, and follow the learner's "
        "weight service (e.g. AUTOTHINK_ROLLOUT_MODEL, AUTOTHINK_ROLLOUT_REDIS__URL, AUTOTHINK_ROLLOUT_WEIGHTS__ADDRESS).",
        RolloutServiceConfig, "AUTOTHINK_ROLLOUT_", argv,
    )
    configure_logging("rollout", args)
    from prometheus_client import CollectorRegistry

    from services._http import serve_consumer
    from services.rollout.app import create_app
    from services.rollout.worker import RolloutWorker

    registry = CollectorRegistry()
    worker = RolloutWorker(cfg, registry)
    return serve_consumer("rollout", worker, create_app(worker, registry), cfg.host, cfg.port)


if __name__ == "__main__":
    sys.exit(main())
