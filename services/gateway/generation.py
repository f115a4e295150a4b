"""How one request becomes engine calls: the think-or-not decision, the thinking budget, and the
split into reasoning and answer.

A choice is generated in *segments*, each one engine call on token ids that continues the
previous ones:

* ``route="no_think"`` puts ``</think>`` first; ``route="think"`` samples the first token with
  ``</think>`` banned; ``route="sample"`` lets the model choose (the AutoThink default);
* with a ``thinking_budget``, a reasoning segment stops at ``</think>`` or after the budget; when
  the budget ran out, ``\\n</think>\\n\\n`` is appended and the model goes on to answer.

Without a route or a budget a choice is a single engine call, exactly what ``vllm serve`` does.
The engine sits behind :class:`Backend`, so this logic is tested with a scripted fake as well as
with vLLM.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from autothink.prompting import THINK_CLOSE, extract_boxed
from services.gateway.reasoning import ReasoningSplitter, Route, reasoning_token_count

FORCED_CLOSE = "\n" + THINK_CLOSE + "\n\n"


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 0.6
    top_p: float = 0.95
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    ban_token_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Delta:
    """New tokens of one engine call, their text, and the finish reason on the last one."""

    token_ids: list[int]
    text: str
    finish_reason: str | None = None


class Backend(Protocol):
    close_id: int

    def encode(self, text: str) -> list[int]: ...

    def stream(self, prompt_ids: list[int], sampling: Sampling, request_id: str) -> AsyncIterator[Delta]: ...

    async def next_token_logprob(self, prompt_ids: list[int], token_id: int, request_id: str) -> float: ...


@dataclass(frozen=True)
class Plan:
    """What to generate for one choice."""

    prompt_ids: list[int]
    sampling: Sampling
    starts_in_reasoning: bool = True  # False under the no-thinking prompt and for raw completions
    route: Route = "sample"
    thinking_budget: int | None = None


@dataclass(frozen=True)
class ChoiceDelta:
    index: int
    reasoning: str
    answer: str
    raw: str  # the engine's text as is (what a plain completion returns)


@dataclass
class ChoiceResult:
    index: int
    reasoning: str
    answer: str
    text: str  # the whole response as generated, </think> included
    boxed: str | None
    thought: bool
    finish_reason: str
    token_ids: list[int] = field(repr=False)
    reasoning_tokens: int = 0
    budget_forced: bool = False

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def answer_tokens(self) -> int:
        return self.completion_tokens - self.reasoning_tokens


async def generate_choice(backend: Backend, plan: Plan, index: int, request_id: str) -> AsyncIterator[ChoiceDelta | ChoiceResult]:
    """Yields text deltas as they come, then one :class:`ChoiceResult`."""
    close = backend.close_id
    splitter = ReasoningSplitter(plan.starts_in_reasoning)
    reasoning: list[str] = []
    answer: list[str] = []
    raw: list[str] = []
    ids: list[int] = []

    def emit(text: str) -> ChoiceDelta | None:
        r, a = splitter.feed(text)
        reasoning.append(r)
        answer.append(a)
        raw.append(text)
        return ChoiceDelta(index, r, a, text) if text else None

    first_route = plan.route if plan.starts_in_reasoning else "sample"
    if first_route == "no_think":
        ids.append(close)
        if d := emit(THINK_CLOSE):
            yield d
    ban_first = first_route == "think"
    budget = plan.thinking_budget if plan.starts_in_reasoning else None
    forced = False
    finish = "length"
    segment = 0
    while len(ids) < plan.sampling.max_tokens:
        remaining = plan.sampling.max_tokens - len(ids)
        in_reasoning = splitter.in_reasoning
        sampling = replace(plan.sampling, max_tokens=remaining)
        if ban_first:
            sampling = replace(sampling, max_tokens=1, ban_token_ids=(close,))
        elif in_reasoning and budget is not None:
            left = budget - len(ids)
            if left <= 0:  # the budget is spent: close the reasoning for the model
                forced = True
                ids.extend(backend.encode(FORCED_CLOSE))
                if d := emit(FORCED_CLOSE):
                    yield d
                continue
            sampling = replace(sampling, max_tokens=min(remaining, left), stop_token_ids=(close,))
        seg_finish: str | None = None
        async for delta in backend.stream(plan.prompt_ids + ids, sampling, f"{request_id}-{index}-{segment}"):
            ids.extend(delta.token_ids)
            if d := emit(delta.text):
                yield d
            seg_finish = delta.finish_reason or seg_finish
        segment += 1
        if ban_first:
            ban_first = False
            if seg_finish == "length":
                continue
        elif sampling.stop_token_ids and ids and ids[-1] == close:
            if splitter.in_reasoning and (d := emit(THINK_CLOSE)):  # in case the engine left the stop token's text out
                yield d
            continue
        elif in_reasoning and budget is not None and seg_finish == "length":
            continue
        finish = seg_finish or "stop"
        break
    r, a = splitter.flush()
    reasoning.append(r)
    if r:
        yield ChoiceDelta(index, r, "", "")
    answer_text = "".join(answer).strip()
    reasoning_text = "".join(reasoning).strip()
    n_reason = reasoning_token_count(ids, close, plan.starts_in_reasoning)
    yield ChoiceResult(
        index=index,
        reasoning=reasoning_text,
        answer=answer_text,
        text="".join(raw),
        boxed=extract_boxed(answer_text),
        thought=plan.starts_in_reasoning and reasoning_text != "",
        finish_reason=finish,
        token_ids=ids,
        reasoning_tokens=n_reason,
        budget_forced=forced,
    )


async def merge(streams: Sequence[AsyncIterator[ChoiceDelta | ChoiceResult]]) -> AsyncIterator[ChoiceDelta | ChoiceResult]:
    """Interleave several choices' events as they are produced; cancels the rest on error or close."""
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(s: AsyncIterator) -> None:
        try:
            async for item in s:
                await queue.put(item)
            await queue.put(done)
        except BaseException as e:  # surfaced to the consumer below
            await queue.put(e)

    tasks = [asyncio.create_task(pump(s)) for s in streams]
    try:
        open_streams = len(tasks)
        while open_streams:
            item = await queue.get()
            if item is done:
                open_streams -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
