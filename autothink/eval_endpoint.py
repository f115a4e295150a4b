"""Sampling a model that runs elsewhere, behind an OpenAI-compatible HTTP API.

Two ways to ask for one prompting strategy, chosen by what the server offers:

* ``chat``: this project's gateway (``autothink gateway`` / ``autothink up``).  The user turn is
  sent as a chat message and the strategy goes through the server's own control,
  ``chat_template_kwargs.thinking`` (``on`` = standard prompt, ``off`` = no-thinking prompt,
  ``auto`` = ellipsis prompt).  The reply's ``reasoning_content`` and ``content`` are joined back
  into the raw response the grader and the mode detection expect.
* ``completions``: any plain server (``vllm serve``, SGLang, ...).  The prompt is rendered here in
  the DeepSeek-R1 format (:func:`autothink.prompting.build_prompt`) and sent as a raw
  ``/v1/completions`` request, with ``add_special_tokens: false`` so the server adds no second BOS.

``auto`` picks ``chat`` when ``/v1/models`` says the model is owned by ``autothink``.  One sample is
one request (``n=1``) so that each sample's token count is known and each carries its own seed.
Requests run with bounded concurrency; connection errors, timeouts, 408, 429 and 5xx are retried
with exponential back-off (``Retry-After`` honoured); any other refusal stops the evaluation with
the server's message.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any, Literal

from autothink.prompting import INSTRUCTION_SUFFIX, THINK_CLOSE, Strategy, build_prompt

Api = Literal["auto", "chat", "completions"]
#: chat_template_kwargs.thinking for each prompting strategy (the gateway's chat request model)
THINKING = {"standard": "on", "no_think": "off", "ellipsis": "auto"}
RETRY_STATUS = {408, 429, 500, 502, 503, 504}


class EndpointError(RuntimeError):
    """The server refused a request in a way a retry will not fix, or kept failing."""


@dataclass(frozen=True)
class Completion:
    text: str  # the raw response, as parse_response expects it under the strategy
    num_tokens: int
    finish_reason: str | None = None


def raw_from_chat(reasoning: str | None, content: str | None, strategy: Strategy) -> str:
    """The raw response behind a chat reply split into ``reasoning_content`` and ``content``.

    >>> raw_from_chat("add 2 and 3", "\\\\boxed{5}", "ellipsis")
    'add 2 and 3\\n</think>\\n\\n\\\\boxed{5}'
    >>> raw_from_chat(None, "\\\\boxed{5}", "ellipsis")  # the model closed </think> at once: no-think
    '</think>\\n\\n\\\\boxed{5}'
    >>> raw_from_chat("still thinking when the tokens ran out", "", "standard")  # never closed: a format error
    'still thinking when the tokens ran out'
    >>> raw_from_chat(None, "\\\\boxed{5}", "no_think")  # the prompt closed the think block already
    '\\\\boxed{5}'
    """
    reasoning, content = (reasoning or "").strip(), (content or "").strip()
    if strategy == "no_think":
        return content
    if not content and reasoning:
        return reasoning
    return (reasoning + "\n" if reasoning else "") + THINK_CLOSE + "\n\n" + content


class EndpointBackend:
    """Samples through an OpenAI-compatible server; use as an async context manager."""

    def __init__(self, url: str, api_key: str = "", model: str | None = None, api: Api = "auto",
                 concurrency: int = 32, retries: int = 6, timeout_s: float = 3600.0, backoff_s: float = 1.0, transport: Any = None):
        if concurrency < 1 or retries < 0:
            raise ValueError("concurrency must be >= 1 and retries >= 0")
        self.base = url.rstrip("/")
        if self.base.endswith("/v1"):
            self.base = self.base[: -len("/v1")]
        self.api_key, self.model, self.api = api_key, model, api
        self.concurrency, self.retries, self.timeout_s, self.backoff_s = concurrency, retries, timeout_s, backoff_s
        self.transport = transport  # an httpx transport (tests script a server with httpx.MockTransport)
        self.client: Any = None
        self._sem: asyncio.Semaphore | None = None
        self.retried = 0

    @property
    def identity(self) -> str:
        return f"{self.base} model={self.model} api={self.api}"

    async def __aenter__(self) -> EndpointBackend:
        import httpx

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self.client = httpx.AsyncClient(
            headers=headers, transport=self.transport, timeout=httpx.Timeout(self.timeout_s, connect=30.0),
            limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency),
        )
        self._sem = asyncio.Semaphore(self.concurrency)
        models = await self._request("GET", "/v1/models")
        data = models.get("data") or []
        if not data:
            raise EndpointError(f"{self.base}/v1/models lists no model")
        entry = next((m for m in data if m.get("id") == self.model), None) if self.model else data[0]
        if entry is None:
            raise EndpointError(f"{self.base} serves {[m.get('id') for m in data]}, not {self.model!r}")
        self.model = entry["id"]
        if self.api == "auto":
            self.api = "chat" if entry.get("owned_by") == "autothink" else "completions"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        import httpx

        assert self.client is not None and self._sem is not None
        last = ""
        for attempt in range(self.retries + 1):
            wait = min(30.0, self.backoff_s * 2**attempt) * (0.5 + random.random())
            try:
                async with self._sem:
                    r = await self.client.request(method, self.base + path, json=body)
                if r.status_code == 200:
                    return r.json()
                last = f"{r.status_code}: {r.text[:500]}"
                if r.status_code not in RETRY_STATUS:
                    raise EndpointError(f"{method} {self.base}{path} was refused ({last})")
                after = r.headers.get("retry-after", "")
                if after.replace(".", "", 1).isdigit():
                    wait = max(wait, float(after))
            except (httpx.TransportError, httpx.TimeoutException) as e:
                last = f"{type(e).__name__}: {e}"
            if attempt < self.retries:
                self.retried += 1
                await asyncio.sleep(wait)
        raise EndpointError(f"{method} {self.base}{path} failed {self.retries + 1} times (last: {last})")

    async def complete(self, problem: str, strategy: Strategy, seed: int, temperature: float, top_p: float, max_tokens: int) -> Completion:
        common = {"model": self.model, "n": 1, "temperature": temperature, "top_p": top_p, "max_tokens": max_tokens, "seed": seed}
        if self.api == "chat":
            body = {**common, "messages": [{"role": "user", "content": problem.rstrip() + INSTRUCTION_SUFFIX}],
                    "chat_template_kwargs": {"thinking": THINKING[strategy]}}
            out = await self._request("POST", "/v1/chat/completions", body)
            choice = out["choices"][0]
            msg = choice.get("message") or {}
            text = raw_from_chat(msg.get("reasoning_content") or msg.get("reasoning"), msg.get("content"), strategy)
        else:
            body = {**common, "prompt": build_prompt(problem, strategy), "add_special_tokens": False}
            out = await self._request("POST", "/v1/completions", body)
            choice = out["choices"][0]
            text = choice.get("text") or ""
        tokens = int((out.get("usage") or {}).get("completion_tokens", 0))
        return Completion(text, tokens, choice.get("finish_reason"))
