"""`python -m services.reward`: the stateless reward service (Redis consumer + HTTP)."""

from __future__ import annotations

import logging
import sys


def redacted(settings: dict) -> dict:
    """``--print-config``'s view: the API key and the Redis password shown as ``***`` (set) or
    ``""`` (unset), never in clear -- the output lands in logs and bug reports.

    >>> redacted({"api_key": "k3y", "redis": {"url": "redis://:pw@h:6379/0"}})
    {'api_key': '***', 'redis': {'url': 'redis://:***@h:6379/0'}}
    """
    from urllib.parse import urlsplit, urlunsplit

    out = dict(settings)
    if out.get("api_key"):
        out["api_key"] = "***"
    redis = dict(out.get("redis") or {})
    url = redis.get("url", "")
    parts = urlsplit(url)
    if parts.password:
        user = parts.username or ""
        host = parts.hostname or ""
        netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
        redis["url"] = urlunsplit(parts._replace(netloc=netloc))
        out["redis"] = redis
    return out


def main(argv: list[str] | None = None) -> int:
    from services._cli import service_settings
    from services.reward.config import RewardServiceConfig

    cfg, _ = service_settings(
        "reward",
        "Grade rollout groups from the run's Redis stream and write scored groups (e.g. AUTOTHINK_REWARD_REDIS__URL, "
        "AUTOTHINK_REWARD_RUN_ID, AUTOTHINK_REWARD_PORT).",
        RewardServiceConfig, "AUTOTHINK_REWARD_", argv, resolve=lambda cfg, _args: redacted(cfg.model_dump(mode="json")),
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s reward %(levelname)s %(message)s")
    from prometheus_client import CollectorRegistry

    from services._http import serve_consumer
    from services.reward.app import create_app
    from services.reward.worker import RewardWorker

    registry = CollectorRegistry()
    worker = RewardWorker(cfg, registry)
    return serve_consumer("reward", worker, create_app(worker, registry), cfg.host, cfg.port)


if __name__ == "__main__":
    sys.exit(main())
