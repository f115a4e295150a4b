"""Issue #39, reward half, on the real service: a real redis-server, the service as its own process,
real HTTP.  M1: a flood of slow ad-hoc grades gets 429s instead of queueing, while /health answers
and a training group is scored.  M2: the same answer gets one verdict, group after group.  And the
lower items: the docs behind the key, the key required beyond loopback, ad-hoc restarts counted in
/health, over-size responses unparseable, malformed groups dead-lettered at once and cut to size.

No timed assertions: the deadlines below are generous bounds for a loaded 2-core machine; the
figures of the "Done when" are measured by bench/grade_flood_bench.py (BENCHMARKS.md)."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import time

import httpx
import pytest

from autothink.bus.messages import PromptMsg, RolloutGroup, Sample, decode, encode
from autothink.bus.streams import RedisBus
from tests.conftest import ServiceProcess, free_port, wait_healthy

pytestmark = pytest.mark.slow
RUN = "reward-hard"

NESTED = "x"
for _ in range(7):
    NESTED = f"\\sin({NESTED})"
M2_TEXT = f"</think>\n\n\\boxed{{\\sin({NESTED})^{{2}}+\\cos({NESTED})^{{2}}}}"  # 8 nested sines; answer 1
M1_BODY = {"response": "</think>\n\n\\boxed{(x+1)^{30}(x-1)^{30}}",
           "ground_truth": [f"(x^2-1)^{{30}}+{k}" for k in range(1, 2001)]}


def _start(services, tmp_path, redis_url, name, **extra):
    port = free_port()
    env = {"AUTOTHINK_REWARD_REDIS__URL": redis_url, "AUTOTHINK_REWARD_RUN_ID": RUN, "AUTOTHINK_REWARD_CONSUMER": name,
           "AUTOTHINK_REWARD_PORT": str(port), "AUTOTHINK_REWARD_GRADER_WORKERS": "1", **extra}
    proc = ServiceProcess("services.reward", env, tmp_path / f"{name}.log")
    services.append(proc)
    base = f"http://127.0.0.1:{port}"
    wait_healthy(f"{base}/health", proc)
    return proc, base


def _group(gid: str, texts: list[str], answer="12") -> RolloutGroup:
    prompt = PromptMsg(group_id=gid, problem="q", answer=answer, n=len(texts))
    return RolloutGroup(prompt, 0, [Sample(t, [1, 2, 3], [-0.5, -0.25, -0.125]) for t in texts])


def _scored(bus, want: set[str], timeout: float = 120) -> dict:
    deadline, seen = time.time() + timeout, {}
    while time.time() < deadline and not want <= set(seen):
        for _id, fields in bus.client.xrange(bus.names.scored):
            g = decode(fields, "scored")
            seen.setdefault(g.group_id, g)
        time.sleep(0.05)
    return seen


def test_flood_of_slow_adhoc_grades_is_refused_not_queued_and_training_goes_on(redis_server, services, tmp_path):
    bus = RedisBus(redis_server.url, RUN)
    proc, base = _start(services, tmp_path, redis_server.url, "flooded", AUTOTHINK_REWARD_API_KEY="k3y",
                        AUTOTHINK_REWARD_GRADER_WORKERS="2", AUTOTHINK_REWARD_ADHOC_QUEUE="4")
    key = {"Authorization": "Bearer k3y"}
    # the docs are as closed as /grade
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert httpx.get(base + path).status_code == 401, path
        assert httpx.get(base + path, headers=key).status_code == 200, path
    assert httpx.get(f"{base}/health").status_code == 200 and httpx.get(f"{base}/metrics").status_code == 200

    # warm both pools (the first grade of a worker waits for it to import sympy)
    ok = {"response": "</think>\n\n\\boxed{12}", "ground_truth": "12"}
    assert httpx.post(f"{base}/grade", json=ok, headers=key, timeout=300).json()["correct"] is True
    bus.publish(bus.names.rollouts, _group("warm", ["</think>\n\n\\boxed{12}", "1\n</think>\n\n\\boxed{13}"]))
    assert "warm" in _scored(bus, {"warm"}, timeout=300)

    # M2: 20 groups of 8 identical samples; every sample of every group gets the same verdict
    ids = {f"m2-{i:02d}" for i in range(20)}
    for gid in sorted(ids):
        bus.publish(bus.names.rollouts, _group(gid, [M2_TEXT] * 8, answer="1"))
    got = _scored(bus, ids, timeout=300)
    assert ids <= set(got)
    verdicts = {(s.status, s.correct, s.reward, s.format_ok) for gid in ids for s in got[gid].scores}
    assert verdicts == {("timeout", None, 0.0, True)}, verdicts  # the budget's "could not grade", never ok/False

    # M1: 44 concurrent slow grades.  At most adhoc_grader_workers + adhoc_queue = 5 are admitted;
    # the rest are refused at once with Retry-After.  Meanwhile /health answers and training flows.
    def post() -> httpx.Response:
        return httpx.post(f"{base}/grade", json=M1_BODY, headers=key, timeout=300)

    with concurrent.futures.ThreadPoolExecutor(44) as ex:
        flood = [ex.submit(post) for _ in range(44)]
        time.sleep(0.5)
        health = httpx.get(f"{base}/health", timeout=30)
        bus.publish(bus.names.rollouts, _group("during-flood", ["</think>\n\n\\boxed{12}", "5+7=12\n</think>\n\n\\boxed{12}"]))
        scored = _scored(bus, {"during-flood"}, timeout=60)
        replies = [f.result() for f in flood]
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert [s.reward for s in scored["during-flood"].scores] == [2.0, 1.0]
    codes = [r.status_code for r in replies]
    assert set(codes) <= {200, 429} and codes.count(429) >= 44 - 5 - 10, codes  # a few may get in as others finish
    for r in replies:
        if r.status_code == 429:
            assert int(r.headers["Retry-After"]) >= 1 and "retry" in r.json()["detail"]
        else:  # admitted grades end on the operation budget, never queue for minutes
            assert r.json()["status"] == "timeout" and r.json()["correct"] is None
    after = httpx.get(f"{base}/health").json()
    assert after["adhoc_rejected"] == codes.count(429) and after["adhoc_in_flight"] == 0
    assert "autothink_reward_adhoc_rejected_total" in httpx.get(f"{base}/metrics").text


def _rollout_fields(**changes) -> dict:
    fields = dict(encode(_group("bad", ["</think>\n\n\\boxed{12}"])))
    meta = json.loads(fields["meta"])
    for k, v in changes.items():
        (meta["prompt"] if k in ("strategy", "answer", "metadata") else meta)[k] = v
    fields["meta"] = json.dumps(meta)
    return fields


def test_lower_items_on_the_loopback_service(redis_server, services, tmp_path):
    """No key on loopback: /grade and the docs are open.  A wall clock of 1 µs makes every
    ad-hoc grade a timeout, so its restarts show in /health."""
    bus = RedisBus(redis_server.url, RUN)
    proc, base = _start(services, tmp_path, redis_server.url, "lower", AUTOTHINK_REWARD_GRADE_TIMEOUT_S="0.000001")
    assert httpx.get(f"{base}/openapi.json").status_code == 200
    r = httpx.post(f"{base}/grade", json={"response": "</think>\n\n\\boxed{12}", "ground_truth": "12"}, timeout=300)
    assert (r.json()["status"], r.json()["correct"]) == ("timeout", None)
    health = httpx.get(f"{base}/health").json()
    assert health["adhoc_replaced_workers"] == 1 and health["replaced_workers"] == 0

    huge = "</think>\n\n" + "x" * 1_000_000 + "\\boxed{12}"
    r = httpx.post(f"{base}/grade", json={"response": huge[:1_000_000], "ground_truth": "12"}, timeout=120)
    assert (r.status_code, r.json()["status"], r.json()["correct"], r.json()["reward"]) == (200, "unparseable", False, 0.0)

    # malformed groups: each dead-lettered on its first delivery, with its reason
    bad = {
        "no samples": {**_rollout_fields(lengths=[], texts=[], finish_reasons=[]), "ids": b"", "lp": b""},
        "evil strategy": _rollout_fields(strategy="evil"),
        "dict answer": _rollout_fields(answer={"a": 1}),
        "true answer": _rollout_fields(answer=True),
        "dict prompt ids": _rollout_fields(prompt_token_ids={"1": 2}),
        "deep metadata": _rollout_fields(metadata=json.loads('{"a":' * 500 + "1" + "}" * 500)),
    }
    big_meta = b'{"x": "' + b"y" * 17_000_000 + b'"}'
    ids = {bus.add(bus.names.rollouts, fields): name for name, fields in bad.items()}
    ids[bus.add(bus.names.rollouts, {"type": "rollout", "v": "1", "meta": big_meta, "ids": b"", "lp": b""})] = "17 MB meta"
    bus.publish(bus.names.rollouts, _group("oversize", [huge, "</think>\n\n\\boxed{12}"]))

    scored = _scored(bus, {"oversize"})
    first, second = scored["oversize"].scores
    assert (first.status, first.correct, first.reward, first.format_ok) == ("unparseable", False, 0.0, False)
    # the 1 µs wall clock, for the service's training pool too -- but a grade already done when the
    # deadline is checked comes back "ok" (seen once in a clean-clone run): a race, so either verdict,
    # never a wrong one.  (Known gap: the training pool's timeout is not shown deterministically here.)
    assert (second.status, second.correct) in {("timeout", None), ("ok", True)}, second
    deadline = time.time() + 60
    while bus.length(bus.names.dead) < len(ids) and time.time() < deadline:
        time.sleep(0.1)
    dead = {f[b"dead_id"].decode(): f for _, f in bus.client.xrange(bus.names.dead)}
    assert set(dead) == set(ids)
    reasons = {ids[i]: f[b"dead_reason"].decode() for i, f in dead.items()}
    assert "at least one sample" in reasons["no samples"] and "strategy must be one of" in reasons["evil strategy"]
    assert "not an object" in reasons["dict answer"] and "not a boolean" in reasons["true answer"]
    assert "prompt_token_ids" in reasons["dict prompt ids"] and "nests deeper" in reasons["deep metadata"]
    assert reasons["17 MB meta"] == "meta field too large"
    (big,) = [f for i, f in dead.items() if ids[i] == "17 MB meta"]
    assert len(big[b"meta"]) == 64 << 10 and int(big[b"dead_meta_bytes"]) == len(big_meta)
    assert big[b"dead_meta_sha256"].decode() == hashlib.sha256(big_meta).hexdigest()
    assert bus.pending(bus.names.rollouts, "reward") == 0
    assert "released for a retry" not in proc.output()  # none went round max_deliveries times


def test_without_a_key_grade_and_docs_are_closed_beyond_loopback(redis_server, services, tmp_path):
    proc, base = _start(services, tmp_path, redis_server.url, "open", AUTOTHINK_REWARD_HOST="0.0.0.0")
    r = httpx.post(f"{base}/grade", json={"response": "</think>\n\n\\boxed{12}", "ground_truth": "12"})
    assert r.status_code == 403 and "AUTOTHINK_REWARD_API_KEY" in r.json()["detail"]
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert httpx.get(base + path).status_code == 403, path
    assert httpx.get(f"{base}/health").status_code == 200 and httpx.get(f"{base}/metrics").status_code == 200
