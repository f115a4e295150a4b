"""In-process stand-ins that unit tests share (issue #33): a manual clock, a stage with the
shaping knobs, and the gateway's scripted character model with its tokenizer.  Integration tests
use the real thing (redis-server, vLLM, DeepSpeed, gRPC) instead."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

from autothink.prompting import ASSISTANT, BOS, EOS, THINK_CLOSE, THINK_OPEN, USER
from services.gateway.engine import VersionClock
from services.gateway.generation import Delta, Sampling, TokenLogprob


class Clock:
    """A clock the test moves by hand (``clock.t += 1.5``)."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Stage:
    """A stage's shaping knobs with the reference's neutral values (no length shaping, no batch balance)."""

    alpha: float = 0.0
    beta: float = 0.0
    batch_balance_rate: float = 1.0
    penalty_slope: float = 2.0


CLOSE = 1000
EOS_ID = 1001
SPECIAL = {THINK_CLOSE: CLOSE, EOS: EOS_ID, BOS: 1002, USER: 1003, ASSISTANT: 1004, THINK_OPEN: 1005}
BANNED_STAND_IN = "h"  # what the scripted model writes where </think> is banned


class CharTokenizer:
    """One token per character, plus the R1 added tokens; the R1 chat template."""

    chat_template = "r1"

    def __init__(self, delay: float = 0.0):
        self.delay = delay  # seconds each encode takes, holding the thread (a slow tokenizer)
        self._back = {v: k for k, v in SPECIAL.items()}

    def get_added_vocab(self) -> dict[str, int]:
        return dict(SPECIAL)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        if self.delay:
            time.sleep(self.delay)
        ids, i = [], 0
        while i < len(text):
            for s, t in SPECIAL.items():
                if text.startswith(s, i):
                    ids.append(t)
                    i += len(s)
                    break
            else:
                ids.append(ord(text[i]))
                i += 1
        return ids

    def decode(self, ids: list[int]) -> str:
        return "".join(self._back.get(t, "") if t in self._back and t != CLOSE else (THINK_CLOSE if t == CLOSE else chr(t)) for t in ids)

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        out = BOS
        for m in messages:
            out += (USER if m["role"] == "user" else ASSISTANT if m["role"] == "assistant" else "") + m["content"]
            if m["role"] == "assistant":
                out += EOS
        return out + ASSISTANT + "<think>\n"


class ScriptedModel:
    """A 'model' over characters: after a prompt it writes ``reasoning``, then ``</think>``, then
    ``answer`` — or closes at once when ``closes_first`` — and continues any prefix of that (or of a
    forced close) consistently.  Where ``</think>`` is banned it writes ``h`` instead.  It reports
    ``close_logprob`` as the first step's log P(</think>) and routes that step as the engine's
    first-step processor does (``first_route``, ``first_threshold``), honours ``stop`` strings and
    returns made-up log-probs when asked.  ``</think>`` is one token, as in R1 tokenizers; a stop
    token's text is left out, as vLLM does."""

    def __init__(self, reasoning: str = "3+4=7", answer: str = "\n\nso \\boxed{7}", closes_first: bool = False,
                 close_logprob: float = math.log(0.25), tokenizer: CharTokenizer | None = None):
        self.close_id = CLOSE
        self.eos_id = EOS_ID
        self.reasoning, self.answer, self.closes_first = reasoning, answer, closes_first
        self.close_logprob = close_logprob
        self.bases: list[list[int]] = []  # prompts of first calls
        self.calls: list[Sampling] = []
        self.closed_streams = 0  # engine calls that ended before their last token (aborted)
        self.clock = VersionClock(3)
        self.max_model_len = 4096
        self.max_token_chars = None
        self.ready = True
        self.error: str | None = None
        self.tokenizer = tokenizer or CharTokenizer()
        self.hold: asyncio.Event | None = None  # when set, stream() waits on it (to fill the gateway)
        self.token_delay = 0.0  # seconds between tokens
        self.fail: Exception | None = None  # raised by stream()

    @property
    def policy_version(self) -> int:
        return self.clock.version

    def problem(self) -> str | None:
        return self.error

    def encode_trusted(self, text: str) -> list[int]:
        return CharTokenizer().encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode([t for t in ids if t != EOS_ID])

    def _ids(self, text: str) -> list[int]:
        return CharTokenizer().encode(text)

    def _intended(self, generated: list[int], banned_close: bool) -> list[int]:
        if CLOSE in generated:
            answer = self._ids(self.answer)
            after = generated[generated.index(CLOSE) + 1 :]
            rest = answer[len(after) :] if answer[: len(after)] == after else []
            return rest + [EOS_ID]
        if not generated and self.closes_first and not banned_close:
            return [CLOSE] + self._ids(self.answer) + [EOS_ID]
        reasoning = self._ids(self.reasoning)
        plan = reasoning[len(generated) :] + [CLOSE] + self._ids(self.answer) + [EOS_ID]
        if banned_close and plan[0] == CLOSE:
            plan = [ord(BANNED_STAND_IN)] + plan
        return plan

    async def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    async def stream(self, prompt_ids: list[int], sampling: Sampling, request_id: str):
        self.calls.append(sampling)
        if self.fail is not None:
            raise self.fail
        if self.hold is not None:
            await self.hold.wait()
        if request_id.endswith("-0") and not any(prompt_ids[: len(b)] == b for b in self.bases):
            self.bases.append(list(prompt_ids))
        base = max((b for b in self.bases if prompt_ids[: len(b)] == b), key=len)
        generated = prompt_ids[len(base) :]
        route = sampling.first_route
        if sampling.first_threshold is not None:  # what FirstStepProcessor decides
            route = "think" if 1.0 - math.exp(self.close_logprob) >= sampling.first_threshold else "no_think"
        if route == "no_think" and not generated:
            plan = [CLOSE] + self._ids(self.answer) + [EOS_ID]
        else:
            plan = self._intended(generated, CLOSE in sampling.ban_token_ids or (route == "think" and not generated))
        text_so_far = ""
        finished = False
        try:
            for k, tok in enumerate(plan[: sampling.max_tokens]):
                last = k == sampling.max_tokens - 1
                probe = sampling.probe_close and k == 0
                lp = [TokenLogprob(self.decode([tok]), -0.5, ((self.decode([tok]), -0.5),))] if sampling.logprobs is not None else None
                close_lp = None
                if probe:
                    close_lp = asyncio.get_running_loop().create_future()
                    close_lp.set_result(math.exp(self.close_logprob))
                if tok == EOS_ID or tok in sampling.stop_token_ids:
                    finished = True
                    yield Delta([tok], "", "stop", tok if tok != EOS_ID else None, lp, close_lp)
                    return
                text = self.decode([tok])
                hit = next((s for s in sampling.stop if s in text_so_far + text), None)
                if hit is not None:
                    finished = True
                    keep = (text_so_far + text).index(hit) - len(text_so_far)
                    yield Delta([tok], text[: max(0, keep)], "stop", hit, lp, close_lp)
                    return
                text_so_far += text
                finished = last
                yield Delta([tok], text, "length" if last else None, None, lp, close_lp)
                await asyncio.sleep(self.token_delay)
        finally:
            if not finished:
                self.closed_streams += 1


