"""The dependency arrows point one way: entrypoints -> services -> autothink (README, Layout).

These read the source rather than trusting a docstring: a new import that crosses a layer fails here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _sources(package: str) -> list[Path]:
    return [p for p in (ROOT / package).rglob("*.py") if "/v1/" not in p.as_posix()]  # v1/: protoc output


def _mentions(package: str, name: str) -> list[str]:
    """Every line of ``package`` that imports or names a module of ``name`` (``name.x`` or ``from name``)."""
    pattern = re.compile(rf"(\bfrom {name}\b|\bimport {name}\b|\b{name}\.[a-z_]+)")
    hits = []
    for path in _sources(package):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    return hits


def test_the_core_library_names_no_service_and_no_entry_point():
    assert _mentions("autothink", "services") == []
    assert _mentions("autothink", "entrypoints") == []


def test_services_do_not_import_the_entry_points():
    assert _mentions("services", "entrypoints") == []


def test_only_the_bus_touches_its_redis_client():
    """Services and the core use the bus's methods; the Redis connection stays inside autothink/bus/streams.py."""
    pattern = re.compile(r"\bbus\.client\b|\.client\.(set|get|x[a-z]+)\(")
    hits = [
        f"{p.relative_to(ROOT)}:{n}"
        for pkg in ("autothink", "services", "entrypoints")
        for p in _sources(pkg)
        if p.name != "streams.py"
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert hits == []


def test_the_pure_modules_import_without_heavy_dependencies():
    """What the README calls pure imports without torch, vLLM, DeepSpeed, transformers, Redis or gRPC."""
    pure = ["prompting", "rewards", "config", "schedule", "scoring", "data", "cpus", "grading", "bus.messages", "bus.base",
            "toy.task", "packing", "monitor"]
    code = (
        "import importlib, sys\n"
        f"for m in {pure!r}: importlib.import_module('autothink.' + m)\n"
        "heavy = sorted(m for m in ('torch', 'vllm', 'deepspeed', 'transformers', 'redis', 'grpc') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
