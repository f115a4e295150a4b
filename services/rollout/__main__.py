"""`python -m services.rollout`: the vLLM rollout service."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.rollout",
        description=(
            "Sample groups of responses for prompts read off the run's Redis stream, with vLLM, and follow the "
            "learner's weight service. Settings come from --config FILE and AUTOTHINK_ROLLOUT_* environment "
            "variables (e.g. AUTOTHINK_ROLLOUT_MODEL, AUTOTHINK_ROLLOUT_REDIS__URL, AUTOTHINK_ROLLOUT_WEIGHTS__ADDRESS)."
        ),
    )
    parser.add_argument("--config", help="YAML file with this service's settings")
    parser.add_argument("--print-config", action="store_true", help="print the resolved settings and exit")
    args = parser.parse_args(argv)

    from autothink.config import ConfigError, load_section
    from services.rollout.config import RolloutServiceConfig

    try:
        cfg = load_section(RolloutServiceConfig, "AUTOTHINK_ROLLOUT_", args.config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(cfg.model_dump(mode="json"), indent=2))
        return 0

    logging.basicConfig(level=logging.INFO, format="%(asctime)s rollout %(levelname)s %(message)s")
    from prometheus_client import CollectorRegistry

    from services._http import serve_in_thread
    from services.rollout.app import create_app
    from services.rollout.worker import RolloutWorker

    registry = CollectorRegistry()
    worker = RolloutWorker(cfg, registry)
    server = serve_in_thread(create_app(worker, registry), cfg.host, cfg.port)

    def stop(*_: object) -> None:
        worker.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        worker.run()  # the engine lives in the main thread
    finally:
        server.should_exit = True
        worker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
