"""The rollout service on the toy model: real redis-server, real vLLM, real gRPC weight sync."""

import os
import signal
import time

import httpx
import pytest
import torch
from safetensors.torch import load_file

from autothink import weights as W
from autothink.bus.messages import PromptMsg, decode
from autothink.bus.streams import RedisBus
from autothink.toy.task import eval_split
from tests.conftest import ServiceProcess, free_port, wait_healthy

pytestmark = pytest.mark.slow
RUN = "rollout-it"


def _start(services, tmp_path, redis_url, model, name, weights_addr="", claim_idle_ms=60_000, **extra_env):
    port = free_port()
    env = {
        "AUTOTHINK_ROLLOUT_MODEL": str(model),
        "AUTOTHINK_ROLLOUT_REDIS__URL": redis_url,
        "AUTOTHINK_ROLLOUT_REDIS__CLAIM_IDLE_MS": str(claim_idle_ms),
        "AUTOTHINK_ROLLOUT_RUN_ID": RUN,
        "AUTOTHINK_ROLLOUT_CONSUMER": name,
        "AUTOTHINK_ROLLOUT_PORT": str(port),
        "AUTOTHINK_ROLLOUT_MAX_MODEL_LEN": "256",
        "AUTOTHINK_ROLLOUT_FOLLOW_WEIGHTS": "true" if weights_addr else "false",
        "AUTOTHINK_ROLLOUT_WEIGHTS__ADDRESS": weights_addr,
        "AUTOTHINK_ROLLOUT_WEIGHTS__TOKEN": "tok",
        **extra_env,
    }
    proc = ServiceProcess("services.rollout", env, tmp_path / f"{name}.log")
    services.append(proc)
    base = f"http://127.0.0.1:{port}"
    wait_healthy(f"{base}/health", proc, timeout=240)
    return proc, base


def _prompts(tag, k, n=4, temperature=0.6, max_tokens=96):
    """k toy problems spread over the levels (eval_split lists 8 a level, level by level)."""
    problems = eval_split(0, 8)
    chosen = problems[::8][:k] if k <= 8 else problems[:k]
    return [
        PromptMsg(group_id=f"{tag}-{i}", problem=p.problem, answer=p.answer, level=p.level, n=n, temperature=temperature, max_tokens=max_tokens)
        for i, p in enumerate(chosen)
    ]


def _collect(bus, ids, timeout=180):
    want, got = set(ids), {}
    deadline = time.time() + timeout
    while time.time() < deadline and not want <= set(got):
        for _id, fields in bus.client.xrange(bus.names.rollouts):
            g = decode(fields, "rollout")
            got.setdefault(g.group_id, g)
        time.sleep(0.3)
    return got


def test_groups_then_new_weights(toy_model, redis_server, services, tmp_path):
    model_dir = toy_model[0]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    store = W.WeightStore()
    server = W.serve(store, "127.0.0.1:0", token="tok")
    try:
        bus = RedisBus(redis_server.url, RUN)
        proc, base = _start(services, tmp_path, redis_server.url, model_dir, "ro-1", f"127.0.0.1:{server.port}")

        sampled = _prompts("a", 4, n=4)
        greedy = [PromptMsg(group_id=f"g-{i}", problem=m.problem, answer=m.answer, n=1, temperature=0.0, max_tokens=40) for i, m in enumerate(sampled)]
        for m in sampled + greedy:
            bus.publish(bus.names.prompts, m)
        got = _collect(bus, [m.group_id for m in sampled + greedy])
        assert set(got) >= {m.group_id for m in sampled + greedy}, proc.output()
        for m in sampled:
            g = got[m.group_id]
            assert g.policy_version == 0 and len(g.samples) == 4 and g.prompt.answer == m.answer
            for s in g.samples:
                assert s.token_ids and len(s.logprobs) == len(s.token_ids) and all(lp <= 0 for lp in s.logprobs)
                assert tok.decode(s.token_ids, skip_special_tokens=True) == s.text
        before = {m.problem: got[m.group_id].samples[0].text for m in greedy}

        # publish version 1: the same model with its layers scrambled, so greedy outputs change
        state = load_file(str(model_dir / "model.safetensors"))
        g = torch.Generator().manual_seed(0)
        new = {k: (v + torch.randn(v.shape, generator=g) * 0.5 if "layers" in k else v) for k, v in state.items()}
        store.publish(1, new)
        deadline = time.time() + 60
        while time.time() < deadline:
            if httpx.get(f"{base}/health").json().get("policy_version") == 1:
                break
            # the swap happens between generate calls: keep the engine busy with one prompt
            bus.publish(bus.names.prompts, PromptMsg(group_id=f"tick-{time.time()}", problem="What is the value of $1+1$?", n=1, max_tokens=4))
            time.sleep(1.0)
        assert httpx.get(f"{base}/health").json()["policy_version"] == 1, proc.output()

        greedy2 = [PromptMsg(group_id=f"h-{i}", problem=m.problem, answer=m.answer, n=1, temperature=0.0, max_tokens=40) for i, m in enumerate(greedy)]
        for m in greedy2:
            bus.publish(bus.names.prompts, m)
        got2 = _collect(bus, [m.group_id for m in greedy2])
        assert all(got2[m.group_id].policy_version == 1 for m in greedy2)
        after = {m.problem: got2[m.group_id].samples[0].text for m in greedy2}
        assert sum(before[p] != after[p] for p in before) >= 3, (before, after)

        metrics = httpx.get(f"{base}/metrics").text
        assert "autothink_rollout_policy_version 1.0" in metrics
        assert "autothink_rollout_weight_sync_seconds_count 1.0" in metrics
        assert "autothink_rollout_generated_tokens_total" in metrics
    finally:
        server.stop(0)


def test_killed_replica_loses_no_prompt(toy_model, redis_server, services, tmp_path):
    model_dir = toy_model[0]
    bus = RedisBus(redis_server.url, RUN)
    first, _ = _start(services, tmp_path, redis_server.url, model_dir, "victim", claim_idle_ms=1000)
    msgs = _prompts("k", 64, n=8, max_tokens=96)
    for m in msgs:
        bus.publish(bus.names.prompts, m)
    # kill -9 while a batch is in flight (read but not acknowledged)
    deadline = time.time() + 60
    while time.time() < deadline and bus.pending(bus.names.prompts, "rollout") == 0:
        time.sleep(0.02)
    assert bus.pending(bus.names.prompts, "rollout") > 0
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait()
    done_before = {decode(f, "rollout").group_id for _, f in bus.client.xrange(bus.names.rollouts)}
    assert len(done_before) < len(msgs)

    second, _ = _start(services, tmp_path, redis_server.url, model_dir, "survivor", claim_idle_ms=1000)
    got = _collect(bus, [m.group_id for m in msgs], timeout=300)
    assert set(got) == {m.group_id for m in msgs}, second.output()  # every prompt, maybe some twice
    deadline = time.time() + 30
    while bus.pending(bus.names.prompts, "rollout") and time.time() < deadline:
        time.sleep(0.5)
    assert bus.pending(bus.names.prompts, "rollout") == 0
