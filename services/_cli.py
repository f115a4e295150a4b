"""The command-line skeleton every service shares: --config FILE, environment overrides, --print-config."""

from __future__ import annotations

import argparse
import json
import os
import sys
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
