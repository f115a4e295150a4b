"""The command-line skeleton every service shares: --config FILE, environment overrides, --print-config."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)


def service_settings(
    name: str,
    description: str,
    model: type[M],
    prefix: str,
    argv: list[str] | None = None,
    add_args: Callable[[argparse.ArgumentParser], None] | None = None,
    resolve: Callable[[M, argparse.Namespace], Any] | None = None,
) -> tuple[M, argparse.Namespace]:
    """Parse the command line and load the service's settings; exits 2 on bad settings and 0
    after ``--print-config``.  ``resolve`` loads whatever else the settings point at (a
    ConfigError there exits 2 too) and returns what ``--print-config`` shows.  Heavy imports stay
    in the caller, after this returns."""
    parser = argparse.ArgumentParser(
        prog=f"python -m services.{name}",
        description=f"{description} Settings come from --config FILE and {prefix}* environment variables.",
        epilog="AUTOTHINK_CPUS=0-3,8 pins the service (and the engine processes and threads it starts) to those cores.",
    )
    from services.manifest import SLICES

    parser.add_argument("--config", help="YAML file with this service's settings")
    if name in SLICES:
        parser.add_argument(
            "--experiment", metavar="FILE_OR_PRESET",
            help=f"the run's experiment file (or a preset name): this service takes its sections ({', '.join(SLICES[name])}) "
                 "from it, so every service of a run reads the same manifest; --config and the environment override them")
    parser.add_argument("--print-config", action="store_true", help="print the resolved settings and exit")
    parser.add_argument("--log-level", default=os.environ.get("AUTOTHINK_LOG_LEVEL", "INFO"), type=str.upper,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log level (default INFO, or AUTOTHINK_LOG_LEVEL)")
    parser.add_argument("--log-format", default=os.environ.get("AUTOTHINK_LOG_FORMAT", "text"), choices=["text", "json"],
                        help="text lines, or one JSON object a line (ts, service, level, logger, message, exc) for a log "
                             "collector (default text, or AUTOTHINK_LOG_FORMAT)")
    if add_args is not None:
        add_args(parser)
    args = parser.parse_args(argv)

    from autothink.config import ConfigError, load_section

    try:
        base = experiment_sections(name, args.experiment) if getattr(args, "experiment", None) else None
        cfg = load_section(model, prefix, args.config, base=base)
        shown = resolve(cfg, args) if resolve is not None else cfg.model_dump(mode="json")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.print_config:
        print(json.dumps(masked(shown), indent=2))
        raise SystemExit(0)
    from autothink.cpus import pin_from_env

    try:
        cpus = pin_from_env()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if cpus is not None:
        print(f"{name}: pinned to cores {os.environ['AUTOTHINK_CPUS']} ({os.environ['OMP_NUM_THREADS']} threads)", file=sys.stderr)
    return cfg, args


def experiment_sections(service: str, source: str) -> dict[str, Any]:
    """``service``'s sections of the experiment ``source`` (validated whole, as the learner reads it)."""
    from autothink.config import load_config
    from services.manifest import sections

    return sections(service, load_config(source, environ={}).model_dump(mode="json"))  # the learner's AUTOTHINK_* are not this service's


class JsonLogFormatter(logging.Formatter):
    """One JSON object a line: what a log collector (Loki, Cloud Logging, ELK) parses without rules.

    >>> rec = logging.LogRecord("autothink.x", logging.WARNING, __file__, 1, "redis unavailable: %s", ("refused",), None)
    >>> row = json.loads(JsonLogFormatter("reward").format(rec))
    >>> row["service"], row["level"], row["logger"], row["message"]
    ('reward', 'WARNING', 'autothink.x', 'redis unavailable: refused')
    """

    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        row = {"ts": ts, "service": self.service, "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            row["exc"] = self.formatException(record.exc_info)
        return json.dumps(row, ensure_ascii=False)


def configure_logging(service: str, args: argparse.Namespace) -> None:
    """The root logger as ``--log-level`` and ``--log-format`` say (every service calls this once)."""
    handler = logging.StreamHandler()
    if args.log_format == "json":
        handler.setFormatter(JsonLogFormatter(service))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {service} %(levelname)s %(message)s"))
    logging.basicConfig(level=getattr(logging, args.log_level), handlers=[handler], force=True)


SECRET_KEYS = ("api_key", "token", "password")


def _secret(key: str) -> bool:
    """``token``, ``follow_token``, ``api_key``... but not ``tokenizer`` or ``max_tokens``."""
    k = key.lower()
    return k in SECRET_KEYS or k.endswith(tuple("_" + s for s in SECRET_KEYS))


def masked(settings: object) -> object:
    """Settings as ``--print-config`` shows them: every secret -- a field named like one of
    :data:`SECRET_KEYS`, a password inside a URL -- as ``***`` when set (``""`` stays ``""``), never
    in clear: the output lands in logs and bug reports (#39).  Every service's view goes through it.

    >>> masked({"api_key": "k3y", "redis": {"url": "redis://:pw@h:6379/0"}, "weights": {"token": "", "address": "a:1"}})
    {'api_key': '***', 'redis': {'url': 'redis://:***@h:6379/0'}, 'weights': {'token': '', 'address': 'a:1'}}
    """
    from urllib.parse import urlsplit, urlunsplit

    if isinstance(settings, dict):
        return {k: ("***" if v else v) if _secret(k) and isinstance(v, str) else masked(v) for k, v in settings.items()}
    if isinstance(settings, list):
        return [masked(v) for v in settings]
    if isinstance(settings, str) and "://" in settings and "@" in settings:
        parts = urlsplit(settings)
        if parts.password:
            netloc = f"{parts.username or ''}:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
            return urlunsplit(parts._replace(netloc=netloc))
    return settings
