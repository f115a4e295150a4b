"""The evaluation's statistics, store and endpoint client against numbers worked out by hand."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from autothink import eval_stats as S
from autothink.eval_endpoint import EndpointBackend, EndpointError
from autothink.eval_store import SampleStore, SettingsMismatch


def test_pass_at_k_by_hand() -> None:
    # 4 samples, 1 correct: pass@1 = 1/4; pass@2 = 1 - C(3,2)/C(4,2) = 1 - 3/6; pass@4 = 1
    assert [S.pass_at_k(4, 1, k) for k in (1, 2, 4)] == [0.25, 0.5, 1.0]
    # 2 correct of 4: pass@2 = 1 - C(2,2)/C(4,2) = 5/6; pass@3 = 1 (only 2 wrong to draw)
    assert S.pass_at_k(4, 2, 2) == pytest.approx(5 / 6) and S.pass_at_k(4, 2, 3) == 1.0
    assert S.pass_at_k(16, 0, 8) == 0.0
    # three problems of 4 samples with 0, 1 and 4 correct: pass@2 = (0 + 1/2 + 1) / 3
    assert S.mean_pass_at_k([(4, 0), (4, 1), (4, 4)], 2) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        S.pass_at_k(4, 1, 5)


def test_bootstrap_by_hand() -> None:
    # problems [0, 0, 0, 1]: a replicate's mean is (ones drawn) / 4 with ones ~ Binomial(4, 1/4):
    # P = .316 (0), .422 (.25), .211 (.5), .047 (.75), .004 (1); cumulative .316 .738 .949 .996 ->
    # the 2.5 % quantile is 0 and the 97.5 % quantile is 0.75
    assert S.bootstrap_ci([[0, 0, 0, 1]], rounds=4000, seed=1) == (0.0, 0.75)
    reps = S.bootstrap_means([[0, 0, 0, 1]], rounds=4000, seed=1)
    assert abs((reps == 0.5).mean() - 0.211) < 0.02 and abs(reps.mean() - 0.25) < 0.01
    # seeded: the same interval every time
    assert S.bootstrap_ci([[0.1, 0.9, 0.5]], seed=7) == S.bootstrap_ci([[0.1, 0.9, 0.5]], seed=7)
    # stratified: two benchmarks without spread give their plain average, whatever their sizes
    assert S.bootstrap_ci([[1.0] * 3, [0.0] * 10]) == (0.5, 0.5)
    # paired: +1 on one problem of four is the same distribution as above, so 0 is inside the interval
    d, lo, hi = S.paired_difference_ci([[1, 1, 1, 1]], [[0, 1, 1, 1]], rounds=4000, seed=1)
    assert (d, lo, hi) == (0.25, 0.0, 0.75) and S.inside_noise((lo, hi))


def test_e_f1_from_the_papers_table_1() -> None:
    t = S.PAPER_TABLE1_R1_1_5B
    std, no = t["standard prompt"], t["no-thinking prompt"]

    def ef1(method: str) -> float:
        r = t[method]
        return S.paper_e_f1(r["accuracy"], r["tokens"], std["accuracy"], std["tokens"], no["accuracy"], no["tokens"])

    # stage 3: dAcc = 3.1 / 11.1 = 0.279, dTok = 5525 / 8105 = 0.682 -> 39.6 (the paper's value)
    assert round(ef1("AutoThink stage 3"), 1) == 39.6
    assert round(ef1("ThinkPrune-4k"), 1) == 18.7
    assert ef1("ellipsis prompt") == 0.0  # less accurate than the standard prompt
    # the benchmark average of the per-benchmark numbers is the paper's average
    for r in t.values():
        if r["per_benchmark"]:
            assert sum(r["per_benchmark"].values()) / 5 == pytest.approx(r["accuracy"], abs=0.06)
    assert {r["method"]: r["e_f1"] for r in S.paper_reference_rows()}["AutoThink stage 3"] == 39.6


def test_store_resumes_refuses_other_settings_and_drops_a_cut_line(tmp_path) -> None:
    path = tmp_path / "math500.ellipsis.jsonl"
    settings = {"model": "m", "temperature": 0.6}
    with SampleStore(path, settings) as st:
        st.add({"problem": 0, "sample": 0, "correct": True})
        st.add({"problem": 0, "sample": 1, "correct": False})
    with open(path, "a") as f:
        f.write('{"problem": 1, "sample": 0, "corr')  # killed in the middle of a line
    with SampleStore(path, settings) as st:
        assert set(st.records) == {(0, 0), (0, 1)}
        st.add({"problem": 1, "sample": 0, "correct": True})
    lines = path.read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(x) for x in lines)
    with pytest.raises(SettingsMismatch, match=r"temperature: 0.6 -> 1.0"):
        SampleStore(path, {**settings, "temperature": 1.0})


def _fake_server(script: list) -> httpx.MockTransport:
    """A scripted OpenAI server: /v1/models, then the scripted replies to the POSTs in order."""
    seen: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "autothink", "owned_by": "autothink"}]})
        seen.append(json.loads(request.content))
        status, body = script.pop(0)
        if status == "drop":
            raise httpx.ConnectError("connection reset")
        return httpx.Response(status, json=body)

    transport = httpx.MockTransport(handler)
    transport.seen = seen  # type: ignore[attr-defined]
    return transport


def _run(backend: EndpointBackend, *args):  # type: ignore[no-untyped-def]
    async def go():  # type: ignore[no-untyped-def]
        async with backend:
            return await backend.complete(*args)

    return asyncio.run(go())


def test_endpoint_chat_retries_and_joins_reasoning() -> None:
    reply = {"choices": [{"message": {"content": "\\boxed{5}", "reasoning_content": "2+3"}, "finish_reason": "stop"}],
             "usage": {"completion_tokens": 9}}
    t = _fake_server([("drop", None), (429, {"error": {}}), (503, {"error": {}}), (200, reply)])
    backend = EndpointBackend("http://gw/v1", api_key="k", backoff_s=0.001, transport=t)
    c = _run(backend, "What is 2+3?", "standard", 7, 0.6, 0.95, 64)
    assert (c.text, c.num_tokens, backend.api, backend.model, backend.retried) == ("2+3\n</think>\n\n\\boxed{5}", 9, "chat", "autothink", 3)
    body = t.seen[-1]  # type: ignore[attr-defined]
    assert body["chat_template_kwargs"] == {"thinking": "on"} and body["seed"] == 7 and body["top_p"] == 0.95
    assert body["messages"][0]["content"].startswith("What is 2+3? Let's think step by step")


def test_endpoint_stops_on_a_refusal_and_completions_send_the_rendered_prompt() -> None:
    t = _fake_server([(400, {"error": {"message": "max_tokens too large"}})])
    with pytest.raises(EndpointError, match="max_tokens too large"):
        _run(EndpointBackend("http://gw", backoff_s=0.001, transport=t), "q", "ellipsis", 1, 0.6, 0.95, 64)
    t = _fake_server([(200, {"choices": [{"text": "</think>\n\n\\boxed{1}", "finish_reason": "stop"}], "usage": {"completion_tokens": 4}})])
    c = _run(EndpointBackend("http://gw", api="completions", transport=t), "q", "ellipsis", 1, 0.6, 0.95, 64)
    body = t.seen[-1]  # type: ignore[attr-defined]
    assert body["prompt"].endswith("<｜Assistant｜><think>\n...\n") and body["add_special_tokens"] is False and c.num_tokens == 4


class _FakeBackend:
    """Answers deterministically from the seed; stops (as a crash would) after ``fail_after`` samples."""

    identity = "fake-model"

    def __init__(self, fail_after: int | None = None):
        self.fail_after, self.calls = fail_after, 0

    async def complete(self, problem, strategy, seed, temperature, top_p, max_tokens):  # type: ignore[no-untyped-def]
        from autothink.eval_endpoint import Completion

        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("killed")
        await asyncio.sleep(0.001 * (seed % 5))  # complete out of order
        answer = problem.split()[-1] if seed % 3 else "0"
        return Completion(("</think>\n\n" if seed % 2 else "hm\n</think>\n\n") + f"\\boxed{{{answer}}}", 5 + seed % 7)


def test_resumable_run_gives_the_uninterrupted_numbers(tmp_path) -> None:
    from autothink.evaluation import SamplingSettings, exact_grade, run_resumable

    benches = {"math500": [{"problem": f"say {i}", "answer": str(i), "level": 1 + i % 3, "index": i} for i in range(6)],
               "aime24": [{"problem": f"say {i}", "answer": str(i), "level": None, "index": i} for i in range(1, 4)]}
    args = (benches, ["standard", "ellipsis"], 4, SamplingSettings(max_tokens=16))

    def run(out, backend):  # type: ignore[no-untyped-def]
        return asyncio.run(run_resumable(backend, *args, out, exact_grade, concurrency=3, progress=False))

    whole = run(tmp_path / "a", _FakeBackend())
    with pytest.raises(RuntimeError, match="killed"):
        run(tmp_path / "b", _FakeBackend(fail_after=30))
    kept = sum(len(p.read_text().splitlines()) - 1 for p in (tmp_path / "b" / "samples").glob("*.jsonl"))
    assert 0 < kept <= 30
    again = _FakeBackend()
    resumed = run(tmp_path / "b", again)
    assert again.calls == 72 - kept and resumed == whole
    with pytest.raises(SettingsMismatch, match="top_p"):
        asyncio.run(run_resumable(_FakeBackend(), benches, ["standard"], 4, SamplingSettings(max_tokens=16, top_p=0.5), tmp_path / "b",
                                  exact_grade, progress=False))
