"""Fuzzing: schemathesis against the gateway's OpenAPI schema (no 5xx, no crash), and hypothesis on
the bus codecs (round trips; garbage is a MessageError, nothing else) and on the grader (it never
raises and always answers within its time bound)."""

from __future__ import annotations

import math
import time

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autothink.bus.messages import MessageError, PromptMsg, RolloutGroup, Sample, Score, ScoredGroup, decode, encode
from autothink.grading import grade_in_process
from autothink.grading.pool import GraderPool
from services.gateway.app import create_app
from services.gateway.config import GatewayConfig
from tests.unit.test_gateway import ScriptedModel

# ---------------------------------------------------------------- the gateway's API


def _app():
    return create_app(GatewayConfig(api_key="k", max_request_bytes=65536), ScriptedModel())


schema = schemathesis.openapi.from_asgi("/openapi.json", _app(), headers={"Authorization": "Bearer k"})  # behind the key (#39)


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_gateway_never_answers_5xx(case) -> None:
    for headers in ({"Authorization": "Bearer k"}, {}):
        response = case.call(headers=headers)
        assert response.status_code < 500, (case.method, case.path, case.body, response.text[:500])
        if response.status_code >= 400:
            assert "message" in response.json()["error"]  # every refusal says why


# ---------------------------------------------------------------- bus codecs

texts = st.text(max_size=200)
answers = st.one_of(st.none(), st.text(max_size=20), st.integers(-10**6, 10**6), st.lists(st.text(max_size=10), max_size=3))
prompts = st.builds(
    PromptMsg, group_id=st.text(min_size=1, max_size=40), problem=texts, answer=answers, n=st.integers(1, 64),
    temperature=st.floats(0, 2), top_p=st.floats(0.01, 1), max_tokens=st.integers(1, 32768), level=st.one_of(st.none(), st.integers(1, 8)),
    step=st.integers(-1, 10**6), min_policy_version=st.integers(0, 10**6),
)


@st.composite
def samples(draw) -> Sample:
    ids = draw(st.lists(st.integers(0, 2**31 - 1), max_size=300))
    lps = [draw(st.floats(-1e4, 0, width=32)) for _ in ids]
    return Sample(draw(texts), ids, lps, draw(st.sampled_from(["stop", "length", "abort"])))


@settings(max_examples=150, deadline=None)
@given(prompts, st.integers(0, 10**6), st.lists(samples(), min_size=1, max_size=4))
def test_rollout_and_scored_round_trip(prompt, version, ss) -> None:
    g = RolloutGroup(prompt, version, ss, prompt_token_ids=[1, 2, 3], worker="w")
    assert decode(encode(g), "rollout") == g
    scores = [Score("think", True, False, "ok", 0.0, len(s.token_ids), None) for s in ss]
    sg = ScoredGroup(prompt, version, ss, scores, [1], "w", "r")
    assert decode(encode(sg), "scored") == sg
    assert decode(encode(prompt), "prompt") == prompt


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from([b"meta", b"ids", b"lp", b"kind", b"v", "meta", b"x"]), st.one_of(st.binary(max_size=64), st.text(max_size=64)), max_size=5),
       st.sampled_from(["prompt", "rollout", "scored"]))
def test_garbage_entries_are_message_errors(entry, expect) -> None:
    try:
        decode(entry, expect)
    except MessageError:
        pass  # the one allowed failure, with its reason


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_corrupted_real_entries_are_message_errors(data) -> None:
    g = RolloutGroup(PromptMsg("g", "q", "1"), 3, [Sample("a", [1, 2, 3], [-0.1, -0.2, -0.3])])
    fields = {k: (v.encode() if isinstance(v, str) else v) for k, v in encode(g).items()}
    key = data.draw(st.sampled_from(sorted(fields)))
    raw = bytearray(fields[key])
    if raw:
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
        cut = data.draw(st.integers(0, len(raw)))
        fields[key] = bytes(raw[:cut])
    try:
        back = decode(fields, "rollout")
    except MessageError:
        return
    assert isinstance(back, RolloutGroup)  # a harmless change (a byte in a text, a log-prob) is still a group


# ---------------------------------------------------------------- grader

LATEX = ["\\frac{", "}{", "}", "{", "\\sqrt{", "^", "_", "\\pi", "x", "y", "1", "2", "9", "0", ".", ",", "(", ")", "[", "]",
         "+", "-", "*", "/", "=", "\\cdot", "\\infty", "\\cup", "\\left(", "\\right)", "!", "\\dfrac", "e", "i", "%", "$", " ",
         "\\text{cm}", "\\sin", "\\log", "10^{", "\\boxed{", "__import__('os')", "';", "\\\\"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(LATEX), max_size=40).map("".join), st.one_of(st.lists(st.sampled_from(LATEX), max_size=12).map("".join), st.integers()))
def test_grader_never_raises(answer, truth) -> None:
    r = grade_in_process("\\boxed{" + answer + "}", truth)
    assert r.status in ("ok", "no_answer", "unparseable") and isinstance(r.correct, bool)


@pytest.fixture(scope="module")
def pool():
    with GraderPool(workers=1, timeout_s=1.0) as p:
        # the bound below is a grade's, not the worker's start-up (importing the grader took 5 s on
        # a machine starved by an RL run): wait for the first answer before timing any
        assert p.grade("\\boxed{1}", "1", timeout_s=120.0).correct
        yield p


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(LATEX), max_size=60).map("".join), st.text(max_size=30))
def test_grader_pool_answers_within_its_bound(pool, answer, truth) -> None:
    t0 = time.perf_counter()
    r = pool.grade("\\boxed{" + answer + "}", truth, timeout_s=1.0)
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.0 + 3.0  # the limit, plus replacing a stuck worker on a loaded machine
    assert r.status in ("ok", "no_answer", "unparseable", "timeout", "error")
    # a grade that could not be made is None ("could not grade"), never a plausible wrong verdict
    assert (r.correct is None) == (r.status in ("timeout", "error"))
    assert r.correct is None or not math.isnan(float(r.correct))
