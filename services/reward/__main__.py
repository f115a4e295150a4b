"""`python -m services.reward`: the stateless reward service (Redis consumer + HTTP)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.reward",
        description=(
            "Grade rollout groups from the run's Redis stream and write scored groups. Settings come from "
            "--config FILE and AUTOTHINK_REWARD_* environment variables (e.g. AUTOTHINK_REWARD_REDIS__URL, "
            "AUTOTHINK_REWARD_RUN_ID, AUTOTHINK_REWARD_PORT)."
        ),
    )
    parser.add_argument("--config", help="YAML file with this service's settings")
    parser.add_argument("--print-config", action="store_true", help="print the resolved settings and exit")
    args = parser.parse_args(argv)

    from autothink.config import ConfigError, load_section
    from services.reward.config import RewardServiceConfig

    try:
        cfg = load_section(RewardServiceConfig, "AUTOTHINK_REWARD_", args.config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(cfg.model_dump(mode="json"), indent=2))
        return 0

    logging.basicConfig(level=logging.INFO, format="%(asctime)s reward %(levelname)s %(message)s")
    import uvicorn
    from prometheus_client import CollectorRegistry

    from services.reward.app import create_app
    from services.reward.worker import RewardWorker

    registry = CollectorRegistry()
    worker = RewardWorker(cfg, registry)
    thread = threading.Thread(target=worker.run, name="reward-worker", daemon=True)
    thread.start()
    server = uvicorn.Server(uvicorn.Config(create_app(worker, registry), host=cfg.host, port=cfg.port, log_level="warning"))

    def stop(*_: object) -> None:
        worker.stop.set()
        server.should_exit = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.run()
    finally:
        worker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
