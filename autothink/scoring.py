"""From one response to its base reward: parse, grade, reward table, repetition guard.

Pure given a grade function, so the reward service, the evaluation harness and tests share it.
Within one group each distinct answer is graded once and its verdict shared: eight identical
samples get one verdict, never a mix of "timeout" and "wrong" by the grader's timing, which GRPO
would read as signal in the advantage (issue #39, M2).
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
    max_chars: int | None = None,
) -> Score:
    """Score one response.  A response longer than ``max_chars`` is not read further: status
    ``unparseable`` (the grader's word for over-size), not ``no_answer``, with the format-error
    reward (it is neither right nor shown wrong).

    >>> from autothink.grading import grade_in_process
    >>> score_sample("</think>\\n\\n\\\\boxed{4}", 5, "ellipsis", "4", grade_in_process).reward
    2.0
    >>> score_sample("2+2=4\\n</think>\\n\\n\\\\boxed{5}", 9, "ellipsis", "4", grade_in_process).reward
    0.0
    """
    parsed = parse_response(text, strategy)  # type: ignore[arg-type]
    if max_chars is not None and len(text) > max_chars:
        return Score(parsed.mode, False, False, "unparseable", base_reward("format_error", False, table), num_tokens, None)
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


def answers_to_grade(texts: Sequence[str], strategy: str, ground_truth: Any, max_chars: int | None = None) -> list[str]:
    """The distinct answer texts :func:`score_group` hands to the grader, first seen first (so a
    caller can grade them at once, in parallel).

    >>> answers_to_grade(["</think> \\\\boxed{1}", "</think> \\\\boxed{1}", "no close", "x</think>2"], "ellipsis", "1")
    ['\\\\boxed{1}', '2']
    """
    if not has_ground_truth(ground_truth):
        return []
    distinct: dict[str, None] = {}
    for text in texts:
        if max_chars is not None and len(text) > max_chars:
            continue
        parsed = parse_response(text, strategy)  # type: ignore[arg-type]
        if parsed.closed_think:
            distinct.setdefault(parsed.answer, None)
    return list(distinct)


def score_group(
    texts: Sequence[str], lengths: Sequence[int], strategy: str, ground_truth: Any, grade_fn: GradeFn, cfg: Any,
    max_chars: int | None = None,
) -> list[Score]:
    """Score every response of one group under ``cfg``, a :class:`autothink.config.RewardConfig`,
    grading each distinct answer once (the group shares one ground truth)."""
    table, rule = cfg.table(), cfg.rule()
    verdicts: dict[str, GradeResult] = {}

    def grade_once(answer: str, truth: Any) -> GradeResult:
        if answer not in verdicts:
            verdicts[answer] = grade_fn(answer, truth)
        return verdicts[answer]

    return [score_sample(t, n, strategy, ground_truth, grade_once, table, rule, max_chars) for t, n in zip(texts, lengths)]
