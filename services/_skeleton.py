"""Shared entry point of a service whose worker has not landed yet (see the README's roadmap)."""

from __future__ import annotations

import argparse
import json
import sys

from pydantic import BaseModel

from autothink.config import ConfigError, load_section


def run_skeleton(name: str, model: type[BaseModel], prefix: str, issue: int, argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m services.{name}",
        description=f"The {name} service. Settings come from --config FILE and {prefix}* environment variables.",
    )
    parser.add_argument("--config", help="YAML file with this service's settings")
    parser.add_argument("--print-config", action="store_true", help="print the resolved settings and exit")
    args = parser.parse_args(argv)
    try:
        cfg = load_section(model, prefix, args.config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(cfg.model_dump(mode="json"), indent=2))
        return 0
    print(f"{name}: settings valid, but the worker is not implemented yet (issue {issue}).", file=sys.stderr)
    return 3
