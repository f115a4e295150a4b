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
    parser.add_argument("--config", help="YAML file with this service's settings")
    parser.add_argument("--print-config", action="store_true", help="print the resolved settings and exit")
    if add_args is not None:
        add_args(parser)
    args = parser.parse_args(argv)

    from autothink.config import ConfigError, load_section

    try:
        cfg = load_section(model, prefix, args.config)
        shown = resolve(cfg, args) if resolve is not None else cfg.model_dump(mode="json")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.print_config:
        print(json.dumps(shown, indent=2))
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
