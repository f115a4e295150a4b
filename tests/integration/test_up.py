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
        # reward and rollout ran on their slices of the experiment (services/manifest.py), owner-only files
        exp = yaml.safe_load((tmp_path / "run" / "experiment.yaml").read_text())
        for name, sections in (("reward", ("redis", "rewards")), ("rollout", ("redis", "weights"))):
            path = tmp_path / "run" / "config" / f"{name}.yaml"
            got = yaml.safe_load(path.read_text())
            assert {k: got[k] for k in sections} == {k: exp[k] for k in sections} and got["run_id"] == "e2e", name
            assert path.stat().st_mode & 0o077 == 0, oct(path.stat().st_mode)

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


def test_sigterm_while_training_stops_every_service(toy_model, tmp_path):
    """`kill` (SIGTERM) of `autothink up` mid-run -- what a benchmark or a container stop sends --
    stops the whole stack as Ctrl-C does.  It used to end the CLI alone and leave redis, reward,
    rollout and gateway running, re-parented to init."""
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(short_experiment(toy_model[0], tmp_path / "run", steps=50)))
    autothink = str(Path(sys.executable).with_name("autothink"))
    with open(tmp_path / "up.log", "wb") as log:
        proc = subprocess.Popen([autothink, "up", str(tmp_path / "exp.yaml"), "--port", str(free_port()), "--run-id", "term"],
                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        seen: set[int] = set()
        try:
            deadline = time.time() + 600
            while not (tmp_path / "run" / "metrics.jsonl").exists():  # training has started: every service is up
                assert proc.poll() is None, (tmp_path / "up.log").read_text()[-5000:]
                assert time.time() < deadline, "training did not start"
                seen |= descendants(proc.pid)
                time.sleep(1)
            seen |= descendants(proc.pid)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(90) == 130
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    time.sleep(0.5)
    assert len(seen) >= 5  # redis, reward, rollout, learner, gateway (and their engines)
    left = [p for p in seen if alive(p)]
    assert not left, f"processes left behind: {left}"
    assert "every service was stopped" in (tmp_path / "up.log").read_text()


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


def _affinity(pid: int) -> tuple[str, str] | None:
    """(command line, Cpus_allowed_list) of a live process, None once it is gone."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return cmd, next(line.split(":", 1)[1].strip() for line in status.splitlines() if line.startswith("Cpus_allowed_list"))


def test_up_trains_with_two_learner_ranks_on_their_own_cores(toy_model, tmp_path):
    """The whole loop with the learner as 2 DeepSpeed ranks under torchrun (ZeRO-2), and
    max_staleness 1: `up` gives the rollout service (with its vLLM engine process) and the learner
    ranks disjoint cores, and generation overlaps training."""
    import os

    from autothink.cpus import parse_cpu_list, plan_cpus

    plan = plan_cpus(sorted(os.sched_getaffinity(0)), max_staleness=1, on_gpu=False)
    if not plan:
        pytest.skip("one core: nothing to split")
    exp = short_experiment(toy_model[0], tmp_path / "run", max_tokens=64, micro_batch=8, zero_stage=2, max_staleness=1)
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    autothink = str(Path(sys.executable).with_name("autothink"))
    out = open(tmp_path / "up.log", "wb")
    proc = subprocess.Popen([autothink, "up", str(tmp_path / "exp.yaml"), "--port", str(free_port()), "--learner-procs", "2",
                             "--run-id", "ranks", "--quiet", "--exit-when-trained"], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    pinned: dict[str, set[str]] = {"rollout": set(), "learner": set()}  # cores seen per role, over every process of it
    try:
        deadline = time.time() + 900
        learner_log = tmp_path / "run" / "logs" / "learner.log"
        while proc.poll() is None:
            assert time.time() < deadline, "not trained in time"
            # sample once both ranks run (they pin themselves first thing; the rollout service long before)
            if learner_log.exists() and "trainer rank 1 of 2" in learner_log.read_text(errors="replace"):
                for child in descendants(proc.pid):
                    info = _affinity(child)
                    role = next((r for r in pinned if info and f"-m services.{r}" in info[0] and "torchrun" not in info[0]), None)
                    if role is None:
                        continue
                    for pid in {child} | descendants(child):  # the vLLM engine process, DeepSpeed helpers
                        if (sub := _affinity(pid)) is not None:
                            pinned[role].add(sub[1])
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        out.close()
    log = (tmp_path / "up.log").read_text()
    assert proc.returncode == 0, log[-3000:] + (tmp_path / "run" / "logs" / "learner.log").read_text()[-3000:]
    assert f"cores: rollout {plan['rollout']}, learner {plan['learner']}" in log
    assert {role: {tuple(parse_cpu_list(c)) for c in cores} for role, cores in pinned.items()} == {
        role: {tuple(parse_cpu_list(plan[role]))} for role in pinned}, pinned
    learner_log = (tmp_path / "run" / "logs" / "learner.log").read_text()
    assert "trainer rank 0 of 2 (ZeRO-2)" in learner_log and "trainer rank 1 of 2 (ZeRO-2)" in learner_log
    assert learner_log.count(f"learner: pinned to cores {plan['learner']}") == 2
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(6)) and [r["policy_version"] for r in rows] == list(range(1, 7))
    assert all(r["world_size"] == 2 and r["samples"] == 16 for r in rows)
    assert all(min(r["policy_versions"]) >= r["step"] - 1 for r in rows)  # bounded staleness ...
    assert any(max(r["policy_versions"]) < r["step"] for r in rows)  # ... and some step trained on rollouts made while training
    assert (tmp_path / "run" / "stages" / "stage3" / "config.json").is_file()
