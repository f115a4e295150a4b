"""`python -m services.reward`: the stateless reward service (Redis consumer + HTTP)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from services._cli import configure_logging, service_settings
    from services.reward.config import RewardServiceConfig

    cfg, args = service_settings(
        "reward",
        "Grade rollout groups from the run's Redis stream and write scored groups (e.g. AUTOTHINK_REWARD_REDIS__URL, "
        "AUTOTHINK_REWARD_RUN_ID, AUTOTHINK_REWARD_PORT).",
        RewardServiceConfig, "AUTOTHINK_REWARD_", argv,
    )
    configure_logging("reward", args)
    from prometheus_client import CollectorRegistry

    from services._http import serve_consumer
    from services.reward.app import create_app
    from services.reward.worker import RewardWorker

    registry = CollectorRegistry()
    worker = RewardWorker(cfg, registry)
    return serve_consumer("reward", worker, create_app(worker, registry), cfg.host, cfg.port)


if __name__ == "__main__":
    sys.exit(main())
