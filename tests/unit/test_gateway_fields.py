"""Issue #39 on the gateway, against the scripted in-process model of test_gateway.py: every request
field is honoured, refused (400 naming it) or reported (``x-autothink-ignored-fields``, logged
once); the request shapes of the OpenAI client, lm-eval and guidellm; and the lower items — message
count, chunked and slow bodies, the docs behind the key, no model path in /v1/models, secrets out
of --print-config and ``ps``, and a refused follow token that /ready and /health report.

The real engine and a real weight service: tests/integration/test_gateway_fields.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time

import httpx
import pytest

from autothink import weights as W
from services.gateway import routes
from services.gateway.app import create_app
from services.gateway.config import GatewayConfig
from services.gateway.generation import Plan, Sampling
from services.gateway.protocol import UNSUPPORTED, ChatCompletionRequest
from services.gateway.server import protocol_with_header_timeout
from tests.unit.test_gateway import CLOSE, CharTokenizer, ScriptedModel, _run, _server, _wait_for

MSG = [{"role": "user", "content": "What is 3+4?"}]


def _client(engine: ScriptedModel | None = None, **cfg) -> tuple[ScriptedModel, httpx.AsyncClient]:
    model = engine or ScriptedModel()
    app = create_app(GatewayConfig(**cfg), model)
    return model, httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")


def _post(client: httpx.AsyncClient, url: str, body: dict, **kw) -> httpx.Response:
    async def go():
        async with client:
            return await client.post(url, json=body, **kw)

    return asyncio.run(go())


def _get(client: httpx.AsyncClient, url: str, **kw) -> httpx.Response:
    async def go():
        async with client:
            return await client.get(url, **kw)

    return asyncio.run(go())


# -- item 5: honoured


@pytest.mark.parametrize("url, body", [
    ("/v1/chat/completions", {"messages": MSG, "max_tokens": 64}),
    ("/v1/completions", {"prompt": "1+1", "max_tokens": 64}),
    ("/generate", {"prompt": "1+1", "max_tokens": 64, "mode": "think"}),
])
def test_vllm_sampling_extensions_reach_the_engine(url, body):
    """#39: ignore_eos and min_tokens were dropped without a word (a load test asking 64 tokens got 33)."""
    model, client = _client()
    extensions = {"ignore_eos": True, "min_tokens": 8, "stop_token_ids": [7, 9], "repetition_penalty": 1.1, "top_k": 5,
                  "min_p": 0.05, "seed": 3}
    r = _post(client, url, {**body, **extensions})
    assert r.status_code == 200, r.text
    assert "x-autothink-ignored-fields" not in r.headers
    first = model.calls[0]
    assert first.ignore_eos and first.min_tokens == 8 and first.seed == 3
    assert first.repetition_penalty == 1.1 and first.top_k == 5 and first.min_p == 0.05
    assert set(first.stop_token_ids) >= {7, 9}


def test_min_tokens_count_the_whole_choice_and_never_ban_the_close_of_a_budget():
    """vLLM's min_tokens bans every stop token of its call, so a budgeted reasoning call that still
    owes tokens runs just those without </think> as a stop token, and later calls owe the rest."""
    model = ScriptedModel(reasoning="3+4=7 because 3+4 is seven")
    s = Sampling(max_tokens=60, min_tokens=12, stop_token_ids=(77,))
    _, r = asyncio.run(_run(model, Plan([1, 2], s, thinking_budget=20)))
    owed = 12
    for call in model.calls:
        assert call.min_tokens == min(owed, call.max_tokens)
        if call.min_tokens:
            assert CLOSE not in call.stop_token_ids
        assert 77 in call.stop_token_ids  # the client's own stop token stays in every call
        owed = max(0, owed - call.max_tokens)
    assert model.calls[0].min_tokens == 12 and model.calls[0].max_tokens == 12
    assert CLOSE in model.calls[1].stop_token_ids and model.calls[1].min_tokens == 0
    assert r.reasoning_tokens <= 20 and r.completion_tokens >= 12


def test_controls_the_first_step_does_not_model_turn_off_think_probability():
    model, client = _client()
    r = _post(client, "/generate", {"prompt": "1+1", "repetition_penalty": 1.2, "max_tokens": 20})
    assert r.status_code == 200 and r.json()["think_probability"] is None
    assert not model.calls[0].probe_close
    _, client = _client()
    r = _post(client, "/v1/chat/completions", {"messages": MSG, "top_k": 3, "think_threshold": 0.5})
    assert r.status_code == 400 and "think_threshold" in r.json()["error"]["message"]


def test_stop_token_ids_outside_the_vocabulary_are_400():
    model = ScriptedModel()
    model.vocab_size = 2000
    _, client = _client(model)
    r = _post(client, "/v1/completions", {"prompt": "1+1", "stop_token_ids": [5, 2000]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stop_token_ids"
    r = _post(_client()[1], "/v1/completions", {"prompt": "1+1", "min_tokens": 20, "max_tokens": 10})
    assert r.status_code == 400 and "min_tokens" in r.json()["error"]["message"]


# -- item 5: refused


@pytest.mark.parametrize("field, value", [("frequency_penalty", 0.5), ("presence_penalty", -1), ("logit_bias", {"5": 10}),
                                          ("echo", True), ("response_format", {"type": "json_object"}), ("best_of", 3),
                                          ("tools", [{"type": "function", "function": {"name": "f"}}]), ("use_beam_search", True)])
def test_a_field_that_would_change_the_result_is_a_400_naming_it(field, value):
    for url, body in (("/v1/chat/completions", {"messages": MSG}), ("/v1/completions", {"prompt": "1+1"})):
        model, client = _client()
        r = _post(client, url, {**body, field: value})
        assert r.status_code == 400, (url, field, r.text)
        err = r.json()["error"]
        assert err["param"] == field and field in err["message"] and err["code"] == "unsupported_parameter"
        assert model.calls == []


def test_no_op_values_of_unsupported_fields_are_accepted_and_reported():
    """Clients that send every default (frequency_penalty 0, echo false) are not refused."""
    model, client = _client()
    r = _post(client, "/v1/chat/completions", {"messages": MSG, "frequency_penalty": 0, "presence_penalty": 0.0, "logit_bias": {},
                                                "echo": False, "tool_choice": "none", "response_format": {"type": "text"}})
    assert r.status_code == 200, r.text
    assert r.headers["x-autothink-ignored-fields"] == "echo, frequency_penalty, logit_bias, presence_penalty, response_format, tool_choice"
    assert {name for name, ok in UNSUPPORTED.items() if ok(None)} == set(UNSUPPORTED)  # null is every field's no-op


# -- item 5: ignored, and said so


def test_other_fields_are_listed_in_a_header_and_logged_once(caplog, monkeypatch):
    monkeypatch.setattr(routes, "_logged_ignored", set())
    caplog.set_level(logging.WARNING, logger="autothink.gateway")
    body = {"messages": [{"role": "user", "content": "q", "name": "ann"}], "user": "u-1", "metadata": {"k": "v"},
            "max_tokens": 8, "temprature": 0.1, "stream_options": {"include_usage": True, "continuous_usage_stats": True},
            "chat_template_kwargs": {"add_generation_prompt": True}}
    for stream in (False, True):
        _, client = _client()
        r = _post(client, "/v1/chat/completions", {**body, "stream": stream})
        assert r.status_code == 200, r.text
        assert r.headers["x-autothink-ignored-fields"] == (
            "chat_template_kwargs.add_generation_prompt, messages.name, metadata, stream_options.continuous_usage_stats, temprature, user")
    logged = [rec.getMessage() for rec in caplog.records if "does not use" in rec.getMessage()]
    assert sum("temprature" in m for m in logged) == 1  # once per name, not per request
    _, client = _client()
    r = _post(client, "/v1/completions", {"prompt": "1+1", "max_tokens": 4, "user": "u-1", "suffix": ""})
    assert r.status_code == 200 and r.headers["x-autothink-ignored-fields"] == "suffix, user"


def test_the_header_and_the_log_stay_bounded_whatever_names_a_client_sends(caplog, monkeypatch):
    monkeypatch.setattr(routes, "_logged_ignored", set())
    caplog.set_level(logging.WARNING, logger="autothink.gateway")
    names = {f"f{i}": 1 for i in range(300)} | {"evil\r\nx-injected: 1": 1, "é": 1}
    _, client = _client()
    r = _post(client, "/v1/chat/completions", {"messages": MSG, "max_tokens": 4, **names})
    assert r.status_code == 200 and "x-injected" not in r.headers
    shown = r.headers["x-autothink-ignored-fields"].split(", ")
    assert len(shown) == 33 and shown[-1] == "(+270 more)"
    assert all(len(rec.getMessage()) < 4000 for rec in caplog.records)
    assert len(routes._logged_ignored) == 302
    _, client = _client()
    assert _post(client, "/v1/chat/completions", {"messages": MSG, "max_tokens": 4, "another": 1}).status_code == 200
    assert "another" not in routes._logged_ignored  # past the cap nothing more is remembered


def test_generate_still_refuses_unknown_fields():
    _, client = _client()
    r = _post(client, "/generate", {"prompt": "1+1", "ignore_eos": True, "max_tokns": 5})
    assert r.status_code == 400 and "max_tokns" in r.json()["error"]["message"]


# -- the clients' request shapes


def test_openai_client_shapes():
    from openai import OpenAI

    model = ScriptedModel()
    app = create_app(GatewayConfig(api_key="k"), model)
    with _server(app) as (base, _):
        client = OpenAI(base_url=f"{base}/v1", api_key="k", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="autothink", messages=MSG, max_completion_tokens=40, temperature=0.6, top_p=0.95, n=2, seed=1, stop=["\n\n\n"],
            logprobs=True, top_logprobs=2, user="someone", metadata={"run": "x"}, store=False, parallel_tool_calls=True,
            service_tier="auto", frequency_penalty=0, presence_penalty=0, reasoning_effort="low",
            extra_body={"ignore_eos": False, "min_tokens": 1, "chat_template_kwargs": {"thinking": "on"}})
        resp = raw.parse()
        assert len(resp.choices) == 2 and resp.usage.completion_tokens > 0
        assert raw.headers["x-autothink-ignored-fields"] == (
            "frequency_penalty, metadata, parallel_tool_calls, presence_penalty, service_tier, store, user")
        chunks = list(client.chat.completions.create(model="autothink", messages=MSG, max_tokens=20, stream=True,
                                                     stream_options={"include_usage": True}))
        assert chunks[-1].usage is not None
        text = client.completions.create(model="autothink", prompt="1+1", max_tokens=5, logprobs=1, echo=False, user="u")
        assert text.usage.completion_tokens <= 5
        from openai import BadRequestError

        with pytest.raises(BadRequestError, match="echo"):
            client.completions.create(model="autothink", prompt="1+1", max_tokens=1, logprobs=1, echo=True)


def test_lm_eval_and_guidellm_shapes():
    """lm-eval's local-completions / local-chat-completions generation bodies and guidellm's
    streaming chat body (which asks ignore_eos to get exactly the output length it plans)."""
    shapes = [
        ("/v1/completions", {"model": "autothink", "prompt": "1+1", "max_tokens": 16, "temperature": 0, "stop": ["\n\n"], "seed": 1234}),
        ("/v1/chat/completions", {"model": "autothink", "messages": MSG, "max_tokens": 16, "temperature": 0, "stop": ["<|im_end|>"],
                                  "seed": 1234}),
        ("/v1/chat/completions", {"model": "autothink", "messages": MSG, "stream": True, "stream_options": {"include_usage": True},
                                  "max_tokens": 32, "max_completion_tokens": 32, "stop": None, "ignore_eos": True}),
        ("/v1/completions", {"model": "autothink", "prompt": "1+1", "stream": True, "stream_options": {"include_usage": True},
                             "max_tokens": 32, "stop": None, "ignore_eos": True}),
    ]
    for url, body in shapes:
        model, client = _client()
        r = _post(client, url, body)
        assert r.status_code == 200, (url, r.text)
        assert "x-autothink-ignored-fields" not in r.headers, r.headers
        assert model.calls[0].ignore_eos == bool(body.get("ignore_eos"))
    # lm-eval's loglikelihood asks for the prompt's log-probs with echo: refused by name, not answered wrong
    r = _post(_client()[1], "/v1/completions", {"model": "autothink", "prompt": "1+1", "max_tokens": 1, "logprobs": 1, "echo": True,
                                                "temperature": 0, "seed": 1234})
    assert r.status_code == 400 and r.json()["error"]["param"] == "echo"


# -- lower items


class CountingTokenizer(CharTokenizer):
    def __init__(self):
        super().__init__()
        self.templates = 0

    def apply_chat_template(self, messages, **kw):
        self.templates += 1
        return super().apply_chat_template(messages, **kw)


def test_many_messages_are_refused_before_tokenising():
    """#39: 25,000 empty messages were tokenised for 1.1-1.4 s before the 400."""
    tok = CountingTokenizer()
    model = ScriptedModel(tokenizer=tok)
    model.max_model_len = 1000
    for count in (25_000, 1_500):  # the protocol's cap, then the context's (each message costs a token)
        _, client = _client(model)
        r = _post(client, "/v1/chat/completions", {"messages": [{"role": "user", "content": ""}] * count})
        assert r.status_code == 400, r.text
        assert "messages" in r.json()["error"]["message"]
    assert tok.templates == 0 and model.calls == []


def test_a_chunked_body_over_the_limit_is_413():
    """#39: a chunked 10 MB body got 400 (FastAPI read the error as a parse error)."""
    model = ScriptedModel()
    app = create_app(GatewayConfig(), model)

    def chunks():
        for _ in range(10):
            yield b"x" * (1 << 20)

    with _server(app) as (base, _):
        r = httpx.post(f"{base}/generate", content=chunks(), headers={"content-type": "application/json"}, timeout=60)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        r = httpx.post(f"{base}/generate", content=b"x" * (2 << 20), headers={"content-type": "application/json"}, timeout=60)
        assert r.status_code == 413
        assert httpx.post(f"{base}/generate", json={"prompt": "q", "max_tokens": 4}).status_code == 200
    assert model.calls[-1].max_tokens == 4 and len(model.calls) == 1


def test_a_body_that_trickles_is_cut_off():
    """#39: a body sent at one byte every 3 s stayed open for as long as it went on (> 42 s seen)."""
    app = create_app(GatewayConfig(), ScriptedModel())
    with _server(app, http=protocol_with_header_timeout(10.0, 1.0)) as (_, port):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
        s.settimeout(0.25)
        got = b""
        deadline = time.monotonic() + 30  # far above the 1 s limit: only a hung connection reaches it
        while time.monotonic() < deadline:
            try:
                s.sendall(b" ")
            except OSError:
                break
            try:
                piece = s.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
            if not piece:
                break
            got += piece
        s.close()
        assert got.startswith(b"HTTP/1.1 408"), got[:200]
        assert b"request_timeout" in got


def test_the_body_deadline_ends_with_the_body():
    """A whole body disarms the deadline: a generation that takes longer than it, a keep-alive
    connection's next requests and a body sent in two parts inside the limit are all answered."""
    model = ScriptedModel(reasoning="x" * 80)
    model.token_delay = 0.05  # ~4 s of generation: twice the body deadline
    app = create_app(GatewayConfig(), model)
    with _server(app, http=protocol_with_header_timeout(10.0, 2.0)) as (base, port):
        with httpx.Client(timeout=60) as c:
            for _ in range(2):
                r = c.post(f"{base}/generate", json={"prompt": "q", "mode": "think"})
                assert r.status_code == 200 and len(r.json()["reasoning"]) == 80
        body = json.dumps({"prompt": "q", "max_tokens": 2}).encode()
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
                  + str(len(body)).encode() + b"\r\n\r\n" + body[:5])
        time.sleep(0.2)  # well inside the 2 s deadline
        s.sendall(body[5:])
        s.settimeout(30)
        assert s.recv(100).startswith(b"HTTP/1.1 200")
        s.close()


def test_docs_and_schema_need_the_key():
    """#39: /docs, /redoc and /openapi.json answered without the key."""
    _, client = _client(api_key="k")
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert _get(_client(api_key="k")[1], path).status_code == 401, path
        assert _get(_client(api_key="k")[1], path, headers={"Authorization": "Bearer k"}).status_code == 200, path
        assert _get(_client()[1], path).status_code == 200, path  # no key set: open, as the API is
    schema = _get(client, "/openapi.json", headers={"Authorization": "Bearer k"}).json()
    assert "/v1/chat/completions" in schema["paths"] and "/docs" not in schema["paths"]


def test_models_list_does_not_show_the_model_path():
    _, client = _client(model="/secret/place/of/the/model", served_model_name="autothink")
    body = _get(client, "/v1/models").json()
    assert "/secret" not in json.dumps(body) and body["data"][0]["root"] == "autothink"


def test_print_config_hides_secrets_and_keys_can_come_from_files(tmp_path, capsys, monkeypatch):
    from services.gateway.__main__ import main

    key = tmp_path / "key"
    key.write_text("file-key\n")
    token = tmp_path / "token"
    token.write_text("file-token")
    monkeypatch.setenv("AUTOTHINK_GATEWAY_FOLLOW_WEIGHTS__TOKEN", "env-token")
    with pytest.raises(SystemExit) as e:
        main(["--api-key-file", str(key), "--follow", "10.0.0.1:50051", "--print-config"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    shown = json.loads(out)
    assert "file-key" not in out and "env-token" not in out
    assert shown["api_key"] == "***" and shown["follow_weights"] == {"address": "10.0.0.1:50051", "token": "***", "chunk_bytes": 4 << 20}
    with pytest.raises(SystemExit):
        main(["--follow", "h:1", "--follow-token-file", str(token), "--follow-token", "argv-token", "--print-config"])
    assert "argv-token" not in capsys.readouterr().out
    from services.gateway.__main__ import _with_flags
    import argparse

    cfg = _with_flags(GatewayConfig(), argparse.Namespace(**{k[2:].replace("-", "_"): None for k in (
        "--model", "--host", "--port", "--api-key", "--served-model-name", "--max-concurrency", "--max-model-len")},
        follow="h:1", api_key_file=str(key), follow_token=None, follow_token_file=str(token), allow_no_key=False))
    assert cfg.api_key == "file-key" and cfg.follow_weights.token == "file-token"
    with pytest.raises(SystemExit):
        main(["--help"])
    helptext = capsys.readouterr().out.replace("\n", " ")
    assert "AUTOTHINK_GATEWAY_API_KEY" in helptext and "--api-key-file" in helptext and "AUTOTHINK_GATEWAY_FOLLOW_WEIGHTS__TOKEN" in " ".join(helptext.split())


# -- M3: a refused follow token is reported


def test_ready_and_health_report_a_refused_follow_token():
    """M3: with a wrong token /ready said 200 and weights.healthy: true for over a minute."""
    from services.gateway.engine import VLLMEngine

    store = W.WeightStore()
    server = W.serve(store, "127.0.0.1:0", token="right", bulk=False)
    try:
        cfg = GatewayConfig(follow_weights={"address": f"127.0.0.1:{server.port}", "token": "wrong"})
        engine = VLLMEngine(cfg)  # not started: the follower alone, as start() makes it
        engine._warm = True
        engine._follower = W.WeightFollower(W.WeightClient(cfg.follow_weights.address, "wrong"), lambda v, t: None).start()
        engine.start = _no_start  # type: ignore[method-assign]
        engine.close = lambda: engine._follower.stop()  # type: ignore[method-assign]
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(cfg, engine)), base_url="http://gw")
        assert _wait_for(lambda: engine._follower.fatal is not None, timeout=20)
        ready = _get(client, "/ready")
        body = ready.json()
        assert ready.status_code == 503 and body["ready"] is False
        assert body["weights"]["healthy"] is False and body["weights"]["fatal"] is True
        assert "UNAUTHENTICATED" in body["weights"]["last_error"] and "refused the token" in body["error"]
        health = _get(httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(cfg, engine)), base_url="http://gw"), "/health")
        assert health.status_code == 503 and "token" in health.json()["error"]
        r = _post(httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(cfg, engine)), base_url="http://gw"),
                  "/generate", {"prompt": "q"})
        assert r.status_code == 503
        engine._follower.stop()
    finally:
        server.stop(0)


async def _no_start() -> None:
    return None


def test_chat_request_model_keeps_its_mode_table():
    assert ChatCompletionRequest(messages=MSG, chat_template_kwargs={"thinking": "off", "x": 1}).resolved_mode() == "no_think"


# -- issue #35: /v1/completions takes a list of prompts (lm-eval sends batches)


def test_completions_take_a_list_of_prompts_n_choices_each_in_order():
    model, client = _client()
    r = _post(client, "/v1/completions", {"prompt": ["1+1", "2+2", "3+3"], "n": 2, "max_tokens": 4, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [c["index"] for c in body["choices"]] == list(range(6))
    single = [_post(_client()[1], "/v1/completions", {"prompt": p, "max_tokens": 4, "temperature": 0}).json()
              for p in ("1+1", "2+2", "3+3")]
    # choice k*n + j answers prompt k: at temperature 0 the same text as that prompt sent alone
    assert [c["text"] for c in body["choices"]] == [s["choices"][0]["text"] for s in single for _ in range(2)]
    assert body["usage"]["prompt_tokens"] == sum(s["usage"]["prompt_tokens"] for s in single)
    assert body["usage"]["completion_tokens"] == 2 * sum(s["usage"]["completion_tokens"] for s in single)


@pytest.mark.parametrize("body, needle", [
    ({"prompt": ["1+1", "2+2"], "stream": True}, "a stream takes one prompt"),
    ({"prompt": []}, "empty list"),
    ({"prompt": ["1+1", ""]}, "prompt is empty"),
    ({"prompt": [[1, 2, 3]]}, "token ids are not taken"),
    ({"prompt": ["1+1"] * 9, "n": 2}, "9 prompts x n=2 is above this gateway's limit of 16"),
])
def test_completions_refuse_a_list_they_cannot_serve_with_a_400_saying_why(body, needle):
    model, client = _client()
    r = _post(client, "/v1/completions", {"max_tokens": 4, **body})
    assert r.status_code == 400 and needle in r.text, r.text
    assert model.calls == []  # refused before any generation
