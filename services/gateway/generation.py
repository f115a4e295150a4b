"""How one choice becomes engine calls: the think-or-not decision at the first step, routing that
holds, the thinking budget, and the split into reasoning and answer.

A choice is one engine call, exactly what ``vllm serve`` does.  In ``auto`` mode that call also asks
the engine to measure P(``</think>``) at the step that samples the first token, under the request's
own banned tokens, temperature and top-p, and with ``think_threshold`` to route there: the no-think
route leaves only ``</think>``, the think route bans it (rejection sampling: the token then follows
the model's distribution given "not ``</think>``").  Both happen inside the engine's sampling step
(:mod:`autothink.first_step`), so there is no second request and no extra prefill; the measured
probability is collected from the engine after the first token, while the rest is generated.

A call is cut and continued from where it stands (a new call on prompt + the accepted tokens) only
when something must override the model later on:

* on the think route ``</think>`` stays banned until the reasoning has some non-blank text, so
  ``thought`` and ``routed_to`` always agree: a model that writes a blank line and then closes has
  that token re-drawn with ``</think>`` banned;
* with a thinking budget, a reasoning call stops at ``</think>`` or at the budget; when the budget
  ran out, ``\\n</think>\\n\\n`` is appended for the model and it goes on to answer.  The budget
  counts every reasoning token, the forced newline included, and ``max_tokens`` counts every
  response token, the forced ones included;
* ``min_tokens`` counts the choice's tokens across its calls: each call gets what is still owed
  (vLLM then bans the end of sequence and the stop tokens), and a budgeted reasoning call that
  still owes tokens runs just that many without ``</think>`` as its stop token, since vLLM's
  ``min_tokens`` would ban ``</think>`` too and so decide the mode for the model.

The engine sits behind :class:`Backend`, so this logic is tested with a scripted fake as well as
with vLLM.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from autothink.prompting import THINK_CLOSE, extract_boxed
from services.gateway.reasoning import ReasoningSplitter, Route, reasoning_token_count, think_probability

FORCED_CLOSE = "\n" + THINK_CLOSE + "\n\n"
BARE_CLOSE = THINK_CLOSE + "\n\n"


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 0.6
    top_p: float = 0.95
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ban_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    min_tokens: int = 0  # a Plan's: of the whole choice; an engine call's: of that call
    repetition_penalty: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    logprobs: int | None = None  # per token: the sampled token's log-probability and this many top ones
    probe_close: bool = False  # measure P(</think>) at the first step, as sampled (Delta.close_probability)
    first_threshold: float | None = None  # at the first step: think iff 1 - P(</think>) >= this, else close
    first_route: Route = "sample"  # at the first step: "think" bans </think> and EOS, "no_think" forces </think>
    output_interval: int = 1  # the engine reports new tokens every this many (the first and the last at
    # once): 1 for a client that streams; more when nobody reads the tokens as they come (see engine.py)


@dataclass(frozen=True)
class TokenLogprob:
    """One sampled token's log-probability and the top alternatives, as (token text, logprob)."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Delta:
    """New tokens of one engine call, their text, and the finish reason on the last one."""

    token_ids: list[int]
    text: str
    finish_reason: str | None = None
    stop_reason: int | str | None = None  # the stop token id or stop string that ended the call
    logprobs: list[TokenLogprob] | None = None  # one per token, when asked for
    close_probability: asyncio.Future[float] | None = None  # on the first delta of a probe_close call: P(</think>)
    # at the step that drew the first token, collected from the engine while the call goes on


class Backend(Protocol):
    close_id: int

    def decode(self, token_ids: list[int]) -> str: ...

    def encode_trusted(self, text: str) -> list[int]: ...

    def stream(self, prompt_ids: list[int], sampling: Sampling, request_id: str) -> AsyncIterator[Delta]: ...


@dataclass(frozen=True)
class Plan:
    """What to generate for one choice."""

    prompt_ids: list[int]
    sampling: Sampling
    starts_in_reasoning: bool = True  # False under the no-thinking prompt and for raw completions
    probe: bool = False  # measure think_probability at the first step (mode=auto)
    threshold: float | None = None  # route on think_probability at the first step (in the engine)
    route: Route = "sample"  # a route fixed in advance (tests, and what a threshold decides)
    thinking_budget: int | None = None


@dataclass(frozen=True)
class ChoiceDelta:
    index: int
    reasoning: str
    answer: str
    raw: str  # the engine's text as is (what a plain completion returns)
    logprobs: tuple[TokenLogprob, ...] = ()


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
    think_probability: float | None = None
    routed_to: Route | None = None
    stop_reason: int | str | None = None
    logprobs: list[TokenLogprob | None] = field(default_factory=list, repr=False)  # aligned with token_ids; None: forced

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def answer_tokens(self) -> int:
        return self.completion_tokens - self.reasoning_tokens


def _raise_if_failed(fut: asyncio.Future | None) -> None:
    """A first-step measurement that failed fails the request at once, not after the generation."""
    if fut is not None and fut.done() and not fut.cancelled() and fut.exception() is not None:
        raise fut.exception()  # type: ignore[misc]


def _discard(fut: asyncio.Future | None) -> None:
    """Leave nothing pending or unretrieved behind a choice that ended (or was aborted)."""
    if fut is None:
        return
    if not fut.done():
        fut.cancel()
    elif not fut.cancelled():
        fut.exception()


def segment_seed(seed: int | None, segment: int) -> int | None:
    """A distinct, reproducible seed for each engine call of a seeded choice.

    >>> segment_seed(7, 0), segment_seed(None, 3), segment_seed(7, 1) != segment_seed(7, 2)
    (7, None, True)
    """
    if seed is None or segment == 0:
        return seed
    return (seed * 1_000_003 + segment * 7_919) % (2**63)


class _Choice:
    """The state of one choice while its engine calls run."""

    def __init__(self, plan: Plan, index: int):
        self.plan, self.index = plan, index
        self.splitter = ReasoningSplitter(plan.starts_in_reasoning)
        self.ids: list[int] = []
        self.logprobs: list[TokenLogprob | None] = []
        self.reasoning: list[str] = []
        self.answer: list[str] = []
        self.raw: list[str] = []
        self.reasoning_has_text = False

    def accept(self, ids: Sequence[int], text: str, logprobs: Sequence[TokenLogprob | None] | None = None) -> ChoiceDelta | None:
        self.ids.extend(ids)
        self.logprobs.extend(logprobs if logprobs is not None else [None] * len(ids))
        r, a = self.splitter.feed(text)
        self.reasoning.append(r)
        self.answer.append(a)
        self.raw.append(text)
        self.reasoning_has_text = self.reasoning_has_text or r.strip() != ""
        kept = tuple(x for x in (logprobs or ()) if x is not None)
        if not text and not kept:
            return None
        return ChoiceDelta(self.index, r, a, text, kept)


async def generate_choice(backend: Backend, plan: Plan, index: int, request_id: str) -> AsyncIterator[ChoiceDelta | ChoiceResult]:
    """Yields text deltas as they come, then one :class:`ChoiceResult`."""
    close = backend.close_id
    s = plan.sampling
    c = _Choice(plan, index)
    in_reasoning_prompt = plan.starts_in_reasoning
    route: Route = plan.route if in_reasoning_prompt else "sample"
    decided = route != "sample" or plan.threshold is None
    close_prob: asyncio.Future[float] | None = None  # P(</think>) at the first step, being collected
    budget = plan.thinking_budget if in_reasoning_prompt else None
    forced_nl = backend.encode_trusted(FORCED_CLOSE) if budget is not None else []
    forced_bare = backend.encode_trusted(BARE_CLOSE) if budget is not None else []
    nl_reasoning = forced_nl.index(close) if close in forced_nl else 0  # reasoning tokens the forced close adds
    # what may not end blank reasoning on the think route: </think>, and the end of the sequence
    enders = (close,) + ((backend.eos_id,) if getattr(backend, "eos_id", None) is not None else ())
    budget_forced = False
    finish: str | None = None
    stop_reason: int | str | None = None
    segment = 0

    try:
        while finish is None:
            remaining = s.max_tokens - len(c.ids)
            if remaining <= 0:
                finish = "length"
                break
            in_reasoning = c.splitter.in_reasoning
            if route == "no_think" and decided and not c.ids:
                if d := c.accept([close], THINK_CLOSE):
                    yield d
                continue
            first_step = in_reasoning_prompt and not c.ids  # this call samples the mode-deciding token
            ban = route == "think" and decided and in_reasoning and not c.reasoning_has_text and not first_step
            seg = replace(s, max_tokens=remaining, seed=segment_seed(s.seed, segment))
            owed = max(0, s.min_tokens - len(c.ids))  # min_tokens still owed by this choice
            own_close = False  # </think> is a stop token of this call for the budget (not the client's)
            if ban:  # blank reasoning so far on the think route: the next token alone, </think> banned
                seg = replace(seg, max_tokens=1, ban_token_ids=(*s.ban_token_ids, *enders))
            elif in_reasoning and budget is not None:
                spent = len(c.ids)  # all response tokens so far are reasoning
                cap = max(0, budget - nl_reasoning)
                if spent >= cap:  # the budget is spent: close the reasoning for the model
                    forced = forced_nl if spent > 0 and spent + nl_reasoning <= budget else forced_bare
                    text = FORCED_CLOSE if forced is forced_nl else BARE_CLOSE
                    if len(forced) > remaining:  # max_tokens counts the forced tokens too
                        forced, text = forced[:remaining], backend.decode(forced[:remaining])
                        finish = "length"
                    budget_forced = True
                    if d := c.accept(forced, text):
                        yield d
                    continue
                if owed:  # tokens still owed: just those, without </think> as a stop (see the module's notes)
                    seg = replace(seg, max_tokens=min(remaining, cap - spent, owed))
                elif close in s.stop_token_ids:
                    seg = replace(seg, max_tokens=min(remaining, cap - spent))
                else:
                    seg = replace(seg, max_tokens=min(remaining, cap - spent), stop_token_ids=(*s.stop_token_ids, close))
                    own_close = True
            seg = replace(seg, min_tokens=min(owed, seg.max_tokens))
            probing = first_step and plan.probe and close_prob is None
            if first_step:  # measured and routed by the engine at the step that draws the token
                seg = replace(seg, probe_close=probing, first_threshold=None if decided else plan.threshold,
                              first_route=route if decided else "sample")
            cut = False
            seg_finish: str | None = None
            first = first_step
            async with contextlib.aclosing(backend.stream(plan.prompt_ids + c.ids, seg, f"{request_id}-{index}-{segment}")) as stream:
                async for delta in stream:
                    ids, text, lps = delta.token_ids, delta.text, delta.logprobs
                    if first and ids:
                        first = False
                        if probing:
                            if delta.close_probability is None:
                                raise RuntimeError("the engine did not measure the first step it was asked to")
                            close_prob = delta.close_probability
                        if not decided:  # the engine routed: </think> first is the no-think route
                            route, decided = ("no_think" if ids[0] == close else "think"), True
                    _raise_if_failed(close_prob)
                    if route == "think" and c.splitter.in_reasoning and not c.reasoning_has_text and any(t in enders for t in ids):
                        k = next(i for i, t in enumerate(ids) if t in enders)
                        if backend.decode(c.ids + ids[:k]).strip() == "":  # ending with blank reasoning: re-draw
                            if k and (d := c.accept(ids[:k], backend.decode(ids[:k]), lps[:k] if lps else None)):
                                yield d
                            cut = True
                            break
                    if d := c.accept(ids, text, lps):
                        yield d
                    seg_finish = delta.finish_reason or seg_finish
                    if delta.stop_reason is not None:
                        stop_reason = delta.stop_reason
            segment += 1
            if cut:
                continue
            if own_close and c.ids and c.ids[-1] == close and c.splitter.in_reasoning:
                if d := c.accept([], THINK_CLOSE):  # the engine leaves a stop token's text out
                    yield d
                stop_reason = None
                continue
            if seg_finish == "length" and seg.max_tokens < remaining:  # a call we capped ourselves
                continue
            if own_close and c.ids and c.ids[-1] == close:
                stop_reason = None
                continue
            finish = seg_finish or "stop"
        p = think_probability(await close_prob) if close_prob is not None else None
    finally:
        _discard(close_prob)
    r, _ = c.splitter.flush()
    c.reasoning.append(r)
    if r:
        yield ChoiceDelta(index, r, "", "")
    answer_text = "".join(c.answer).strip()
    reasoning_text = "".join(c.reasoning).strip()
    yield ChoiceResult(
        index=index,
        reasoning=reasoning_text,
        answer=answer_text,
        text="".join(c.raw),
        boxed=extract_boxed(answer_text),
        thought=in_reasoning_prompt and reasoning_text != "",
        finish_reason=finish,
        token_ids=c.ids,
        reasoning_tokens=reasoning_token_count(c.ids, close, in_reasoning_prompt),
        budget_forced=budget_forced,
        think_probability=p,
        routed_to=route if route != "sample" else None,
        stop_reason=stop_reason,
        logprobs=c.logprobs,
    )


async def merge(streams: Sequence[AsyncIterator[ChoiceDelta | ChoiceResult]]) -> AsyncIterator[ChoiceDelta | ChoiceResult]:
    """Interleave several choices' events as they are produced; the first error fails the whole
    request at once and cancels the other choices (their engine calls are aborted)."""
    if len(streams) == 1:  # one choice (the common case): no task and no queue hop per event
        async with contextlib.aclosing(streams[0]):  # type: ignore[type-var]
            async for item in streams[0]:
                yield item
        return
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(s: AsyncIterator) -> None:
        try:
            async with contextlib.aclosing(s):  # type: ignore[type-var]
                async for item in s:
                    await queue.put(item)
            await queue.put(done)
        except asyncio.CancelledError:
            raise
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
