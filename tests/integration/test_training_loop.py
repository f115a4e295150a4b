"""The whole training loop on the toy model: redis, reward, rollout and learner as real processes."""

import json
import time

import pytest
import yaml

from autothink.bus.messages import PromptMsg, Sample, Score, ScoredGroup, decode
from autothink.bus.streams import RedisBus
from tests.conftest import ServiceProcess, free_port, short_experiment, wait_healthy

pytestmark = pytest.mark.slow
RUN = "loop-it"


def _experiment(model_dir, redis_url, weights, out):
    return short_experiment(model_dir, out, zero_stage=2, max_staleness=1, redis={"url": redis_url, "claim_idle_ms": 5000},
                            weights={"address": weights, "token": "t"})


def _start_stack(services, tmp_path, model_dir, redis_url, weights):
    reward_port, rollout_port = free_port(), free_port()
    reward = ServiceProcess("services.reward", {
        "AUTOTHINK_REWARD_REDIS__URL": redis_url, "AUTOTHINK_REWARD_RUN_ID": RUN,
        "AUTOTHINK_REWARD_PORT": str(reward_port), "AUTOTHINK_REWARD_GRADER_WORKERS": "1"}, tmp_path / "reward.log")
    services.append(reward)
    rollout = ServiceProcess("services.rollout", {
        "AUTOTHINK_ROLLOUT_MODEL": str(model_dir), "AUTOTHINK_ROLLOUT_REDIS__URL": redis_url,
        "AUTOTHINK_ROLLOUT_RUN_ID": RUN, "AUTOTHINK_ROLLOUT_PORT": str(rollout_port), "AUTOTHINK_ROLLOUT_MAX_MODEL_LEN": "256",
        "AUTOTHINK_ROLLOUT_WEIGHTS__ADDRESS": weights, "AUTOTHINK_ROLLOUT_WEIGHTS__TOKEN": "t"}, tmp_path / "rollout.log")
    services.append(rollout)
    wait_healthy(f"http://127.0.0.1:{reward_port}/health", reward)
    wait_healthy(f"http://127.0.0.1:{rollout_port}/health", rollout)


def _learner(services, tmp_path, weights, name, **extra):
    env = {
        "AUTOTHINK_LEARNER_EXPERIMENT": str(tmp_path / "exp.yaml"), "AUTOTHINK_LEARNER_RUN_ID": RUN,
        "AUTOTHINK_LEARNER_WEIGHTS_BIND": weights, "AUTOTHINK_LEARNER_METRICS_PORT": str(free_port()), **extra,
    }
    proc = ServiceProcess("services.learner", env, tmp_path / f"{name}.log")
    services.append(proc)
    return proc


def _finish(proc, timeout=900):
    deadline = time.time() + timeout
    while proc.proc.poll() is None and time.time() < deadline:
        time.sleep(1)
    assert proc.proc.returncode == 0, proc.output()


def test_three_stages_through_the_real_services(toy_model, redis_server, services, tmp_path):
    model_dir = toy_model[0]
    weights = f"127.0.0.1:{free_port()}"
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(_experiment(model_dir, redis_server.url, weights, tmp_path / "run")))
    _start_stack(services, tmp_path, model_dir, redis_server.url, weights)
    # a scored group for step 3, prompt 0, from policy version 0: older than step 3 may use (max_staleness 1)
    bus = RedisBus(redis_server.url, RUN)
    stale = ScoredGroup(PromptMsg(group_id=f"{RUN}-e0-s3-p0", problem="What is the value of $1+2$?", answer="3", n=1, step=3),
                        0, [Sample("</think>\n\n\\boxed{3}", [1, 2], [-0.1, -0.1])],
                        [Score("no_think", True, True, "ok", 2.0, 2, "3")])
    bus.publish(bus.names.scored, stale)
    _finish(_learner(services, tmp_path, weights, "learner", AUTOTHINK_LEARNER_CHECKPOINT_EVERY="0"))

    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(6))
    assert [r["stage"] for r in rows] == ["stage1"] * 2 + ["stage2"] * 2 + ["stage3"] * 2
    assert [r["policy_version"] for r in rows] == [1, 2, 3, 4, 5, 6]
    for r in rows:
        assert r["samples"] == 16 and 0 <= r["think_rate"] <= 1 and r["entropy"] > 0
        assert set(r["no_think_rate_by_level"]) and r["optimizer_updates"] == 1
        assert 0 <= r["padding_fraction"] < 1 and r["tokens_per_s"] > 0 and r["peak_memory_bytes"] > 0  # issue 16
        # bounded staleness: step k trains on rollouts of version >= k - 1
        assert min(r["policy_versions"]) >= r["step"] - 1, r
    # the rollout service followed the published versions
    bus = RedisBus(redis_server.url, RUN)
    versions = {decode(f, "rollout").policy_version for _, f in bus.client.xrange(bus.names.rollouts)}
    assert max(versions) >= 4, versions
    # the final checkpoint is a folder transformers loads
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "checkpoint" / "hf")
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert (state["step"], state["policy_version"], state["tag"]) == (6, 6, "step6")
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoint" / "deepspeed").glob("step*")) == ["step6"]
    assert all(r["staleness"] and set(r["staleness"]) <= {"0", "1"} for r in rows)
    assert rows[-1]["dropped_stale"] == 1  # the injected group was dropped, never trained on
    assert f"{RUN}-e0-s3-p0" in rows[3]["group_ids"] and min(rows[3]["policy_versions"]) >= 2  # the real one, in bound


def test_killed_learner_resumes_where_it_stopped(toy_model, redis_server, services, tmp_path):
    """Crash the learner (as kill -9 would) at the two points where a resume used to go wrong:
    between DeepSpeed's save and state.json, and between a step's metrics row and its checkpoint.
    Every step is then trained and logged exactly once, and no group asked for by an earlier
    incarnation (epoch) of the learner is trained on."""
    model_dir = toy_model[0]
    weights = f"127.0.0.1:{free_port()}"
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(_experiment(model_dir, redis_server.url, weights, tmp_path / "run")))
    _start_stack(services, tmp_path, model_dir, redis_server.url, weights)
    ckpt = tmp_path / "run" / "checkpoint"

    first = _learner(services, tmp_path, weights, "learner-1", AUTOTHINK_LEARNER_CHECKPOINT_EVERY="1",
                     AUTOTHINK_FAULT_INJECT="checkpoint_saved:3")
    first.proc.wait(600)
    assert first.proc.returncode == 137, first.output()
    at = json.loads((ckpt / "state.json").read_text())
    assert at["step"] == 2 and at["tag"] == "step2"
    assert (ckpt / "deepspeed" / "latest").read_text().strip() == "step3"  # what a load by "latest" would have taken

    second = _learner(services, tmp_path, weights, "learner-2", AUTOTHINK_LEARNER_CHECKPOINT_EVERY="1",
                      AUTOTHINK_LEARNER_RESUME="true", AUTOTHINK_FAULT_INJECT="row_written:5")
    second.proc.wait(600)
    assert second.proc.returncode == 137, second.output()
    assert f"resumed at step 2, policy version {at['policy_version']}" in second.output()
    assert json.loads((ckpt / "state.json").read_text())["step"] == 4

    third = _learner(services, tmp_path, weights, "learner-3", AUTOTHINK_LEARNER_CHECKPOINT_EVERY="1", AUTOTHINK_LEARNER_RESUME="true")
    _finish(third)
    assert "resumed at step 4" in third.output()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(6)), "each step trained and logged exactly once"
    assert [r["epoch"] for r in rows] == [0, 0, 1, 1, 2, 2]
    for r in rows:
        assert all(f"-e{r['epoch']}-" in g for g in r["group_ids"]), r["group_ids"]  # never a group of an older epoch
    versions = [r["policy_version"] for r in rows]
    assert versions == sorted(set(versions))  # versions only move forward, across resumes too
    assert json.loads((ckpt / "state.json").read_text())["epoch"] == 2


def test_the_degeneration_alarm_stops_the_run_with_a_checkpoint(toy_model, redis_server, services, tmp_path):
    """monitor.on_degeneration: stop, with thresholds set so that any dip in think accuracy
    counts (an injected fault: the real alarm needs a real collapse, tests/unit/test_degeneration.py):
    the learner checkpoints the step it stopped at and exits with status 3, saying why."""
    model_dir = toy_model[0]
    weights = f"127.0.0.1:{free_port()}"
    exp = _experiment(model_dir, redis_server.url, weights, tmp_path / "run")
    exp["stages"] = [{**s, "prompts_per_batch": 8, "steps": 4} for s in exp["stages"]]  # 32 samples a step: ~16 think
    exp["optim"]["mini_batch_prompts"] = 8
    exp["monitor"] = {"on_degeneration": "stop", "degeneration_window": 1, "degeneration_steps": 1,
                      "degeneration_drop": 0.001, "degeneration_severe_drop": 0.001}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    _start_stack(services, tmp_path, model_dir, redis_server.url, weights)
    learner = _learner(services, tmp_path, weights, "learner", AUTOTHINK_LEARNER_CHECKPOINT_EVERY="0")
    assert learner.proc.wait(900) == 3, learner.output()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["degeneration"] is True and not any(r["degeneration"] for r in rows[:-1])
    assert len(rows) < 12  # stopped before the schedule's end
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert state["step"] == len(rows)  # the step it stopped at is checkpointed
    out = learner.output()
    assert "DEGENERATION" in out and "stopping at step" in out and "training stopped: degeneration alarm" in out
