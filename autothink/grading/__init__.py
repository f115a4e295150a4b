"""A safe, bounded math grader.

``grade(response, ground_truth)`` → :class:`GradeResult` with ``correct``, a ``status`` and the
extracted answer.  The status separates the outcomes a reward must not confuse:

* ``ok``          the answer was compared; ``correct`` says how it went
* ``no_answer``   no complete ``\\boxed{}`` in the response (the last one wins; unclosed = none)
* ``unparseable`` the response is over the size limit, or the answer is not in the grammar and
                  matches no ground truth textually (``correct`` is False)
* ``timeout``     the comparison ran past the hard time limit; the worker that ran it was killed
                  and replaced (``correct`` is None: could not grade)
* ``error``       the worker died or the comparison raised (``correct`` is None: could not grade)

``timeout`` and ``error`` are never verdicts: ``correct`` is None there and only there, so a
caller that tests ``result.correct is None`` (or the status) tells "could not grade" from
"wrong" (STYLE.md, "The grader").

Model output is never evaluated: see :mod:`autothink.grading.parser`.  ``grade`` runs the
comparison in a :class:`~autothink.grading.pool.GraderPool` worker process (started on first
use, as ``python -m autothink.grading.worker``: it never re-imports the caller's ``__main__``, so
scripts without a main guard, stdin, ``-c``, notebooks and threads all work), which is what
makes the time limit hard; :func:`grade_in_process` is the same comparison
without the pool, for code that is already inside a worker.

>>> grade_in_process("so the answer is \\\\boxed{\\\\dfrac{1}{2}}", "0.5").correct
True
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from autothink.grading.extract import final_answers

Status = Literal["ok", "no_answer", "unparseable", "timeout", "error"]
MAX_RESPONSE_CHARS = 200_000
MAX_ANSWER_CHARS = 1_000


@dataclass(frozen=True)
class GradeResult:
    """``correct`` is True/False for a verdict, None when the grader could not grade
    (status ``timeout`` or ``error``)."""

    correct: bool | None
    status: Status
    extracted: str | None
    detail: str = ""


def _truths(ground_truth: str | int | float | Sequence[str | int | float]) -> tuple[str, ...]:
    if isinstance(ground_truth, (list, tuple)):
        return tuple(_truth_text(t) for t in ground_truth)
    return (_truth_text(ground_truth),)


def _truth_text(t: str | int | float) -> str:
    if isinstance(t, float) and t.is_integer():
        return str(int(t))  # AMC answers arrive as 142.0
    return str(t).strip()


@lru_cache(maxsize=65_536)
def _compare_cached(pred: str, truths: tuple[str, ...]) -> tuple[bool, bool]:
    from autothink.grading.equivalence import compare

    return compare(pred, list(truths))


def grade_in_process(response: str, ground_truth: str | int | float | Sequence[str | int | float]) -> GradeResult:
    """The comparison itself, bounded in size but not in time (use :func:`grade` for that)."""
    if not isinstance(response, str):
        return GradeResult(False, "unparseable", None, f"response is {type(response).__name__}, not text")
    if len(response) > MAX_RESPONSE_CHARS:
        return GradeResult(False, "unparseable", None, f"response longer than {MAX_RESPONSE_CHARS} characters")
    joined, answer = final_answers(response)
    if answer is None:
        return GradeResult(False, "no_answer", None)
    truths = _truths(ground_truth)
    if not truths or all(t == "" for t in truths):
        return GradeResult(False, "unparseable", answer, "ground truth is empty")
    if joined is not None and len(joined) <= MAX_ANSWER_CHARS and _compare_cached(joined.strip(), truths)[0]:
        return GradeResult(True, "ok", joined)  # several boxes that form one list of solutions
    if len(answer) > MAX_ANSWER_CHARS:
        return GradeResult(False, "unparseable", answer[:100], f"answer longer than {MAX_ANSWER_CHARS} characters")
    equal, unreadable = _compare_cached(answer.strip(), truths)
    if equal:
        return GradeResult(True, "ok", answer)
    if unreadable:
        return GradeResult(False, "unparseable", answer, "answer is outside the grammar and matches no ground truth")
    return GradeResult(False, "ok", answer)


_default_pool = None
_default_lock = threading.Lock()


def grade(
    response: str, ground_truth: str | int | float | Sequence[str | int | float], timeout_s: float = 2.0
) -> GradeResult:
    """Grade ``response`` (the text after ``</think>``) against one or several acceptable answers,
    under a hard time limit enforced by the shared worker pool."""
    global _default_pool
    with _default_lock:
        if _default_pool is None:
            from autothink.grading.pool import GraderPool

            _default_pool = GraderPool(workers=1, timeout_s=timeout_s)
            atexit.register(_default_pool.close)
    return _default_pool.grade(response, ground_truth, timeout_s=timeout_s)


__all__ = ["GradeResult", "grade", "grade_in_process", "MAX_RESPONSE_CHARS"]
