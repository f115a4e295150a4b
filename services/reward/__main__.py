"""`python -m services.reward`: the stateless reward service (Redis consumer + HTTP)."""

from __future__ import annotations

import logging
import signal
import sys
import threading


def main(argv: list[str] | None = None) -> int:
    from services._cli import service_settings
    from services.reward.config import RewardServiceConfig

    cfg, _ = service_settings(
        "reward",
        "Grade rollout groups from the run's Redis stream and write scored groups (e.g. AUTOTHINK_REWARD_REDIS__URL, "
        "AUTOTHINK_REWARD_RUN_ID, AUTOTHINK_REWARD_PORT).",
        RewardServiceConfig, "AUTOTHINK_REWARD_", argv,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s reward %(levelname)s %(message)s")
    import uvicorn
    from prometheus_client import CollectorRegistry

    from services.reward.app import create_app
    from services.reward.worker import RewardWorker

    registry = CollectorRegistry()
    worker = RewardWorker(cfg, registry)
    server = uvicorn.Server(uvicorn.Config(create_app(worker, registry), host=cfg.host, port=cfg.port, log_level="warning"))
    failed = threading.Event()

    def work() -> None:
        try:
            worker.run()
        except BaseException:
            logging.getLogger("autothink.reward").exception("the reward worker stopped")
            failed.set()
            server.should_exit = True  # the process exits non-zero instead of serving /health without a worker

    thread = threading.Thread(target=work, name="reward-worker", daemon=True)
    thread.start()

    def stop(*_: object) -> None:
        worker.stop.set()
        server.should_exit = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.run()
    finally:
        worker.close()
    return 1 if failed.is_set() else 0


if __name__ == "__main__":
    sys.exit(main())
