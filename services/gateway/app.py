"""The gateway's HTTP API: ``POST /generate``, the OpenAI-compatible ``/v1`` endpoints, and
``/health``, ``/ready``, ``/metrics``.

Every refusal is a 4xx with an OpenAI-style JSON error (``{"error": {"message", "type", "param",
"code"}}``): bad JSON or fields (400), a missing or wrong API key (401), an unknown model (404),
a body over the size limit (413), too many requests in flight (429), a model still loading (503).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from autothink.prompting import build_prompt, chat_prompt
from services.gateway.config import GatewayConfig
from services.gateway.generation import ChoiceDelta, ChoiceResult, Plan, Sampling, generate_choice, merge
from services.gateway.reasoning import route, think_probability
from services.gateway.schemas import STRATEGY, ChatCompletionRequest, CompletionRequest, GenerateRequest, Message, Mode

log = logging.getLogger("autothink.gateway")


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.requests = Counter("autothink_gateway_requests_total", "Requests answered", ["endpoint", "status"], registry=registry)
        self.latency = Histogram(
            "autothink_gateway_request_seconds", "Time to the complete response", ["endpoint"], registry=registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
        )
        self.tokens = Counter("autothink_gateway_tokens_total", "Tokens by kind", ["kind"], registry=registry)
        self.choices = Counter("autothink_gateway_choices_total", "Choices by the mode the model used", ["mode"], registry=registry)
        self.think_rate = Gauge("autothink_gateway_think_rate", "Share of choices (since start) in which the model thought", registry=registry)
        self.in_flight = Gauge("autothink_gateway_in_flight", "Requests being served", registry=registry)
        self.version = Gauge("autothink_gateway_policy_version", "Policy version being served", registry=registry)
        self.budget_forced = Counter("autothink_gateway_budget_forced_total", "Choices whose reasoning the thinking budget cut", registry=registry)
        self._thought = 0
        self._total = 0

    def record(self, prompt_tokens: int, results: list[ChoiceResult]) -> None:
        self.tokens.labels("prompt").inc(prompt_tokens)
        for r in results:
            self.tokens.labels("reasoning").inc(r.reasoning_tokens)
            self.tokens.labels("answer").inc(r.answer_tokens)
            self.choices.labels("think" if r.thought else "no_think").inc()
            self.budget_forced.inc(r.budget_forced)
            self._thought += r.thought
            self._total += 1
        if self._total:
            self.think_rate.set(self._thought / self._total)


@dataclass(frozen=True)
class Job:
    """One request, resolved: the prompt's token ids and what to do with them."""

    request_id: str
    prompt_ids: list[int]
    sampling: Sampling
    n: int
    starts_in_reasoning: bool
    probe: bool  # measure think_probability (mode=auto)
    threshold: float | None = None
    thinking_budget: int | None = None


@dataclass(frozen=True)
class Finished:
    """The last event of a job."""

    results: list[ChoiceResult]
    think_probability: float | None
    policy_version: int
    route: str | None


async def execute(engine: Any, job: Job) -> AsyncIterator[ChoiceDelta | Finished]:
    """Runs a job's choices under the version gate; the think-probability probe runs beside them
    (or first, when a threshold routes on it)."""
    async with engine.gate.request():
        version = engine.policy_version
        p: float | None = None
        chosen = "sample"
        probe_task = None
        if job.probe:
            probe = engine.next_token_logprob(job.prompt_ids, engine.close_id, f"{job.request_id}-probe")
            if job.threshold is not None:
                p = think_probability(await probe)
                chosen = route(p, job.threshold)
            else:
                probe_task = asyncio.ensure_future(probe)
        plans = [
            Plan(
                job.prompt_ids,
                replace(job.sampling, seed=None if job.sampling.seed is None else job.sampling.seed + i),
                job.starts_in_reasoning, chosen, job.thinking_budget,  # type: ignore[arg-type]
            )
            for i in range(job.n)
        ]
        results: list[ChoiceResult] = []
        try:
            async for ev in merge([generate_choice(engine, plan, i, job.request_id) for i, plan in enumerate(plans)]):
                if isinstance(ev, ChoiceResult):
                    results.append(ev)
                else:
                    yield ev
            if probe_task is not None:
                p = think_probability(await probe_task)
        finally:
            if probe_task is not None and not probe_task.done():
                probe_task.cancel()
        results.sort(key=lambda r: r.index)
        yield Finished(results, p, version, None if chosen == "sample" else chosen)


class Slots:
    """Admission control: at most ``limit`` requests in flight; the rest get 429 at once."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0

    def acquire(self) -> None:
        if self.used >= self.limit:
            raise ApiError(429, f"the gateway is serving {self.used} requests, its limit; retry shortly", "rate_limit_error", code="overloaded")
        self.used += 1

    def release(self) -> None:
        self.used -= 1


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets 413 before any handler reads it."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        too_big = ApiError(413, f"request body is larger than {self.limit} bytes", code="request_too_large")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await JSONResponse(too_big.body(), status_code=413)(scope, receive, send)
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge()
            return message

        try:
            await self.app(scope, limited, send)
        except _BodyTooLarge:
            await JSONResponse(too_big.body(), status_code=413)(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def _usage(prompt_tokens: int, results: list[ChoiceResult]) -> dict[str, Any]:
    reasoning = sum(r.reasoning_tokens for r in results)
    completion = sum(r.completion_tokens for r in results)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }


def create_app(cfg: GatewayConfig, engine: Any, registry: CollectorRegistry | None = None) -> FastAPI:
    """The FastAPI app around ``engine`` (a :class:`services.gateway.engine.VLLMEngine`, or any
    object with the same members); the engine starts in the background when the app starts."""
    registry = registry or CollectorRegistry()
    metrics = GatewayMetrics(registry)
    slots = Slots(cfg.max_concurrency)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(engine.start())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            await asyncio.to_thread(engine.close)

    app = FastAPI(
        title="AutoThink gateway",
        version="1",
        description="Serves an adaptive-thinking R1-style model: POST /generate and an OpenAI-compatible /v1 API.",
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimit, limit=cfg.max_request_bytes)

    # -- errors: always JSON, always the same shape
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, e: ApiError) -> JSONResponse:
        headers = {"Retry-After": "1"} if e.status == 429 else ({"WWW-Authenticate": "Bearer"} if e.status == 401 else None)
        return JSONResponse(e.body(), status_code=e.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        problems = []
        param = None
        for err in e.errors():
            loc = [str(x) for x in err.get("loc", ()) if x != "body"]
            param = param or (".".join(loc) or None)
            problems.append(f"{'.'.join(loc) or 'body'}: {err.get('msg')}")
        return JSONResponse(ApiError(400, "; ".join(problems) or "invalid request", param=param).body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return JSONResponse(ApiError(e.status_code, str(e.detail), code=code).body(), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def _crash(_: Request, e: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return JSONResponse(ApiError(500, f"internal error: {type(e).__name__}", "server_error").body(), status_code=500)

    @app.middleware("http")
    async def _count(request: Request, call_next: Callable) -> Response:
        t0 = time.perf_counter()
        response = await call_next(request)
        path = request.url.path
        if path in ("/generate", "/v1/chat/completions", "/v1/completions", "/v1/models"):
            metrics.requests.labels(path, str(response.status_code)).inc()
            if response.status_code < 400 and not isinstance(response, StreamingResponse):
                metrics.latency.labels(path).observe(time.perf_counter() - t0)
        return response

    # -- guards
    def authorize(request: Request) -> None:
        if not cfg.api_key:
            return
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), cfg.api_key.encode()):
            raise ApiError(401, "missing or wrong API key (send Authorization: Bearer KEY)", "authentication_error", code="invalid_api_key")

    def need_engine() -> None:
        if not engine.ready:
            why = f": {engine.error}" if engine.error else "; retry when /ready answers 200"
            raise ApiError(503, f"the model is not ready{why}", "server_error", code="not_ready")

    def check_model(name: str | None) -> None:
        if name is not None and name != cfg.served_model_name:
            raise ApiError(404, f"model {name!r} does not exist; this gateway serves {cfg.served_model_name!r}", param="model", code="model_not_found")

    def resolve_job(prompt_text: str, req: Any, n: int, max_tokens: int | None, default_max: int | None, *,
                    starts_in_reasoning: bool, probe: bool, threshold: float | None = None, budget: int | None = None) -> Job:
        if n > cfg.max_n:
            raise ApiError(400, f"n={n} is above this gateway's limit of {cfg.max_n}", param="n")
        ids = engine.encode(prompt_text)
        room = engine.max_model_len - len(ids)
        if room < 1:
            raise ApiError(400, f"the prompt is {len(ids)} tokens; the model's context is {engine.max_model_len}", param="messages", code="context_length_exceeded")
        if max_tokens is not None and max_tokens > room:
            raise ApiError(
                400, f"max_tokens={max_tokens} does not fit: the prompt is {len(ids)} tokens and the context {engine.max_model_len}"
                f" (at most {room})", param="max_tokens", code="context_length_exceeded",
            )
        limit = max_tokens if max_tokens is not None else min(room, default_max or room)
        sampling = Sampling(max_tokens=limit, temperature=req.temperature, top_p=req.top_p, seed=req.seed)
        return Job(f"{uuid.uuid4().hex[:16]}", ids, sampling, n, starts_in_reasoning, probe, threshold, budget)

    def render(mode: Mode, prompt: str | None, messages: list[Message] | None, add_instruction: bool = True) -> str:
        strategy = STRATEGY[mode]
        if prompt is not None and add_instruction:
            return build_prompt(prompt, strategy, engine.tokenizer)  # type: ignore[arg-type]
        conv = [m.model_dump() for m in messages] if messages is not None else [{"role": "user", "content": prompt}]
        try:
            return chat_prompt(conv, strategy, engine.tokenizer)  # type: ignore[arg-type]
        except Exception as e:  # the model's template refused the conversation
            raise ApiError(400, f"the chat template cannot render these messages: {e}", param="messages") from None

    async def collect(job: Job) -> Finished:
        final = None
        async for ev in execute(engine, job):
            if isinstance(ev, Finished):
                final = ev
        assert final is not None
        metrics.record(len(job.prompt_ids), final.results)
        return final

    def streaming(events: AsyncIterator[str]) -> StreamingResponse:
        async def guarded() -> AsyncIterator[str]:
            try:
                async for chunk in events:
                    yield chunk
            except ApiError as e:
                yield _sse(e.body())
                yield "data: [DONE]\n\n"
            except Exception as e:
                log.exception("stream failed")
                yield _sse(ApiError(500, f"generation failed: {type(e).__name__}", "server_error").body())
                yield "data: [DONE]\n\n"
            finally:
                slots.release()
                metrics.in_flight.set(slots.used)

        return StreamingResponse(guarded(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def admitted(run: Callable[[], Any], stream: bool) -> Any:
        """Hold a slot for the whole request (a stream releases it when it ends)."""
        need_engine()
        slots.acquire()
        metrics.in_flight.set(slots.used)
        released = False
        try:
            result = await run()
            if stream:
                released = True  # the stream's generator releases it
            return result
        except ValueError as e:  # the engine refused a parameter
            raise ApiError(400, str(e)) from None
        finally:
            if not released:
                slots.release()
                metrics.in_flight.set(slots.used)

    # -- ops
    @app.get("/health", tags=["ops"])
    async def health() -> dict[str, Any]:
        """Liveness: 200 while the process serves HTTP, whatever the engine is doing."""
        return {"status": "ok", "engine": "ready" if engine.ready else ("failed" if engine.error else "starting")}

    @app.get("/ready", tags=["ops"])
    async def ready() -> JSONResponse:
        """Readiness: 200 once the model is loaded, else 503."""
        metrics.version.set(engine.policy_version)
        body = {"ready": engine.ready, "model": cfg.served_model_name, "policy_version": engine.policy_version, "error": engine.error}
        return JSONResponse(body, status_code=200 if engine.ready else 503)

    @app.get("/metrics", tags=["ops"])
    async def prometheus() -> Response:
        metrics.version.set(engine.policy_version)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    # -- POST /generate
    def generate_body(job: Job, req: GenerateRequest, fin: Finished, t0: float) -> dict[str, Any]:
        choices = [
            {
                "index": r.index, "text": r.answer, "reasoning": r.reasoning, "answer": r.boxed, "thought": r.thought,
                "finish_reason": r.finish_reason, "budget_forced": r.budget_forced,
                "usage": {"reasoning_tokens": r.reasoning_tokens, "answer_tokens": r.answer_tokens, "completion_tokens": r.completion_tokens},
            }
            for r in fin.results
        ]
        usage = _usage(len(job.prompt_ids), fin.results)
        first = choices[0]
        return {
            "id": f"gen-{job.request_id}", "object": "generation", "model": cfg.served_model_name, "mode": req.mode,
            "text": first["text"], "reasoning": first["reasoning"], "answer": first["answer"], "thought": first["thought"],
            "finish_reason": first["finish_reason"],
            "think_probability": fin.think_probability, "routed_to": fin.route, "policy_version": fin.policy_version,
            "usage": {
                "prompt_tokens": usage["prompt_tokens"],
                "reasoning_tokens": usage["completion_tokens_details"]["reasoning_tokens"],
                "answer_tokens": usage["completion_tokens"] - usage["completion_tokens_details"]["reasoning_tokens"],
                "completion_tokens": usage["completion_tokens"], "total_tokens": usage["total_tokens"],
            },
            "choices": choices,
            "latency_ms": round((time.perf_counter() - t0) * 1000, 1),
        }

    @app.post("/generate", tags=["adaptive"])
    async def generate(req: GenerateRequest, request: Request) -> Any:
        """Generate under a mode: `auto` (the model decides whether to think), `think` or `no_think`.

        Returns the answer text, the reasoning separately, the boxed answer, whether the model
        thought, `think_probability` (auto mode), usage split into prompt/reasoning/answer tokens,
        the policy version and the latency.  With `stream: true`, server-sent events: `delta`
        events, then one `result` event shaped like the non-streaming response, then `[DONE]`.
        """
        t0 = time.perf_counter()
        authorize(request)

        async def run() -> Any:
            job = resolve_job(
                render(req.mode, req.prompt, req.messages, req.add_instruction), req, req.n, req.max_tokens, cfg.default_max_tokens,
                starts_in_reasoning=req.mode != "no_think", probe=req.mode == "auto", threshold=req.think_threshold,
                budget=req.thinking_budget,
            )
            if not req.stream:
                return generate_body(job, req, await collect(job), t0)

            async def events() -> AsyncIterator[str]:
                async for ev in execute(engine, job):
                    if isinstance(ev, Finished):
                        metrics.record(len(job.prompt_ids), ev.results)
                        yield _sse({"type": "result", **generate_body(job, req, ev, t0)})
                    else:
                        yield _sse({"type": "delta", "index": ev.index, "reasoning": ev.reasoning, "text": ev.answer})
                yield "data: [DONE]\n\n"

            return streaming(events())

        return await admitted(run, req.stream)

    # -- OpenAI
    @app.get("/v1/models", tags=["openai"])
    async def models(request: Request) -> dict[str, Any]:
        authorize(request)
        return {"object": "list", "data": [{
            "id": cfg.served_model_name, "object": "model", "created": int(time.time()), "owned_by": "autothink",
            "root": cfg.model, "max_model_len": engine.max_model_len,
        }]}

    @app.post("/v1/chat/completions", tags=["openai"])
    async def chat(req: ChatCompletionRequest, request: Request) -> Any:
        """OpenAI chat completions; the reasoning comes back as `reasoning_content`.  Mode:
        `chat_template_kwargs.thinking` ("auto" | "on" | "off"), `reasoning_effort: "none"`, or `mode`."""
        authorize(request)
        check_model(req.model)
        try:
            mode = req.resolved_mode()
        except ValueError as e:
            raise ApiError(400, str(e), param="chat_template_kwargs") from None
        if req.think_threshold is not None and mode != "auto":
            raise ApiError(400, "think_threshold applies to mode=auto only", param="think_threshold")
        created = int(time.time())

        async def run() -> Any:
            job = resolve_job(
                render(mode, None, req.messages), req, req.n, req.max_completion_tokens or req.max_tokens, None,
                starts_in_reasoning=mode != "no_think", probe=mode == "auto", threshold=req.think_threshold, budget=req.thinking_budget,
            )
            head = {"id": f"chatcmpl-{job.request_id}", "created": created, "model": cfg.served_model_name}
            if not req.stream:
                fin = await collect(job)
                return {
                    **head, "object": "chat.completion", "system_fingerprint": f"policy-v{fin.policy_version}",
                    "choices": [{
                        "index": r.index, "logprobs": None, "finish_reason": r.finish_reason,
                        "message": {"role": "assistant", "content": r.answer, "reasoning_content": r.reasoning or None},
                    } for r in fin.results],
                    "usage": _usage(len(job.prompt_ids), fin.results),
                    "think_probability": fin.think_probability,
                }

            def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
                return _sse({**head, "object": "chat.completion.chunk", "choices": choices, **extra})

            async def events() -> AsyncIterator[str]:
                for i in range(req.n):
                    yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}])
                async for ev in execute(engine, job):
                    if isinstance(ev, Finished):
                        metrics.record(len(job.prompt_ids), ev.results)
                        for r in ev.results:
                            yield chunk([{"index": r.index, "delta": {}, "logprobs": None, "finish_reason": r.finish_reason}],
                                        system_fingerprint=f"policy-v{ev.policy_version}")
                        if req.stream_options and req.stream_options.include_usage:
                            yield chunk([], usage=_usage(len(job.prompt_ids), ev.results))
                        continue
                    delta: dict[str, str] = {}
                    if ev.reasoning:
                        delta["reasoning_content"] = ev.reasoning
                    if ev.answer:
                        delta["content"] = ev.answer
                    if delta:
                        yield chunk([{"index": ev.index, "delta": delta, "logprobs": None, "finish_reason": None}])
                yield "data: [DONE]\n\n"

            return streaming(events())

        return await admitted(run, req.stream)

    @app.post("/v1/completions", tags=["openai"])
    async def completions(req: CompletionRequest, request: Request) -> Any:
        """OpenAI text completions: the prompt is sent as is; no mode and no reasoning split."""
        authorize(request)
        check_model(req.model)
        created = int(time.time())

        async def run() -> Any:
            job = resolve_job(req.prompt, req, req.n, req.max_tokens, None, starts_in_reasoning=False, probe=False)  # type: ignore[arg-type]
            head = {"id": f"cmpl-{job.request_id}", "created": created, "model": cfg.served_model_name}
            if not req.stream:
                fin = await collect(job)
                return {
                    **head, "object": "text_completion",
                    "choices": [{"index": r.index, "text": r.text, "logprobs": None, "finish_reason": r.finish_reason} for r in fin.results],
                    "usage": _usage(len(job.prompt_ids), fin.results),
                }

            async def events() -> AsyncIterator[str]:
                async for ev in execute(engine, job):
                    if isinstance(ev, Finished):
                        metrics.record(len(job.prompt_ids), ev.results)
                        for r in ev.results:
                            yield _sse({**head, "object": "text_completion", "choices": [
                                {"index": r.index, "text": "", "logprobs": None, "finish_reason": r.finish_reason}]})
                        if req.stream_options and req.stream_options.include_usage:
                            yield _sse({**head, "object": "text_completion", "choices": [], "usage": _usage(len(job.prompt_ids), ev.results)})
                    elif ev.raw:
                        yield _sse({**head, "object": "text_completion", "choices": [
                            {"index": ev.index, "text": ev.raw, "logprobs": None, "finish_reason": None}]})
                yield "data: [DONE]\n\n"

            return streaming(events())

        return await admitted(run, req.stream)

    app.state.metrics = metrics
    app.state.slots = slots
    return app
