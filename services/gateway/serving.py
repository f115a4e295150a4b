"""The work behind each endpoint (as vLLM's ``serving_chat`` / ``serving_completion``): turn a
validated request into token ids and choice plans, run the choices on the engine, and shape the
response — a JSON body, or server-sent events.

Each class is usable without HTTP: ``await ServingChat(cfg, engine, metrics).create(request,
request_id)`` returns the response body, or an async iterator of SSE lines when ``stream`` is set.
Client mistakes raise :class:`~services.gateway.protocol.ApiError` (4xx); anything else is a bug
or an engine failure, which the routes turn into a 500 with the request id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from autothink.prompting import ASSISTANT_PREFIX
from services.gateway.config import GatewayConfig
from services.gateway.generation import ChoiceDelta, ChoiceResult, Plan, Sampling, TokenLogprob, generate_choice, merge
from services.gateway.metrics import GatewayMetrics
from services.gateway.prompts import encode_conversation, problem_messages
from services.gateway.protocol import (
    STRATEGY,
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
    Effort,
    GenerateRequest,
    Message,
    Mode,
)

DONE = "data: [DONE]\n\n"


def sse(obj: Any) -> str:
    return f"data: {json.dumps(obj)}\n\n"


@dataclass(frozen=True)
class Job:
    """One request, resolved: the prompt's token ids and what to do with them."""

    request_id: str
    prompt_ids: list[int]
    sampling: Sampling
    n: int
    starts_in_reasoning: bool
    probe: bool = False  # measure think_probability (mode=auto)
    threshold: float | None = None
    thinking_budget: int | None = None


@dataclass(frozen=True)
class Finished:
    """The last event of a job: every choice, and the policy versions that can have produced them
    (one unless a hot swap happened while the request ran)."""

    results: list[ChoiceResult]
    policy_versions: list[int]

    @property
    def policy_version(self) -> int:
        return self.policy_versions[0]

    @property
    def think_probability(self) -> float | None:
        return self.results[0].think_probability if self.results else None

    @property
    def routed_to(self) -> str | None:
        return self.results[0].routed_to if self.results else None

    @property
    def fingerprint(self) -> str:
        return "policy-" + "+".join(f"v{v}" for v in self.policy_versions)


def usage(prompt_tokens: int, results: list[ChoiceResult]) -> dict[str, Any]:
    reasoning = sum(r.reasoning_tokens for r in results)
    completion = sum(r.completion_tokens for r in results)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }


class Serving:
    """What every endpoint shares: admission of the prompt, the choices' plans, the run."""

    def __init__(self, cfg: GatewayConfig, engine: Any, metrics: GatewayMetrics):
        self.cfg, self.engine, self.metrics = cfg, engine, metrics

    # -- the prompt
    def _check_size(self, texts: list[str], param: str) -> None:
        """Refuse a prompt that cannot fit before tokenising it: no token is longer than the
        vocabulary's longest entry, so more characters than that times the context cannot fit."""
        per_token = getattr(self.engine, "max_token_chars", None)
        if per_token:
            chars = sum(len(t) for t in texts)
            if chars > self.engine.max_model_len * per_token:
                raise ApiError(400, f"the prompt ({chars} characters) cannot fit the model's context of {self.engine.max_model_len} tokens",
                               param=param, code="context_length_exceeded")

    async def conversation_ids(self, messages: list[dict[str, str]], mode: Mode, param: str) -> list[int]:
        """Token ids of a conversation under a mode's prompt, tokenised off the event loop.  Every
        message costs at least one token (its role's tag), so more messages than the context holds
        are refused before tokenising (#39: 25,000 empty messages took 1.1-1.4 s to tokenise)."""
        if len(messages) >= self.engine.max_model_len:
            raise ApiError(400, f"{len(messages)} messages cannot fit the model's context of {self.engine.max_model_len} tokens",
                           param=param, code="context_length_exceeded")
        self._check_size([m["content"] for m in messages], param)
        prefix = ASSISTANT_PREFIX[STRATEGY[mode]]
        try:
            return await asyncio.to_thread(encode_conversation, self.engine.tokenizer, messages, prefix)
        except Exception as e:  # the model's template refused the conversation (e.g. roles out of order)
            raise ApiError(400, f"the chat template cannot render these messages: {e}", param=param) from None

    async def raw_ids(self, text: str) -> list[int]:
        self._check_size([text], "prompt")
        return await asyncio.to_thread(self.engine.encode_trusted, text)

    # -- the plan
    def budget(self, thinking_budget: int | None, effort: Effort | None) -> int | None:
        """An explicit thinking budget wins; else the budget of the reasoning effort (settings)."""
        if thinking_budget is not None:
            return thinking_budget
        if effort is not None and effort != "none":
            return getattr(self.cfg.reasoning_effort, effort)
        return None

    def job(self, request_id: str, ids: list[int], req: Any, limit: int | None, *, starts_in_reasoning: bool,
            probe: bool = False, threshold: float | None = None, budget: int | None = None, logprobs: int | None = None,
            limit_param: str = "max_tokens", stream: bool = False) -> Job:
        if req.n > self.cfg.max_n:
            raise ApiError(400, f"n={req.n} is above this gateway's limit of {self.cfg.max_n}", param="n")
        room = self.engine.max_model_len - len(ids)
        if room < 1:
            raise ApiError(400, f"the prompt is {len(ids)} tokens; the model's context is {self.engine.max_model_len}",
                           param="messages", code="context_length_exceeded")
        if limit is not None and limit > room:
            raise ApiError(400, f"{limit_param}={limit} does not fit: the prompt is {len(ids)} tokens and the context "
                           f"{self.engine.max_model_len} (at most {room})", param=limit_param, code="context_length_exceeded")
        if req.min_tokens > (limit if limit is not None else room):
            raise ApiError(400, f"min_tokens={req.min_tokens} does not fit: the prompt is {len(ids)} tokens and the context "
                           f"{self.engine.max_model_len}", param="min_tokens", code="context_length_exceeded")
        vocab = getattr(self.engine, "vocab_size", None)
        if vocab and any(t >= vocab for t in req.stop_token_ids or ()):
            raise ApiError(400, f"stop_token_ids: the model's token ids are below {vocab}", param="stop_token_ids")
        # penalties, top-k and min-p act after the first-step processor: no think_probability then
        probe = probe and not req.changes_first_step
        sampling = Sampling(max_tokens=limit if limit is not None else room, temperature=req.temperature, top_p=req.top_p,
                            seed=req.seed, stop=tuple(req.stop_strings), logprobs=logprobs,
                            stop_token_ids=tuple(req.stop_token_ids or ()), ignore_eos=req.ignore_eos,
                            min_tokens=req.min_tokens, repetition_penalty=req.repetition_penalty, top_k=req.top_k,
                            min_p=req.min_p,
                            # nobody reads a non-streaming choice's tokens as they come: the engine hands
                            # them over in batches (what `vllm serve` does with FINAL_ONLY, but still
                            # showing progress to the stall check); a stream gets every token
                            output_interval=1 if stream else self.cfg.output_interval_tokens)
        return Job(request_id, ids, sampling, req.n, starts_in_reasoning, probe, threshold, budget)

    # -- the run
    async def execute(self, job: Job) -> AsyncIterator[ChoiceDelta | Finished]:
        ticket = self.engine.clock.ticket()
        plans = [
            Plan(job.prompt_ids, replace(job.sampling, seed=None if job.sampling.seed is None else job.sampling.seed + i),
                 job.starts_in_reasoning, job.probe, job.threshold, thinking_budget=job.thinking_budget)
            for i in range(job.n)
        ]
        results: list[ChoiceResult] = []
        # aclosing all the way down: when a client leaves, closing the outermost generator closes
        # this one, merge() and every choice, whose engine calls are then aborted — at once, not
        # whenever the garbage collector finalises a forgotten generator
        async with contextlib.aclosing(merge([generate_choice(self.engine, plan, i, job.request_id)
                                              for i, plan in enumerate(plans)])) as events:
            async for ev in events:
                if isinstance(ev, ChoiceResult):
                    results.append(ev)
                else:
                    yield ev
        results.sort(key=lambda r: r.index)
        self.metrics.record(len(job.prompt_ids), results)
        yield Finished(results, self.engine.clock.versions(ticket))

    async def collect(self, job: Job) -> Finished:
        final = None
        async with contextlib.aclosing(self.execute(job)) as events:
            async for ev in events:
                if isinstance(ev, Finished):
                    final = ev
        assert final is not None
        return final


def _messages(messages: list[Message]) -> list[dict[str, str]]:
    return [{"role": m.rendered_role, "content": m.content} for m in messages]  # extra keys (`name`) are reported, not rendered


class ServingGenerate(Serving):
    """``POST /generate``: a problem or conversation under a mode, answer and reasoning apart."""

    async def create(self, req: GenerateRequest, request_id: str) -> dict[str, Any] | AsyncIterator[str]:
        t0 = time.perf_counter()
        mode = req.resolved_mode()
        messages = _messages(req.messages) if req.messages is not None else problem_messages(req.prompt or "", req.add_instruction)
        ids = await self.conversation_ids(messages, mode, "prompt" if req.messages is None else "messages")
        job = self.job(request_id, ids, req, req.max_tokens, starts_in_reasoning=mode != "no_think", probe=mode == "auto",
                       threshold=req.think_threshold, budget=self.budget(req.thinking_budget, req.reasoning_effort),
                       stream=req.stream)
        if not req.stream:
            return self.body(job, mode, await self.collect(job), t0)
        return self._events(job, mode, t0)

    async def _events(self, job: Job, mode: Mode, t0: float) -> AsyncIterator[str]:
        async with contextlib.aclosing(self.execute(job)) as events:
            async for ev in events:
                if isinstance(ev, Finished):
                    yield sse({"type": "result", **self.body(job, mode, ev, t0)})
                else:
                    yield sse({"type": "delta", "index": ev.index, "reasoning": ev.reasoning, "text": ev.answer})
        yield DONE

    def body(self, job: Job, mode: Mode, fin: Finished, t0: float) -> dict[str, Any]:
        choices = [
            {
                "index": r.index, "text": r.answer, "reasoning": r.reasoning, "answer": r.boxed, "thought": r.thought,
                "finish_reason": r.finish_reason, "budget_forced": r.budget_forced,
                "think_probability": r.think_probability, "routed_to": r.routed_to,
                "usage": {"reasoning_tokens": r.reasoning_tokens, "answer_tokens": r.answer_tokens, "completion_tokens": r.completion_tokens},
            }
            for r in fin.results
        ]
        u = usage(len(job.prompt_ids), fin.results)
        first = choices[0]
        reasoning_tokens = u["completion_tokens_details"]["reasoning_tokens"]
        return {
            "id": f"gen-{job.request_id}", "object": "generation", "model": self.cfg.served_model_name, "mode": mode,
            "text": first["text"], "reasoning": first["reasoning"], "answer": first["answer"], "thought": first["thought"],
            "finish_reason": first["finish_reason"],
            "think_probability": fin.think_probability, "routed_to": fin.routed_to,
            "policy_version": fin.policy_version, "policy_versions": fin.policy_versions,
            "usage": {
                "prompt_tokens": u["prompt_tokens"], "reasoning_tokens": reasoning_tokens,
                "answer_tokens": u["completion_tokens"] - reasoning_tokens,
                "completion_tokens": u["completion_tokens"], "total_tokens": u["total_tokens"],
            },
            "choices": choices,
            "latency_ms": round((time.perf_counter() - t0) * 1000, 1),
        }


def _chat_logprob(lp: TokenLogprob) -> dict[str, Any]:
    return {
        "token": lp.token, "logprob": lp.logprob, "bytes": list(lp.token.encode()),
        "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in lp.top],
    }


class ServingChat(Serving):
    """``POST /v1/chat/completions``: the answer as ``content``, the reasoning as ``reasoning``
    (and ``reasoning_content``, its older name, for older clients)."""

    async def create(self, req: ChatCompletionRequest, request_id: str) -> dict[str, Any] | AsyncIterator[str]:
        mode = req.resolved_mode()
        if req.think_threshold is not None and mode != "auto":
            raise ApiError(400, "think_threshold applies to mode=auto only", param="think_threshold")
        ids = await self.conversation_ids(_messages(req.messages), mode, "messages")
        limit_param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        job = self.job(request_id, ids, req, req.completion_limit, starts_in_reasoning=mode != "no_think", probe=mode == "auto",
                       threshold=req.think_threshold, budget=self.budget(req.thinking_budget, req.reasoning_effort),
                       logprobs=(req.top_logprobs or 0) if req.logprobs else None, limit_param=limit_param,
                       stream=req.stream)
        head = {"id": f"chatcmpl-{request_id}", "created": int(time.time()), "model": self.cfg.served_model_name}
        if not req.stream:
            fin = await self.collect(job)
            return {
                **head, "object": "chat.completion", "system_fingerprint": fin.fingerprint,
                "choices": [{
                    "index": r.index, "finish_reason": r.finish_reason,
                    "logprobs": self._logprobs(r) if req.logprobs else None,
                    "message": {"role": "assistant", "content": r.answer, "reasoning": r.reasoning or None,
                                "reasoning_content": r.reasoning or None},
                } for r in fin.results],
                "usage": usage(len(job.prompt_ids), fin.results),
                "think_probability": fin.think_probability, "routed_to": fin.routed_to,
                "policy_version": fin.policy_version, "policy_versions": fin.policy_versions,
            }
        return self._events(req, job, head)

    def _logprobs(self, r: ChoiceResult) -> dict[str, Any]:
        """Answer tokens under ``content`` (OpenAI's place), reasoning tokens (to ``</think>``) under
        ``reasoning``; tokens the gateway forced have none."""
        close = self.engine.close_id
        cut = r.token_ids.index(close) + 1 if close in r.token_ids else (len(r.token_ids) if r.thought else 0)
        reasoning = [_chat_logprob(lp) for lp in r.logprobs[:cut] if lp is not None]
        content = [_chat_logprob(lp) for lp in r.logprobs[cut:] if lp is not None]
        return {"content": content, "reasoning": reasoning}

    async def _events(self, req: ChatCompletionRequest, job: Job, head: dict[str, Any]) -> AsyncIterator[str]:
        def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
            return sse({**head, "object": "chat.completion.chunk", "choices": choices, **extra})

        for i in range(req.n):
            yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}])
        async with contextlib.aclosing(self.execute(job)) as events:
            async for ev in events:
                if isinstance(ev, Finished):
                    for r in ev.results:
                        yield chunk([{"index": r.index, "delta": {}, "logprobs": None, "finish_reason": r.finish_reason}],
                                    system_fingerprint=ev.fingerprint, policy_version=ev.policy_version,
                                    policy_versions=ev.policy_versions, think_probability=r.think_probability, routed_to=r.routed_to)
                    if req.stream_options and req.stream_options.include_usage:
                        yield chunk([], usage=usage(len(job.prompt_ids), ev.results))
                    continue
                delta: dict[str, str] = {}
                if ev.reasoning:
                    delta["reasoning"] = delta["reasoning_content"] = ev.reasoning
                if ev.answer:
                    delta["content"] = ev.answer
                logprobs = None
                if req.logprobs and ev.logprobs:
                    logprobs = {("content" if ev.answer else "reasoning"): [_chat_logprob(lp) for lp in ev.logprobs]}
                if delta or logprobs:
                    yield chunk([{"index": ev.index, "delta": delta, "logprobs": logprobs, "finish_reason": None}])
        yield DONE


def _completion_logprobs(lps: list[TokenLogprob | None] | tuple[TokenLogprob, ...], offset: int = 0) -> dict[str, Any]:
    tokens, values, tops, offsets = [], [], [], []
    for lp in lps:
        if lp is None:
            continue
        tokens.append(lp.token)
        values.append(lp.logprob)
        tops.append(dict(lp.top))
        offsets.append(offset)
        offset += len(lp.token)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


class ServingCompletion(Serving):
    """``POST /v1/completions``: the prompt as sent (its special tokens are tokens: the client
    writes the whole prompt), no mode, no reasoning split."""

    async def create(self, req: CompletionRequest, request_id: str) -> dict[str, Any] | AsyncIterator[str]:
        prompts = req.prompt
        if len(prompts) * req.n > self.cfg.max_n:
            raise ApiError(400, f"{len(prompts)} prompts x n={req.n} is above this gateway's limit of {self.cfg.max_n} "
                           "choices per request", param="prompt")
        jobs = []
        for k, text in enumerate(prompts):  # every prompt admitted before any runs: a bad one costs no generation
            ids = await self.raw_ids(text)
            jobs.append(self.job(request_id if len(prompts) == 1 else f"{request_id}-{k}", ids, req, req.max_tokens,
                                 starts_in_reasoning=False, logprobs=req.logprobs, stream=req.stream))
        head = {"id": f"cmpl-{request_id}", "created": int(time.time()), "model": self.cfg.served_model_name}
        if req.stream:  # one prompt (the protocol refuses a streamed list)
            return self._events(req, jobs[0], head)
        try:
            async with asyncio.TaskGroup() as group:  # a failed prompt cancels the others
                tasks = [group.create_task(self.collect(job)) for job in jobs]
        except ExceptionGroup as failed:
            raise failed.exceptions[0] from None  # the error the client is told (an ApiError stays a 4xx/5xx)
        fins = [t.result() for t in tasks]
        choices = [{"index": k * req.n + r.index, "text": r.text, "finish_reason": r.finish_reason,
                    "logprobs": _completion_logprobs(r.logprobs) if req.logprobs is not None else None}
                   for k, fin in enumerate(fins) for r in fin.results]
        versions = sorted({v for fin in fins for v in fin.policy_versions})
        use = usage(sum(len(j.prompt_ids) for j in jobs), [r for fin in fins for r in fin.results])
        return {
            **head, "object": "text_completion", "system_fingerprint": fins[0].fingerprint, "choices": choices,
            "usage": use, "policy_version": versions[0], "policy_versions": versions,
        }

    async def _events(self, req: CompletionRequest, job: Job, head: dict[str, Any]) -> AsyncIterator[str]:
        offsets = [0] * job.n
        async with contextlib.aclosing(self.execute(job)) as events:
            async for ev in events:
                if isinstance(ev, Finished):
                    for r in ev.results:
                        yield sse({**head, "object": "text_completion", "system_fingerprint": ev.fingerprint, "choices": [
                            {"index": r.index, "text": "", "logprobs": None, "finish_reason": r.finish_reason}]})
                    if req.stream_options and req.stream_options.include_usage:
                        yield sse({**head, "object": "text_completion", "choices": [], "usage": usage(len(job.prompt_ids), ev.results)})
                elif ev.raw:
                    logprobs = _completion_logprobs(ev.logprobs, offsets[ev.index]) if req.logprobs is not None else None
                    offsets[ev.index] += len(ev.raw)
                    yield sse({**head, "object": "text_completion", "choices": [
                        {"index": ev.index, "text": ev.raw, "logprobs": logprobs, "finish_reason": None}]})
        yield DONE
