"""Is a predicted final answer the same as the ground truth?

Answers are first split into structure — matrices, unions of intervals, sets (unordered),
bracketed tuples and intervals (ordered, bracket kinds must match, so ``[1, 2)`` is not
``(1, 2)``), bare comma lists (unordered solution lists) — then compared element by element as
scalars.  Two scalars are equal when their normalised text is equal, or when both parse
(:mod:`autothink.grading.parser`) and are *exactly* equal: numbers to 60 significant digits
(``0.5`` = ``\\frac{1}{2}``, ``\\frac{\\sqrt{2}}{2}`` = ``\\frac{1}{\\sqrt{2}}``, but ``3.14`` ≠
``\\pi`` and ``0.333`` ≠ ``\\frac{1}{3}``), expressions when their difference simplifies to 0.
There is no relative tolerance and no ×100 percent matching.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextvars import ContextVar

import sympy

from autothink.grading.normalize import choice_letter, normalize
from autothink.grading.parser import ParseError, parse

_MATRIX = re.compile(r"^\\begin\{([pbvBV]?matrix|array)\}(?:\{[^}]*\})?(.*)\\end\{\1\}$", re.S)
_MIXED = re.compile(r"^(-?)(\d+)\s*\\frac\{(\d+)\}\{(\d+)\}$")


#: Predicted scalars that did not parse during the current comparison (see :func:`compare`).
_unparsed: ContextVar[list[str] | None] = ContextVar("_unparsed", default=None)


def split_top_level(s: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside any brackets.

    >>> split_top_level("(1, 2), \\\\{3, 4\\\\}, 5")
    ['(1, 2)', '\\\\{3, 4\\\\}', '5']
    """
    parts, depth, start, i = [], 0, 0, 0
    while i < len(s):
        if s.startswith("\\{", i) or s.startswith("\\}", i):
            depth += 1 if s[i + 1] == "{" else -1
            i += 2
            continue
        ch = s[i]
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0 and s.startswith(sep, i):
            parts.append(s[start:i].strip())
            start = i + len(sep)
            i += len(sep)
            continue
        i += 1
    parts.append(s[start:].strip())
    return parts


def _balanced(inner: str) -> bool:
    depth = 0
    for ch in inner:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if depth < 0:
            return False
    return depth == 0


def _mixed_number(s: str) -> str:
    """``2\\frac{1}{2}`` means 2 + 1/2 (MATH's convention), not 2 · 1/2."""
    m = _MIXED.match(s)
    if not m:
        return s
    sign, whole, num, den = m.groups()
    return f"{sign}({whole}+{num}/{den})"


def _numeric_equal(a: sympy.Expr, b: sympy.Expr) -> bool:
    if a == b:
        return True
    undefined = (sympy.oo, -sympy.oo, sympy.zoo, sympy.nan)  # e.g. \log(0)*0 is nan: equal to nothing
    if a.has(*undefined) or b.has(*undefined):
        return False
    try:
        diff = sympy.N(a - b, 60)
        scale = max(abs(sympy.N(a, 60)), abs(sympy.N(b, 60)), sympy.Integer(1))
        return bool(abs(diff) <= scale * sympy.Float("1e-50", 60))
    except TypeError:  # complex or undefined
        return bool(sympy.simplify(a - b) == 0)


def scalar_equal(pred: str, truth: str) -> bool:
    """Equality of two single answers (no top-level structure)."""
    if pred == truth:
        return True
    if pred.replace(" ", "") == truth.replace(" ", ""):
        return True
    try:
        b = parse(_mixed_number(truth))
    except ParseError:
        return False
    try:
        a = parse(_mixed_number(pred))
    except ParseError:
        if (seen := _unparsed.get()) is not None:
            seen.append(pred)
        return False
    if a.is_number and b.is_number:
        return _numeric_equal(a, b)
    diff = sympy.expand(a - b)
    if diff == 0:
        return True
    return bool(sympy.simplify(diff) == 0)


def _brackets(s: str) -> tuple[str, str, str] | None:
    """(open, inner, close) for a bracketed answer ``(…)``, ``[…]`` or ``\\{…\\}``."""
    if s.startswith("\\{") and s.endswith("\\}"):
        inner = s[2:-2]
        return ("{", inner, "}") if _balanced(inner) else None
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]":
        inner = s[1:-1]
        return (s[0], inner, s[-1]) if _balanced(inner) else None
    return None


def _unordered_equal(preds: list[str], truths: list[str], eq: Callable[[str, str], bool]) -> bool:
    if len(preds) != len(truths):
        return False
    remaining = list(truths)
    for p in preds:
        for k, t in enumerate(remaining):
            if eq(p, t):
                del remaining[k]
                break
        else:
            return False
    return True


def _matrix(s: str) -> list[list[str]] | None:
    m = _MATRIX.match(s)
    if not m:
        return None
    rows = [r for r in re.split(r"\\\\", m.group(2)) if r.strip()]
    return [[c.strip() for c in r.split("&")] for r in rows]


def structured_equal(pred: str, truth: str) -> bool:
    """Compare normalised answers, recursing through their structure."""
    if pred == truth:
        return True
    mt, mp = _matrix(truth), _matrix(pred)
    if mt is not None or mp is not None:
        return (
            mt is not None and mp is not None and len(mt) == len(mp)
            and all(len(rt) == len(rp) and all(structured_equal(p, t) for p, t in zip(rp, rt)) for rp, rt in zip(mp, mt))
        )
    ut, up = split_top_level(truth, "\\cup"), split_top_level(pred, "\\cup")
    if len(ut) > 1 or len(up) > 1:
        return _unordered_equal(up, ut, structured_equal)
    bt, bp = _brackets(truth), _brackets(pred)
    if bt is not None and bt[0] == "{":
        if bp is None or bp[0] != "{":
            return False
        return _unordered_equal(split_top_level(bp[1]), split_top_level(bt[1]), structured_equal)
    tparts, pparts = split_top_level(truth), split_top_level(pred)
    if bt is not None and len(split_top_level(bt[1])) > 1:
        # a tuple or an interval: ordered, and the kind of each bracket matters
        return bp is not None and bp[0] == bt[0] and bp[2] == bt[2] and _ordered_equal(bp[1], bt[1])
    if len(tparts) > 1 or len(pparts) > 1:
        # "1, 2" is a list of solutions: order does not matter
        return _unordered_equal(pparts, tparts, structured_equal)
    return scalar_equal(pred, truth)


def _ordered_equal(pred_inner: str, truth_inner: str) -> bool:
    ps, ts = split_top_level(pred_inner), split_top_level(truth_inner)
    return len(ps) == len(ts) and all(structured_equal(p, t) for p, t in zip(ps, ts))


def answers_equal(pred: str, truth: str) -> bool:
    """The full comparison of one predicted answer with one acceptable ground truth."""
    letter = choice_letter(truth)
    if letter is not None and not re.search(r"\d", normalize(truth)):
        return choice_letter(pred) == letter
    return structured_equal(normalize(pred), normalize(truth))


def compare(pred: str, truths: list[str]) -> tuple[bool, bool]:
    """(equal to any truth, some predicted part could not be parsed) — the second tells a wrong
    answer from one the grader could not read."""
    token = _unparsed.set([])
    try:
        equal = any(answers_equal(pred, t) for t in truths)
        return equal, bool(_unparsed.get())
    finally:
        _unparsed.reset(token)
