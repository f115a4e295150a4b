"""End to end: `autothink up` on a short toy schedule — redis, reward, rollout, learner, gateway as
real processes — then POST /generate against the trained model, then Ctrl-C with no process left."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import ROOT, alive, descendants, free_port, short_experiment

pytestmark = pytest.mark.slow


def test_up_trains_serves_and_stops_cleanly(toy_model, tmp_path):
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(short_experiment(toy_model[0], tmp_path / "run")))
    port = free_port()
    log = open(tmp_path / "up.log", "wb")
    autothink = str(Path(sys.executable).with_name("autothink"))
    proc = subprocess.Popen([autothink, "up", str(tmp_path / "exp.yaml"), "--port", str(port), "--run-id", "e2e"],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    seen: set[int] = set()
    try:
        deadline = time.time() + 900
        while "Ctrl-C to stop" not in (tmp_path / "up.log").read_text(errors="replace"):
            assert proc.poll() is None, (tmp_path / "up.log").read_text()[-5000:]
            assert time.time() < deadline, "not trained in time"
            seen |= descendants(proc.pid)
            time.sleep(1)
        out = (tmp_path / "up.log").read_text()
        for name in ("redis", "reward", "rollout", "learner", "gateway"):
            assert f"[{name}]" in out, f"no prefixed log lines from {name}"
            assert (tmp_path / "run" / "logs" / f"{name}.log").stat().st_size > 0
        assert "trained: 6 steps, policy version 6" in out and "curl -s" in out
        rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
        assert [r["stage"] for r in rows] == ["stage1"] * 2 + ["stage2"] * 2 + ["stage3"] * 2
        for name in ("stage1", "stage2", "stage3"):
            assert (tmp_path / "run" / "stages" / name / "config.json").is_file()

        seen |= descendants(proc.pid)
        r = httpx.post(f"http://127.0.0.1:{port}/generate", json={"prompt": "What is the value of $3+4$?", "max_tokens": 96}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["policy_version"] == 6 and 0 <= body["think_probability"] <= 1 and body["usage"]["completion_tokens"] > 0

        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    time.sleep(0.5)
    left = [p for p in seen if alive(p)]
    assert not left, f"processes left behind: {left}"
    assert "stopping the gateway" in (tmp_path / "up.log").read_text()


def test_up_names_the_service_that_dies(toy_model, tmp_path):
    exp = {"name": "bad", "model": {"path": str(toy_model[0])}, "data": {"source": str(tmp_path / "missing.jsonl")},
           "stages": [{"name": "stage1", "steps": 1, "prompts_per_batch": 2, "samples_per_prompt": 2, "max_response_tokens": 16}],
           "output_dir": str(tmp_path / "run")}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    autothink = str(Path(sys.executable).with_name("autothink"))
    r = subprocess.run([autothink, "up", str(tmp_path / "exp.yaml"), "--port", str(free_port()), "--quiet"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 1
    assert "the learner service exited" in r.stderr and "missing.jsonl" in r.stderr


def test_up_trains_with_two_learner_ranks(toy_model, tmp_path):
    """The whole loop with the learner as 2 DeepSpeed ranks under torchrun (ZeRO-2)."""
    exp = short_experiment(toy_model[0], tmp_path / "run", max_tokens=64, micro_batch=8, zero_stage=2)
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    autothink = str(Path(sys.executable).with_name("autothink"))
    r = subprocess.run([autothink, "up", str(tmp_path / "exp.yaml"), "--port", str(free_port()), "--learner-procs", "2",
                        "--run-id", "ranks", "--quiet", "--exit-when-trained"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:] + (tmp_path / "run" / "logs" / "learner.log").read_text()[-3000:]
    learner_log = (tmp_path / "run" / "logs" / "learner.log").read_text()
    assert "trainer rank 0 of 2 (ZeRO-2)" in learner_log and "trainer rank 1 of 2 (ZeRO-2)" in learner_log
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(6)) and [r["policy_version"] for r in rows] == list(range(1, 7))
    assert all(r["world_size"] == 2 and r["samples"] == 16 for r in rows)
    assert (tmp_path / "run" / "stages" / "stage3" / "config.json").is_file()
