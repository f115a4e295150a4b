"""ruff's lint over the whole tree, in `make test` (issue #33): undefined names, unused imports and
bugbear's likely bugs (the rule set is in pyproject.toml, [tool.ruff.lint]).  It found a type used
without its import (services/learner/worker.py, `PlannedStep`) and a loop variable a lambda did not
bind (autothink/bus/streams.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


def test_ruff_finds_nothing() -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (it is in the dev extra: scripts/bootstrap.sh)")
    r = subprocess.run([ruff, "check", "--output-format", "concise", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-2000:]
