"""The reward service with a real redis-server, two real replicas and real HTTP."""

import os
import time

import httpx
import pytest
import redis as redis_lib

from autothink.bus.messages import PromptMsg, RolloutGroup, Sample
from autothink.bus.streams import RedisBus
from tests.conftest import ServiceProcess, free_port, wait_healthy

pytestmark = pytest.mark.slow
RUN = "reward-it"

# (response text, hand-computed base reward) for a problem whose answer is 12
CASES = [
    ("</think>\n\nThe answer is \\boxed{12}.", 2.0),  # no-think, correct
    ("</think>\n\nThe answer is \\boxed{13}.", -1.0),  # no-think, wrong
    ("</think>\n\n" + "twelve " * 12 + "\\boxed{13}", -2.0),  # no-think, wrong, looping
    ("5+7=12\n</think>\n\n\\boxed{\\frac{24}{2}}", 1.0),  # think, correct in another form
    ("5+7=13\n</think>\n\n\\boxed{13}", 0.0),  # think, wrong
    ("5+7=12 and I never stop", 0.0),  # format error: no </think>
    ("</think>\n\nit is twelve", 0.0),  # format error: no boxed answer
]


def _group(i: int) -> RolloutGroup:
    prompt = PromptMsg(group_id=f"g{i:03d}", problem="What is $5+7$?", answer="12", n=len(CASES), level=1)
    samples = [Sample(text, list(range(3 + k)), [-0.1] * (3 + k)) for k, (text, _) in enumerate(CASES)]
    return RolloutGroup(prompt, policy_version=i % 3, samples=samples)


def _start(services, tmp_path, redis_url, name, claim_idle_ms=60_000, **extra):
    port = free_port()
    env = {**extra,
        "AUTOTHINK_REWARD_REDIS__URL": redis_url,
        "AUTOTHINK_REWARD_RUN_ID": RUN,
        "AUTOTHINK_REWARD_CONSUMER": name,
        "AUTOTHINK_REWARD_PORT": str(port),
        "AUTOTHINK_REWARD_GRADER_WORKERS": "1",
        "AUTOTHINK_REWARD_REDIS__CLAIM_IDLE_MS": str(claim_idle_ms),
    }
    proc = ServiceProcess("services.reward", env, tmp_path / f"{name}.log")
    services.append(proc)
    return proc, f"http://127.0.0.1:{port}"


def _read_scored(bus, want, timeout=90):
    client = bus.client
    deadline = time.time() + timeout
    seen = {}
    from autothink.bus.messages import decode

    while time.time() < deadline and len(seen) < want:
        for _id, fields in client.xrange(bus.names.scored):
            g = decode(fields, "scored")
            seen.setdefault(g.group_id, g)
        time.sleep(0.2)
    return seen


def test_two_replicas_score_every_group_once_and_dead_letter_bad_input(redis_server, services, tmp_path):
    bus = RedisBus(redis_server.url, RUN)
    a, base_a = _start(services, tmp_path, redis_server.url, "replica-a")
    b, base_b = _start(services, tmp_path, redis_server.url, "replica-b")
    wait_healthy(f"{base_a}/health", a)
    wait_healthy(f"{base_b}/health", b)

    n = 24
    for i in range(n):
        bus.publish(bus.names.rollouts, _group(i))
        if i == 5:
            bus.add(bus.names.rollouts, {"type": "rollout", "v": "1", "meta": "{broken"})
        if i == 9:
            bus.add(bus.names.rollouts, {"type": "prompt", "v": "1", "meta": "{}"})
        time.sleep(0.02)

    scored = _read_scored(bus, n)
    assert sorted(scored) == [f"g{i:03d}" for i in range(n)]
    for g in scored.values():
        assert [s.reward for s in g.scores] == [r for _, r in CASES], g.group_id
        assert [s.mode for s in g.scores] == ["no_think", "no_think", "no_think", "think", "think", "think", "no_think"]
        assert [s.length for s in g.scores] == [3 + k for k in range(len(CASES))]
        assert g.scores[3].extracted == "\\frac{24}{2}" and g.scores[3].correct
    # both replicas took part; everything is acknowledged
    assert {g.scorer for g in scored.values()} == {"replica-a", "replica-b"}
    deadline = time.time() + 10
    while bus.pending(bus.names.rollouts, "reward") and time.time() < deadline:
        time.sleep(0.2)
    assert bus.pending(bus.names.rollouts, "reward") == 0
    # the malformed entries are kept with their reasons, and nothing else was lost
    dead = bus.client.xrange(bus.names.dead)
    reasons = sorted(f[b"dead_reason"].decode() for _, f in dead)
    assert len(reasons) == 2
    assert reasons[0].startswith("expected a rollout message") and reasons[1].startswith("meta is not JSON")

    # ad-hoc grading over HTTP, and metrics
    r = httpx.post(f"{base_a}/grade", json={"response": "</think>\n\n\\boxed{0.5}", "ground_truth": "\\frac{1}{2}"})
    assert r.status_code == 200 and r.json()["correct"] and r.json()["reward"] == 2.0 and r.json()["mode"] == "no_think"
    assert httpx.post(f"{base_a}/grade", json={"response": 5}).status_code == 422
    metrics = httpx.get(f"{base_a}/metrics").text
    assert "autothink_reward_groups_total" in metrics and 'autothink_reward_grades_total{status="ok"}' in metrics


def test_entries_left_by_a_dead_consumer_are_reclaimed(redis_server, services, tmp_path):
    bus = RedisBus(redis_server.url, RUN)
    bus.ensure_group(bus.names.rollouts, "reward")
    for i in range(4):
        bus.publish(bus.names.rollouts, _group(i))
    # a consumer reads the entries and dies before acknowledging them
    taken = bus.read(bus.names.rollouts, "reward", "crashed-replica", count=10, block_ms=100)
    assert len(taken) == 4 and bus.pending(bus.names.rollouts, "reward") == 4

    proc, base = _start(services, tmp_path, redis_server.url, "survivor", claim_idle_ms=500)
    wait_healthy(f"{base}/health", proc)
    scored = _read_scored(bus, 4, timeout=60)
    assert sorted(scored) == ["g000", "g001", "g002", "g003"]
    assert {g.scorer for g in scored.values()} == {"survivor"}
    assert "reclaimed 4 pending entries" in proc.output() or bus.pending(bus.names.rollouts, "reward") == 0


def test_bus_retries_a_lost_connection(redis_server):
    bus = RedisBus(redis_server.url, RUN, retries=3)
    bus.client.connection_pool.disconnect()
    assert bus.add(bus.names.prompts, {"type": "prompt"})  # reconnects transparently
    dead = RedisBus("redis://127.0.0.1:1/0", RUN, retries=1)
    with pytest.raises(redis_lib.ConnectionError):
        dead.add(dead.names.prompts, {"x": "y"})


def test_a_grader_that_times_out_changes_no_reward(redis_server, services, tmp_path):
    """A grade that could not be made is "could not grade": correct None, the neutral reward (never the
    -1 / -2 of a wrong direct answer), and the learner leaves the sample out of the batch."""
    from autothink.batching import build_batch
    from autothink.config import StageConfig

    bus = RedisBus(redis_server.url, RUN)
    proc, base = _start(services, tmp_path, redis_server.url, "slow-grader", AUTOTHINK_REWARD_GRADE_TIMEOUT_S="0.000001")
    wait_healthy(f"{base}/health", proc)
    bus.publish(bus.names.rollouts, _group(900))
    (scored,) = _read_scored(bus, 1).values()
    timed_out = [s for s in scored.scores if s.status == "timeout"]
    assert timed_out, [s.status for s in scored.scores]
    for s in timed_out:
        assert s.correct is None and s.reward == 0.0  # the format-error reward: not wrong, not right
    batch = build_batch([scored], StageConfig(name="s", steps=1, prompts_per_batch=1, samples_per_prompt=7, max_response_tokens=16))
    assert batch.ungraded == len(timed_out) and all(x.graded for x in batch.samples)
    assert len(batch.samples) == len(CASES) - len(timed_out) or batch.groups_without_baseline == 1


def test_adhoc_grading_is_keyed_bounded_and_cannot_starve_training(redis_server, services, tmp_path):
    """Regressions of the red-team pass (issue 19, item 9)."""
    import concurrent.futures
    import json as _json

    bus = RedisBus(redis_server.url, RUN)
    proc, base = _start(services, tmp_path, redis_server.url, "keyed", AUTOTHINK_REWARD_API_KEY="k3y",
                        AUTOTHINK_REWARD_GRADE_TIMEOUT_S="5")
    wait_healthy(f"{base}/health", proc)
    ok = {"response": "</think>\n\n\\boxed{12}", "ground_truth": "12"}
    assert httpx.post(f"{base}/grade", json=ok).status_code == 401
    assert httpx.post(f"{base}/grade", json=ok, headers={"Authorization": "Bearer nope"}).status_code == 401
    key = {"Authorization": "Bearer k3y"}
    assert httpx.post(f"{base}/grade", json=ok, headers=key).json()["correct"] is True
    # a number JSON cannot write back, and a 30 MB body: clear 4xx, nothing echoed
    r = httpx.post(f"{base}/grade", content='{"response": "x", "ground_truth": "1", "num_tokens": 1e400}',
                   headers={**key, "content-type": "application/json"})
    assert r.status_code == 422 and "1e400" not in r.text and "inf" not in r.text.lower().replace("info", "")
    big = _json.dumps({"response": "x" * 30_000_000, "ground_truth": "1"})
    r = httpx.post(f"{base}/grade", content=big, headers={**key, "content-type": "application/json"}, timeout=60)
    assert r.status_code == 413 and len(r.content) < 1000

    # four slow ad-hoc grades (sympy needs ~1.7 s for this one) must not hold up the training stream
    slow = {"response": "</think>\n\n\\boxed{(x+y+z)^{12}}", "ground_truth": "\\cos(2x)"}
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        pending = [ex.submit(httpx.post, f"{base}/grade", json=slow, headers=key, timeout=60) for _ in range(4)]
        time.sleep(0.3)
        t0 = time.time()
        bus.publish(bus.names.rollouts, _group(950))
        got = _read_scored(bus, 1, timeout=30)
        latency = time.time() - t0
        for f in pending:
            f.result()
    assert "g950" in got and latency < 1.5, latency


def test_the_experiments_rewards_reach_the_scored_stream(redis_server, tmp_path):
    """Issue #33: an experiment's ``rewards:`` section used to be validated and then never reach the
    grader.  The reward service started as `autothink up` starts it (its slice of the experiment,
    services/manifest.py, in a --config file) scores with the experiment's table."""
    import subprocess
    import sys

    from autothink.config import load_config
    from services.manifest import service_slice, write_slice
    from tests.conftest import ROOT

    changed = {"think_correct": 1.5, "think_wrong": -0.5, "no_think_correct": 3.0, "no_think_wrong": -2.0,
               "format_error": -0.25, "repetition_penalty": -4.0}
    run = load_config("toy", [f"rewards.{k}={v}" for k, v in changed.items()])
    data = run.model_dump(mode="json")
    data["redis"]["url"] = redis_server.url
    port = free_port()
    config = write_slice(tmp_path / "config", "reward", service_slice("reward", data, run_id=RUN, port=port, grader_workers=1))
    log = open(tmp_path / "reward.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "services.reward", "--config", str(config)], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, env={k: v for k, v in os.environ.items() if not k.startswith("AUTOTHINK_REWARD_")})
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", proc)
        bus = RedisBus(redis_server.url, RUN)
        bus.publish(bus.names.rollouts, _group(0))
        scored = _read_scored(bus, 1)
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()
    # CASES under the changed table, by hand: no-think right, no-think wrong, looping (repetition
    # penalty), think right, think wrong, no </think> (format error), no boxed answer (format error)
    want = [3.0, -2.0, -4.0, 1.5, -0.5, -0.25, -0.25]
    assert [s.reward for s in scored["g000"].scores] == want, (tmp_path / "reward.log").read_text()[-3000:]
    assert want != [r for _, r in CASES]  # the reference table would have scored them otherwise


def test_json_logs_for_a_log_collector(redis_server, services, tmp_path):
    """AUTOTHINK_LOG_FORMAT=json (or --log-format json): every log line of the running service is one
    JSON object with its service name, level and logger; no text-format line is left (uvicorn's own
    loggers go through the same handler)."""
    import json
    import re

    proc, base = _start(services, tmp_path, redis_server.url, "json-logs", AUTOTHINK_LOG_FORMAT="json", AUTOTHINK_LOG_LEVEL="debug")
    wait_healthy(f"{base}/health", proc)
    proc.stop()
    lines = [x for x in proc.log_path.read_text().splitlines() if x.strip()]
    rows = [json.loads(x) for x in lines if x.startswith("{")]
    assert rows and all(r["service"] == "reward" and r["level"] in ("DEBUG", "INFO", "WARNING", "ERROR") for r in rows), lines
    assert any(r["level"] == "DEBUG" for r in rows), rows  # the level was taken too
    assert not [x for x in lines if re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ reward ", x)], lines
