"""docker-compose.yml for real (scripts/compose_test.sh, what `make compose-test` runs): the images
build, every healthcheck passes, the learner goes through the three toy stages and survives a crash,
the rollout container survives `docker kill`, the gateway answers from the final policy version on
its published port, and `docker compose down` leaves nothing.

It needs a running container engine and Compose; without them it is skipped, with the reason, in
well under a second. It never installs or starts an engine itself (`make compose-test` may)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.compose]


def _why_not() -> str | None:
    """None when a Docker engine answers and Compose is installed, else why the test cannot run."""
    docker = shutil.which("docker")
    if docker is None:
        return "no docker CLI on PATH"
    try:
        r = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "'docker info' did not answer in 15 s"
    if r.returncode != 0 or not r.stdout.strip():
        said = (r.stderr or r.stdout).strip().splitlines()
        return f"no container engine answers ('docker info': {said[-1] if said else 'no output'})"
    v2 = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=15).returncode == 0
    if not v2 and shutil.which("docker-compose") is None:
        return "neither 'docker compose' (v2) nor 'docker-compose' (v1) is installed"
    return None


@pytest.mark.timeout(3600)
def test_compose_stack(tmp_path) -> None:
    why = _why_not()
    if why:
        pytest.skip(why)
    env = {**os.environ, "COMPOSE_TEST_START_ENGINE": "0", "COMPOSE_TEST_OUT": str(tmp_path),
           "COMPOSE_PROJECT_NAME": f"autothink-pytest-{os.getpid()}"}
    env.pop("GATEWAY_PORT", None)  # a free port, chosen by the script
    r = subprocess.run(["bash", str(ROOT / "scripts" / "compose_test.sh")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=3500)
    summary = (tmp_path / "summary.txt").read_text() if (tmp_path / "summary.txt").exists() else ""
    if r.returncode == 3:
        pytest.skip(summary.strip().splitlines()[-1] if summary.strip() else r.stderr[-500:])
    assert r.returncode == 0, f"{summary}\n--- stderr ---\n{r.stderr[-6000:]}"
    for what in ("healthy", "containers run as:", "restarted by the restart policy", "resumed at step", "'docker kill'", "stage3:",
                 "POST http://127.0.0.1:", "chat/completions", "no container, network or volume"):
        assert what in summary, f"{what!r} missing from the summary:\n{summary}"
