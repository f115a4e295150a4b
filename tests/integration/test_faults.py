"""Fault injection on a real run: kill -9 the rollout, reward and learner services one at a time
mid-run and start them again, and restart redis-server (append-only file) in between.  The run
completes, every prompt group is trained on exactly once (counted by group id), and the learner
resumes at its checkpoint's step and policy version."""

from __future__ import annotations

import json
import re
import time

import pytest
import yaml

from tests.conftest import RedisServer, ServiceProcess, free_port, kill_and_survivors, short_experiment, wait_healthy

pytestmark = pytest.mark.slow
RUN = "faults"
STEPS, PROMPTS = 9, 4


def _rows(path):
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_run_survives_killed_services_and_a_redis_restart(toy_model, services, tmp_path):
    redis = RedisServer(tmp_path, appendonly=True)
    redis.start()
    try:
        _run(toy_model[0], redis, services, tmp_path)
    finally:
        redis.stop()


def _run(model_dir, redis, services, tmp_path):
    weights = f"127.0.0.1:{free_port()}"
    exp = short_experiment(model_dir, tmp_path / "run", steps=STEPS // 3, prompts=PROMPTS,
                           redis={"url": redis.url, "claim_idle_ms": 3000}, weights={"address": weights, "token": "t"})
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    log = tmp_path / "run" / "metrics.jsonl"
    state = tmp_path / "run" / "checkpoint" / "state.json"
    n = {"reward": 0, "rollout": 0, "learner": 0}

    def start(kind: str, **extra: str) -> ServiceProcess:
        n[kind] += 1
        port = free_port()
        prefix = f"AUTOTHINK_{kind.upper()}_"
        env = {f"{prefix}RUN_ID": RUN, f"{prefix}CONSUMER": f"{kind}-{n[kind]}"}
        if kind == "reward":
            env |= {f"{prefix}REDIS__URL": redis.url, f"{prefix}REDIS__CLAIM_IDLE_MS": "3000", f"{prefix}PORT": str(port), f"{prefix}GRADER_WORKERS": "1"}
        elif kind == "rollout":
            env |= {f"{prefix}REDIS__URL": redis.url, f"{prefix}REDIS__CLAIM_IDLE_MS": "3000", f"{prefix}PORT": str(port),
                    f"{prefix}MODEL": str(model_dir), f"{prefix}MAX_MODEL_LEN": "256", f"{prefix}WEIGHTS__ADDRESS": weights,
                    f"{prefix}WEIGHTS__TOKEN": "t"}
        else:
            env = {f"{prefix}EXPERIMENT": str(tmp_path / "exp.yaml"), f"{prefix}RUN_ID": RUN, f"{prefix}WEIGHTS_BIND": weights,
                   f"{prefix}METRICS_PORT": str(port), f"{prefix}CHECKPOINT_EVERY": "1", f"{prefix}SAVE_STAGE_MODELS": "false"}
        env |= extra
        proc = ServiceProcess(f"services.{kind}", env, tmp_path / f"{kind}-{n[kind]}.log")
        services.append(proc)
        if kind != "learner":
            wait_healthy(f"http://127.0.0.1:{port}/health", proc, timeout=300)
        return proc

    def wait_step(at_least: int, learner: ServiceProcess, timeout: float = 600) -> int:
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert learner.proc.poll() is None, learner.output()
            done = len(_rows(log))
            if done >= at_least:
                return done
            time.sleep(0.2)
        raise AssertionError(f"no step {at_least} in {timeout} s:\n{learner.output()}")

    reward, rollout = start("reward"), start("rollout")
    learner = start("learner")

    wait_step(1, learner)
    engine, left = kill_and_survivors(rollout.proc)  # kill -9 mid-run, then a new replica
    rollout.stop()
    assert engine and not left, "the killed rollout service's engine processes are gone"
    rollout = start("rollout")
    wait_step(3, learner)
    reward.stop(sig_kill=True)
    reward = start("reward")
    wait_step(4, learner)
    redis.stop()  # append-only file on: streams, groups and pending entries survive
    # down until a service has met the outage (its bus logs the retry), not for a fixed time
    deadline = time.time() + 60
    while not any("redis unavailable" in p.output() for p in (learner, reward, rollout)):
        assert time.time() < deadline, "no service noticed redis going away"
        time.sleep(0.1)
    redis.start()
    wait_step(5, learner)
    # kill the learner between checkpoints' worth of work and resume it
    learner.stop(sig_kill=True)
    at = json.loads(state.read_text())
    learner = start("learner", AUTOTHINK_LEARNER_RESUME="true")
    deadline = time.time() + 900
    while learner.proc.poll() is None and time.time() < deadline:
        time.sleep(1)
    assert learner.proc.returncode == 0, learner.output()
    assert f"resumed at step {at['step']}, policy version {at['policy_version']}" in learner.output()

    rows = _rows(log)
    assert [r["step"] for r in rows] == list(range(STEPS))
    versions = [r["policy_version"] for r in rows]
    assert versions == sorted(set(versions)) and versions[: at["step"]] == list(range(1, at["step"] + 1))
    # every (step, prompt) trained exactly once; group ids name the learner's epoch (0 before the resume,
    # 1 after) and a retry suffix when a group had to be asked for again
    trained = [re.sub(r"-r\d+$", "", re.sub(r"-e\d+-", "-", g)) for r in rows for g in r["group_ids"]]
    expected = {f"{RUN}-s{k}-p{i}" for k in range(STEPS) for i in range(PROMPTS)}
    assert sorted(trained) == sorted(expected), "every prompt group trained on exactly once"
    assert {g.split("-s")[0] for r in rows[at["step"]:] for g in r["group_ids"]} == {f"{RUN}-e1"}, "no group of the old epoch"
    final = json.loads(state.read_text())
    assert final["step"] == STEPS and final["policy_version"] == versions[-1] and final["epoch"] == 1
    for r in rows:
        assert r["samples"] == PROMPTS * 4
