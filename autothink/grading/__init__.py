"""A safe, bounded math grader.

``grade(response, ground_truth)`` → :class:`GradeResult` with ``correct``, a ``status`` and the
extracted answer.  The status separates the outcomes a reward must not confuse:

* ``ok``          the answer was compared; ``correct`` says how it went
* ``no_answer``   no complete ``\\boxed{}`` in the response (the last one wins; unclosed = none)
* ``unparseable`` the response is over the size limit, or the answer is not in the grammar and
                  matches no ground truth textually (``correct`` is False)
* ``timeout``     the comparison ran past its limit (``correct`` is None: could not grade).  The
                  limit is first an *operation budget*, :data:`MAX_GRADE_CALLS` Python calls per
                  comparison: a property of the input, so the same answer times out (or not) on
                  an idle machine and on a loaded one alike -- one verdict, not a coin toss by
                  load (issue #39, M2).  The pool's wall-clock limit stays as the last guard (a
                  stuck C routine); a worker that hits it is killed and replaced
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
import gc
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from autothink.grading.extract import final_answers

Status = Literal["ok", "no_answer", "unparseable", "timeout", "error"]
MAX_RESPONSE_CHARS = 200_000
MAX_ANSWER_CHARS = 1_000
#: Python function calls one comparison may make.  The heaviest answer of the unit tests, of
#: math-verify's suite and of the benchmarks' answers against themselves needs 0.26 M
#: (``\sin^2 x + \cos^2 x`` = 1), the adversarial ``\sin^{20} x+\cos^{20} x`` 0.63 M; the 8-fold
#: nested ``\sin^2+\cos^2`` of issue #39 needs 4.9 M and ``(x+y+z)^{12}`` against ``\cos(2x)`` 24 M.
#: 2 M is about 1 s of sympy on this 2-core machine with the counter on.
MAX_GRADE_CALLS = 2_000_000
#: The default wall-clock limit of a grade in the pool: the last guard, well above the budget's
#: ~1 s: under the M1 flood of issue #39 the budget's 1.3 s stretched to 5 s on this machine, and a
#: grade the budget lets finish must not become a timeout because the machine is busy.
DEFAULT_TIMEOUT_S = 10.0


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


class _OverBudget(BaseException):
    """Raised inside a comparison that used up its call budget.  A BaseException, so sympy's own
    ``except Exception`` blocks cannot swallow it."""


def _within_budget(fn, *args):  # noqa: ANN001, ANN202 - (fn's result or None, over budget)
    """Run ``fn(*args)`` under :data:`MAX_GRADE_CALLS`, counted by a call tracer.

    The count is made a function of the input alone: sympy's cache is cleared first (a warm cache
    would make the second look at an answer cheaper than the first) and garbage collection waits
    (a collection runs finalisers at moments set by earlier work).  The pool's workers also run
    with a fixed hash seed, so set iteration inside sympy is the same in every worker."""
    from sympy.core.cache import clear_cache

    calls = 0
    tripped = False

    def count(frame, event, arg):  # noqa: ANN001, ANN202 - the sys.settrace signature
        nonlocal calls, tripped
        calls += 1
        if calls > MAX_GRADE_CALLS:
            tripped = True
            raise _OverBudget
        return None  # no line events: only calls are counted

    clear_cache()
    previous = sys.gettrace()
    gc_was_on = gc.isenabled()
    gc.disable()
    sys.settrace(count)
    try:
        result = fn(*args)
    except _OverBudget:
        result = None
    finally:
        sys.settrace(previous)
        if gc_was_on:
            gc.enable()
    return (None, True) if tripped else (result, False)


@lru_cache(maxsize=65_536)
def _compare_cached(pred: str, truths: tuple[str, ...]) -> tuple[bool, bool, bool]:
    """(equal, unreadable, over budget) of one comparison; deterministic, hence cacheable."""
    from autothink.grading.equivalence import compare
    from autothink.grading.normalize import choice_letter, normalize

    # the same text once normalised is equal, as the full comparison would find first (its
    # structured_equal starts with that test): no sympy, so no budget to count (a choice letter
    # keeps its own rule, in compare)
    if any(choice_letter(t) is None and normalize(pred) == normalize(t) for t in truths):
        return True, False, False
    result, over = _within_budget(compare, pred, list(truths))
    return (False, False, True) if over else (*result, False)


def _over_budget(answer: str) -> GradeResult:
    return GradeResult(None, "timeout", answer[:100],
                       f"the comparison needs more than {MAX_GRADE_CALLS:,} operations (Python calls): could not grade")


def grade_in_process(response: str, ground_truth: str | int | float | Sequence[str | int | float]) -> GradeResult:
    """The comparison itself, bounded in size and in operations (:data:`MAX_GRADE_CALLS`), but not
    by the wall clock (use :func:`grade` for that)."""
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
    if joined is not None and len(joined) <= MAX_ANSWER_CHARS:
        equal, _, over = _compare_cached(joined.strip(), truths)
        if equal:
            return GradeResult(True, "ok", joined)  # several boxes that form one list of solutions
        if over:
            return _over_budget(joined)
    if len(answer) > MAX_ANSWER_CHARS:
        return GradeResult(False, "unparseable", answer[:100], f"answer longer than {MAX_ANSWER_CHARS} characters")
    equal, unreadable, over = _compare_cached(answer.strip(), truths)
    if over:
        return _over_budget(answer)
    if equal:
        return GradeResult(True, "ok", answer)
    if unreadable:
        return GradeResult(False, "unparseable", answer, "answer is outside the grammar and matches no ground truth")
    return GradeResult(False, "ok", answer)


_default_pool = None
_default_lock = threading.Lock()


def grade(
    response: str, ground_truth: str | int | float | Sequence[str | int | float], timeout_s: float = DEFAULT_TIMEOUT_S
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


__all__ = ["GradeResult", "grade", "grade_in_process", "MAX_RESPONSE_CHARS", "MAX_GRADE_CALLS"]
