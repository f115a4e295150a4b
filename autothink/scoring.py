"""From one response to its base reward: parse, grade, reward table, repetition guard.

Pure given a grade function, so the reward service, the evaluation harness and tests share it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from autothink.bus.messages import Score
from autothink.grading import GradeResult
from autothink.prompting import parse_response
from autothink.rewards import RepetitionRule, RewardTable, base_reward, repetition_guard

GradeFn = Callable[[str, Any], GradeResult]


def has_ground_truth(answer: Any) -> bool:
    if answer is None:
        return False
    if isinstance(answer, (list, tuple)):
        return any(has_ground_truth(a) for a in answer)
    return str(answer).strip() != ""


def score_sample(
    text: str,
    num_tokens: int,
    strategy: str,
    ground_truth: Any,
    grade_fn: GradeFn,
    table: RewardTable = RewardTable(),
    rule: RepetitionRule = RepetitionRule(),
) -> Score:
    """Score one response.

    >>> from autothink.grading import grade_in_process
    >>> score_sample("</think>\\n\\n\\\\boxed{4}", 5, "ellipsis", "4", grade_in_process).reward
    2.0
    >>> score_sample("2+2=4\\n</think>\\n\\n\\\\boxed{5}", 9, "ellipsis", "4", grade_in_process).reward
    0.0
    """
    parsed = parse_response(text, strategy)  # type: ignore[arg-type]
    if not parsed.closed_think:
        reward = repetition_guard(base_reward("format_error", False, table), text, table, rule)
        return Score(parsed.mode, False, False, "no_answer", reward, num_tokens, None)
    if not has_ground_truth(ground_truth):
        reward = base_reward(parsed.mode, None, table)
        return Score(parsed.mode, parsed.format_ok, False, "no_ground_truth", reward, num_tokens, parsed.boxed)
    result = grade_fn(parsed.answer, ground_truth)
    format_ok = parsed.format_ok and result.status != "no_answer"
    mode_for_reward = parsed.mode if format_ok else "format_error"
    reward = repetition_guard(base_reward(mode_for_reward, result.correct, table), text, table, rule)
    return Score(parsed.mode, format_ok, result.correct, result.status, reward, num_tokens, result.extracted)


def score_group(
    texts: Sequence[str], lengths: Sequence[int], strategy: str, ground_truth: Any, grade_fn: GradeFn, cfg: Any
) -> list[Score]:
    """Score every response of one group under ``cfg``, a :class:`autothink.config.RewardConfig`."""
    table, rule = cfg.table(), cfg.rule()
    return [score_sample(t, n, strategy, ground_truth, grade_fn, table, rule) for t, n in zip(texts, lengths)]
