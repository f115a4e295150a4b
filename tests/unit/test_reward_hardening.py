"""Issue #39, reward half, without processes: what a rollout entry may hold, one verdict per
distinct answer, the grader's operation budget, over-size responses, dead-letter rules of the
reward worker, and --print-config's redaction.  The real service is in
tests/integration/test_reward_hardening.py."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

import autothink.grading as grading
from autothink.bus.memory import MemoryBus
from autothink.bus.messages import MessageError, PromptMsg, RolloutGroup, Sample, decode, encode
from autothink.config import RewardConfig
from autothink.grading import GradeResult, grade_in_process
from autothink.scoring import answers_to_grade, score_group, score_sample


def _group(**prompt_changes) -> RolloutGroup:
    prompt = PromptMsg(**{"group_id": "g", "problem": "What is 5+7?", "answer": "12", "n": 2, **prompt_changes})
    return RolloutGroup(prompt, 0, [Sample("</think>\n\n\\boxed{12}", [1, 2], [-0.5, -0.25]), Sample("x", [3], [-0.125])])


def _meta_changed(**changes) -> dict:
    fields = dict(encode(_group()))
    meta = json.loads(fields["meta"])
    for key, value in changes.items():
        if key.startswith("prompt."):
            meta["prompt"][key[len("prompt."):]] = value
        else:
            meta[key] = value
    fields["meta"] = json.dumps(meta)
    return fields


# ------------------------------------------------------------------ what a rollout entry may hold


def _no_samples() -> dict:
    fields = _meta_changed(lengths=[], texts=[], finish_reasons=[])
    fields.update(ids=b"", lp=b"")
    return fields


def _nested(depth: int):
    value: object = 1
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize("fields,reason", [
    (_no_samples(), "needs at least one sample"),
    (_meta_changed(**{"prompt.strategy": "evil"}), "strategy must be one of"),
    (_meta_changed(**{"prompt.answer": {"a": 1}}), "answer must be null, a string.*not an object"),
    (_meta_changed(**{"prompt.answer": True}), "answer must be.*not a boolean"),
    (_meta_changed(**{"prompt.answer": ["1", ["2"]]}), "answer must be"),
    (_meta_changed(prompt_token_ids={"1": 2}), "prompt_token_ids must be a list"),
    (_meta_changed(prompt_token_ids=[1, True]), "prompt_token_ids must be a list"),
    (_meta_changed(prompt_token_ids=[1, -5]), "prompt_token_ids must be a list"),
    (_meta_changed(**{"prompt.metadata": _nested(200)}), "metadata nests deeper than 32"),
])
def test_entries_the_grader_cannot_trust_are_refused_with_a_reason(fields, reason):
    with pytest.raises(MessageError, match=reason):
        decode(fields, "rollout")


def test_every_answer_form_the_benchmarks_use_still_decodes():
    for answer in (None, "12", 12, 142.0, ["9.6", 3], []):
        g = _group(answer=answer)
        assert decode(encode(g), "rollout") == g
    g = _group(metadata={"source": {"set": "math", "tags": ["a", {"b": 1}]}})  # ordinary nesting
    assert decode(encode(g), "rollout") == g


# ------------------------------------------------------------------ one verdict per distinct answer

CFG = RewardConfig()


def test_a_group_grades_each_distinct_answer_once_and_shares_the_verdict():
    """A grader whose verdict flips by timing (the M2 symptom: timeout, then ok/False) gives one
    verdict to every sample with the same answer.  Rewards by hand: the first verdict is the
    timeout, correct None: the format-error reward 0 for all four no-think samples."""
    calls = []

    def flaky(answer, truth):
        calls.append(answer)
        return GradeResult(None, "timeout", None) if len(calls) % 2 else GradeResult(False, "ok", answer)

    texts = ["</think>\n\n\\boxed{\\sin^2 x+\\cos^2 x}"] * 4 + ["3+4=7\n</think>\n\n\\boxed{1}"]
    scores = score_group(texts, [5] * 5, "ellipsis", "1", flaky, CFG)
    assert calls == ["\\boxed{\\sin^2 x+\\cos^2 x}", "\\boxed{1}"]
    assert [(s.status, s.correct, s.reward) for s in scores[:4]] == [("timeout", None, 0.0)] * 4
    assert (scores[4].status, scores[4].correct, scores[4].reward) == ("ok", False, 0.0)  # think, wrong: 0
    assert answers_to_grade(texts, "ellipsis", "1") == calls
    assert answers_to_grade(texts, "ellipsis", None) == []  # no ground truth: nothing to grade


def test_a_million_character_response_is_unparseable_not_no_answer():
    text = "</think>\n\n" + "x" * 1_000_000 + "\\boxed{12}"
    never = lambda *_: pytest.fail("an over-size response must not reach the grader")  # noqa: E731
    s = score_sample(text, 7, "ellipsis", "12", never, max_chars=200_000)
    # the format-error reward: 0, neither right nor shown wrong, and no repetition guard (reward not < 0)
    assert (s.status, s.correct, s.format_ok, s.reward, s.mode, s.length) == ("unparseable", False, False, 0.0, "no_think", 7)
    (only,) = score_group([text], [7], "ellipsis", "12", never, CFG, max_chars=200_000)
    assert only == s
    assert answers_to_grade([text], "ellipsis", "12", max_chars=200_000) == []


# ------------------------------------------------------------------ the grader's operation budget

NESTED = "x"
for _ in range(7):
    NESTED = f"\\sin({NESTED})"
M2 = f"\\boxed{{\\sin({NESTED})^{{2}}+\\cos({NESTED})^{{2}}}}"  # issue #39's M2 answer: 8 nested sines


def test_the_budget_not_the_clock_decides(monkeypatch):
    """sin^2 x + cos^2 x = 1 needs ~0.26 M calls: under a budget of 5,000 it times out, every
    time (20 of 20, the sympy cache and our result cache cleared each time); under the real
    budget it is correct."""
    grading._compare_cached.cache_clear()
    assert grade_in_process("\\boxed{\\sin^2 x + \\cos^2 x}", "1").correct is True
    monkeypatch.setattr(grading, "MAX_GRADE_CALLS", 5_000)
    seen = set()
    for _ in range(20):
        grading._compare_cached.cache_clear()
        r = grade_in_process("\\boxed{\\sin^2 x + \\cos^2 x}", "1")
        seen.add((r.correct, r.status, r.detail))
    assert seen == {(None, "timeout", "the comparison needs more than 5,000 operations (Python calls): could not grade")}
    # cheap answers are untouched by the budget
    assert grade_in_process("\\boxed{\\frac{24}{2}}", "12").correct is True
    grading._compare_cached.cache_clear()


def test_the_budget_leaves_an_outer_tracer_in_place():
    seen = []

    def outer(frame, event, arg):
        seen.append(event)
        return None

    sys.settrace(outer)
    try:
        grade_in_process("\\boxed{(x+1)^2}", "x^2+2x+1")
        after = sys.gettrace()
    finally:
        sys.settrace(None)
    assert after is outer


@pytest.mark.slow
def test_the_m2_answer_gets_one_verdict_in_every_process():
    """The M2 answer in this process (cache cleared between tries) and in two fresh processes
    with other hash seeds, graded side by side (so each runs on a loaded machine): one verdict,
    the budget's "could not grade" (4.9 M calls, over the 2 M budget), never ok/False."""
    code = ("import json, sys; from autothink.grading import grade_in_process as g; "
            "r = g(sys.argv[1], '1'); print(json.dumps([r.correct, r.status, r.detail]))")
    procs = [subprocess.Popen([sys.executable, "-c", code, M2], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}) for seed in ("1", "2")]
    verdicts = set()
    for _ in range(2):
        grading._compare_cached.cache_clear()
        r = grade_in_process(M2, "1")
        verdicts.add((r.correct, r.status, r.detail))
    for p in procs:
        out, _ = p.communicate(timeout=300)
        verdicts.add(tuple(json.loads(out)))
    assert verdicts == {(None, "timeout", "the comparison needs more than 2,000,000 operations (Python calls): could not grade")}


# ------------------------------------------------------------------ the worker's dead-letter rules


class _NoPool:
    replaced = 0

    def __init__(self, *a, **k):
        pass

    def grade(self, answer, truth, timeout_s=None):
        return grade_in_process(answer, truth)

    def close(self):
        pass


@pytest.fixture
def worker(monkeypatch):
    import services.reward.worker as w
    from services.reward.config import RewardServiceConfig

    monkeypatch.setattr(w, "GraderPool", _NoPool)  # no processes here; the pools are tested elsewhere
    bus = MemoryBus("rh")
    rw = w.RewardWorker(RewardServiceConfig(run_id="rh", consumer="c"), bus=bus)
    bus.ensure_group(bus.names.rollouts, w.GROUP)
    yield rw, bus
    rw.close()


def test_a_deterministic_failure_is_dead_lettered_on_its_first_delivery(worker, monkeypatch):
    """A group that cannot be scored or encoded fails the same way every time: dead-lettered at
    once (it used to be released and retried max_deliveries = 5 times)."""
    rw, bus = worker
    bus.publish(bus.names.rollouts, _group())
    monkeypatch.setattr(rw, "score", lambda g: (_ for _ in ()).throw(RecursionError("maximum recursion depth exceeded")))
    assert rw.step(block_ms=10) == 1
    (dead,) = [f for _, f in bus.entries(bus.names.dead)]
    assert dead["dead_reason"].startswith("cannot score or encode this group: RecursionError")
    assert bus.pending(bus.names.rollouts, "reward") == 0 and bus.length(bus.names.scored) == 0


def test_a_passing_failure_is_retried(worker, monkeypatch):
    rw, bus = worker
    bus.publish(bus.names.rollouts, _group())
    monkeypatch.setattr(rw, "score", lambda g: (_ for _ in ()).throw(ConnectionError("redis went away")))
    rw.step(block_ms=10)
    assert bus.length(bus.names.dead) == 0 and bus.pending(bus.names.rollouts, "reward") == 1  # released, not dead


def test_a_17_mb_meta_is_not_copied_whole_into_the_dead_letter_stream(worker):
    rw, bus = worker
    meta = b'{"x": "' + b"y" * 17_000_000 + b'"}'
    bus.add(bus.names.rollouts, {b"type": b"rollout", b"v": b"1", b"meta": meta, b"ids": b"", b"lp": b""})
    rw.step(block_ms=10)
    (dead,) = [f for _, f in bus.entries(bus.names.dead)]
    assert dead["dead_reason"] == "meta field too large"
    assert len(dead["meta"]) == 64 << 10 and dead["meta"] == meta[: 64 << 10]
    assert dead["dead_meta_bytes"] == str(len(meta)) and dead["dead_meta_sha256"] == hashlib.sha256(meta).hexdigest()
    assert dead["ids"] == b"" and bus.pending(bus.names.rollouts, "reward") == 0


def test_the_worker_scores_a_group_with_one_grade_per_answer(worker, monkeypatch):
    rw, bus = worker
    graded = []
    monkeypatch.setattr(rw.pool, "grade", lambda a, t, timeout_s=None: graded.append(a) or grade_in_process(a, t), raising=False)
    texts = ["</think>\n\n\\boxed{12}"] * 3 + ["5+7=12\n</think>\n\n\\boxed{\\frac{24}{2}}", "</think>\n\n\\boxed{13}"]
    g = RolloutGroup(PromptMsg("g2", "q", "12", n=5), 1, [Sample(t, [1, 2], [-0.1, -0.2]) for t in texts])
    scored = rw.score(g)
    assert sorted(graded) == sorted(["\\boxed{12}", "\\boxed{\\frac{24}{2}}", "\\boxed{13}"])
    assert [s.reward for s in scored.scores] == [2.0, 2.0, 2.0, 1.0, -1.0]  # no-think right, think right, no-think wrong


# ------------------------------------------------------------------ --print-config


def test_print_config_masks_the_key_and_the_redis_password(monkeypatch, capsys):
    from services.reward.__main__ import main

    monkeypatch.setenv("AUTOTHINK_REWARD_API_KEY", "k3y-s3cret")
    monkeypatch.setenv("AUTOTHINK_REWARD_REDIS__URL", "redis://:pa55word@redis:6379/0")
    with pytest.raises(SystemExit) as done:
        main(["--print-config"])
    out = capsys.readouterr().out
    assert done.value.code == 0
    assert "k3y-s3cret" not in out and "pa55word" not in out
    shown = json.loads(out)
    assert shown["api_key"] == "***" and shown["redis"]["url"] == "redis://:***@redis:6379/0"
    monkeypatch.delenv("AUTOTHINK_REWARD_API_KEY")
    with pytest.raises(SystemExit):
        main(["--print-config"])
    assert json.loads(capsys.readouterr().out)["api_key"] == ""  # unset stays visibly unset


def test_loopback_only():
    from services.reward.config import RewardServiceConfig

    assert all(RewardServiceConfig(host=h).loopback_only for h in ("127.0.0.1", "127.0.0.2", "localhost", "::1"))
    assert not any(RewardServiceConfig(host=h).loopback_only for h in ("0.0.0.0", "::", "10.0.0.5", "reward.svc"))
