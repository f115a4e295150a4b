"""Pure pieces of adaptive serving: splitting a streamed response into reasoning and answer,
turning the engine's probability of ``</think>`` at the first step into a think probability, routing by a
threshold (:mod:`autothink.first_step`, where the engine applies it), and counting reasoning tokens.  No engine, no I/O: tested with hand-made inputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from autothink.first_step import Route, route
from autothink.prompting import THINK_CLOSE

__all__ = ["ReasoningSplitter", "Route", "reasoning_token_count", "route", "think_probability"]


class ReasoningSplitter:
    """Splits text that arrives in pieces at the first ``</think>``, the way vLLM's deepseek_r1
    reasoning parser does: what comes before is reasoning, what follows is the answer.

    A ``</think>`` cut across two pieces is held back until it is complete; the white space that
    opens the answer is dropped.  ``in_reasoning=False`` (the no-thinking prompt, or a raw
    completion) sends everything to the answer.

    >>> s = ReasoningSplitter()
    >>> s.feed("add 4 and 5</th"), s.feed("ink>\\n\\n\\\\boxed{9}"), s.flush()
    (('add 4 and 5', ''), ('', '\\\\boxed{9}'), ('', ''))
    """

    def __init__(self, in_reasoning: bool = True):
        self.in_reasoning = in_reasoning
        self._held = ""
        self._answer_started = False

    def feed(self, text: str) -> tuple[str, str]:
        """Returns the (reasoning, answer) text that ``text`` adds."""
        if not self.in_reasoning:
            return "", self._answer(text)
        buf = self._held + text
        cut = buf.find(THINK_CLOSE)
        if cut >= 0:
            self.in_reasoning, self._held = False, ""
            return buf[:cut], self._answer(buf[cut + len(THINK_CLOSE) :])
        keep = _partial_suffix(buf, THINK_CLOSE)
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep], ""

    def flush(self) -> tuple[str, str]:
        """At the end of the response: text held back that never became ``</think>`` is reasoning."""
        held, self._held = self._held, ""
        return held, ""

    def _answer(self, text: str) -> str:
        if not self._answer_started:
            text = text.lstrip()
            self._answer_started = bool(text)
        return text


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that is a proper beginning of ``marker``."""
    for k in range(min(len(text), len(marker) - 1), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0


def think_probability(close_prob: float | None) -> float:
    """P(think) = 1 − P(the first response token is ``</think>``), where ``close_prob`` is what the
    engine measured at the step that sampled that token under the request's own sampling (banned
    tokens, temperature, top-p; :func:`autothink.first_step.close_probability`).  A missing value is
    an error, never a made-up probability.

    >>> round(think_probability(0.25), 6), think_probability(0.0), think_probability(1.0 + 1e-7)
    (0.75, 1.0, 0.0)
    """
    if close_prob is None or math.isnan(close_prob):
        raise ValueError("the engine returned no probability of </think> at the first step")
    return min(1.0, max(0.0, 1.0 - close_prob))


def reasoning_token_count(token_ids: Sequence[int], close_id: int, starts_in_reasoning: bool) -> int:
    """Response tokens before the first ``</think>`` (all of them when it never closes).

    >>> reasoning_token_count([5, 6, 7, 99, 8], close_id=99, starts_in_reasoning=True)
    3
    >>> reasoning_token_count([99, 8], 99, True), reasoning_token_count([5, 6], 99, False)
    (0, 0)
    """
    if not starts_in_reasoning:
        return 0
    ids = list(token_ids)
    return ids.index(close_id) if close_id in ids else len(ids)
