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
    if structured_equal(normalize(pred), normalize(truth)):
        return True
    return extended_equal(pred, truth)


def compare(pred: str, truths: list[str]) -> tuple[bool, bool]:
    """(equal to any truth, some predicted part could not be parsed) — the second tells a wrong
    answer from one the grader could not read."""
    token = _unparsed.set([])
    try:
        equal = any(answers_equal(pred, t) for t in truths)
        return equal, bool(_unparsed.get())
    finally:
        _unparsed.reset(token)


# ------------------------------------------------------------------------------------------------
# The second pass: forms of the same answer that need more than normalising text.
#
# It runs only when the first pass (normalise, then :func:`structured_equal`) says "different",
# so the common path costs nothing more.  Each rule below rewrites both answers into a plainer
# form and compares again; none adds tolerance.  Worked examples (all from math-verify's suite):
#
# * relations: ``5 \geq x`` = ``x \leq 5``, ``-x > -1`` = ``x < 1``, ``2x+4y-3=0`` =
#   ``y=-\frac{1}{2}x+\frac{3}{4}`` (the sides' difference agrees up to a constant factor, positive
#   for an inequality); a one-variable inequality or chain is an interval: ``-2 \le x \le 7`` =
#   ``x \in [-2,7]``, ``-793 < a < 10`` = ``(-793, 10)``
# * chained equalities take their last side (``x = 5+5+1 = 11`` is 11); ``lhs \approx v`` is v
#   when lhs is a name, else lhs (``x = \frac13 \approx 0.33`` is 1/3)
# * labels: ``(p,q)=(3,2)``, ``|AB|=1``, ``f(x)=1``, ``A:B=1`` are their right side; lists of
#   labelled values match label by label in any order (``a_3 = 2, a_{37} = 19``)
# * lists: ``;`` separates like ``,``; ``p=5,q=2;p=7,q=2`` is ``(5,2),(7,2)``; "and"/"or" join
#   items; ``\pm a`` is the two values; a set ``\{…\}`` equals the same bare list in any order; a
#   bare list (or ``{…}`` without backslashes, which LaTeX renders as a bare list) equals a tuple
#   with the same items in the same order
# * a comma decimal ``1,22`` is 1.22 when compared with a single number and the comma cannot be
#   a thousands separator (not exactly three digits after it, or a leading ``0,``)
# * a decimal printed with 12 or more significant digits equals a fraction with denominator up
#   to 10^6 when it is that fraction correctly rounded or cut to its last digit: ``0.0833333333333333``
#   is 1/12, but ``0.333`` is not 1/3 and ``3.14`` is not π (π is not a fraction)
# * a matrix in brackets ``\left[\begin{array}…\end{array}\right]`` is the matrix
# ------------------------------------------------------------------------------------------------

_REL_SUBS = (
    (re.compile(r"\\leqslant|\\leq|\\le(?![a-zA-Z])|<="), "≤"),
    (re.compile(r"\\geqslant|\\geq|\\ge(?![a-zA-Z])|>="), "≥"),
    (re.compile(r"\\neq|\\ne(?![a-zA-Z])|(?<![\d)!])!="), "≠"),
    (re.compile(r"\\lt(?![a-zA-Z])"), "<"),
    (re.compile(r"\\gt(?![a-zA-Z])"), ">"),
)
_REL_CHARS = "=≤≥≠<>"
_FLIP = {"<": ">", ">": "<", "≤": "≥", "≥": "≤", "=": "=", "≠": "≠"}
_IN_SET = re.compile(r"^[A-Za-z](?:_\{?\w+\}?)?\s*\\in\s*")
_BRACKETED_MATRIX = re.compile(r"^[(\[]\s*(\\begin\{([a-zA-Z]*matrix|array)\}.*\\end\{\2\})\s*[)\]]$", re.S)
_COMMA_DECIMAL = re.compile(r"^(-?)(\d+),(\d+)$")
_LONG_DECIMAL = re.compile(r"^-?(\d*)\.(\d+)$")
_LABEL_JUNK = re.compile(r"_\{[^{}]*\}|_\w|\\(?:frac|mathrm|text|overline|angle|triangle)|[\s{}]")


def _relations(s: str) -> str:
    for pattern, char in _REL_SUBS:
        s = pattern.sub(char, s)
    return s.replace("\\approx", "≈")


def split_relation(s: str, chars: str = _REL_CHARS) -> tuple[list[str], list[str]]:
    """(sides, operators) of ``s`` split at top-level relation characters (after :func:`_relations`).

    >>> split_relation("1≤|z|≤2")
    (['1', '|z|', '2'], ['≤', '≤'])
    """
    sides, ops, depth, start = [], [], 0, 0
    for i, ch in enumerate(s):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0 and ch in chars:
            sides.append(s[start:i].strip())
            ops.append(ch)
            start = i + 1
    sides.append(s[start:].strip())
    return sides, ops


def is_label(s: str) -> bool:
    """A name rather than a value: ``x``, ``a_{37}``, ``f(x)``, ``(p,q)``, ``|AB|``, ``A:B``,
    ``\\frac{NO}{BO}``, ``S_{MBCN}:S`` — letters and brackets, no digits or arithmetic."""
    core = _LABEL_JUNK.sub("", s)
    return bool(core) and re.fullmatch(r"[A-Za-z()|:,'\\]+", core) is not None and re.search(r"[A-Za-z]", core) is not None


def _value(element: str) -> tuple[str | None, str]:
    """(label or None, value) of one answer element: ``x = 5+5+1 = 11`` → (None, '11'),
    ``a_3 = 2`` → ('a_3', '2'), ``x \\approx 11`` → ('x', '11')."""
    sides, ops = split_relation(element, "=")
    label = None
    if len(sides) >= 3:
        value = sides[-1]
        label = sides[0] if is_label(sides[0]) else None
    elif len(sides) == 2 and is_label(sides[0]):
        label, value = sides
    else:
        value = element
    if "≈" in value:
        left, _, right = value.partition("≈")
        if is_label(left.strip()):
            label, value = label or left.strip(), right
        else:
            value = left
    return (re.sub(r"[\s{}]", "", label) if label else None), value.strip()


def _expand_pm(value: str) -> list[str]:
    """``a \\pm b`` → ``a + b``, ``a - b`` (one top-level ``\\pm``; others stay as written)."""
    if value.count("\\pm") != 1 or "\\mp" in value:
        return [value]
    head, _, tail = value.partition("\\pm")
    return [f"{head}+{tail}".strip(), f"{head}-{tail}".strip()]


def _plain_list(s: str) -> tuple[list[tuple[str | None, str]], str]:
    """The elements of an answer as (label, value) pairs, and how they were grouped: ``set`` for
    ``\\{…\\}``, ``bare`` for an unbracketed list, ``one`` for a single element."""
    s = s.strip()
    kind = "one"
    if s.startswith("\\{") and s.endswith("\\}") and _balanced(s[2:-2]):
        s, kind = s[2:-2], "set"
    elif s.startswith("{") and s.endswith("}") and _balanced(s[1:-1]):
        s = s[1:-1]  # {1,3} without backslashes: LaTeX grouping, printed as a bare list
    s = re.sub(r",?\s*\b(?:and|or)\b\s*", ", ", s).strip(" ,")
    groups = split_top_level(s, ";")
    if len(groups) > 1:
        tuples = []
        for g in groups:
            items = [_value(x) for x in split_top_level(g)]
            tuples.append(f"({', '.join(v for _, v in items)})" if len(items) > 1 and all(lab for lab, _ in items) else g)
        s = ", ".join(tuples)
    elements = [_value(x) for x in split_top_level(s.replace(";", ","))]
    if len(elements) > 1 and kind == "one":
        kind = "bare"
    expanded = [(lab, v) for lab, value in elements for v in _expand_pm(value)]
    if len(expanded) > 1 and kind == "one":
        kind = "bare"
    return expanded, kind


def _as_interval(s: str) -> tuple[str | None, str] | None:
    """(variable, interval text) of a one-variable inequality, chain or ``x \\in I``; else None."""
    m = _IN_SET.match(s)
    if m:
        return re.sub(r"[\s{}]", "", s[: m.end()].replace("\\in", "")), s[m.end() :].strip()
    sides, ops = split_relation(s)
    if not ops or any(o in "=≠" for o in ops):
        return None
    if len(sides) == 3 and len(ops) == 2:
        if all(o in "<≤" for o in ops):
            lo, var, hi, (op_lo, op_hi) = sides[0], sides[1], sides[2], ops
        elif all(o in ">≥" for o in ops):
            hi, var, lo, (op_hi, op_lo) = sides[0], sides[1], sides[2], ops
        else:
            return None
        return var, f"{'(' if op_lo in '<>' else '['}{lo}, {hi}{')' if op_hi in '<>' else ']'}"
    if len(sides) == 2:
        var, op, bound = sides[0], ops[0], sides[1]
        if not is_label(var):
            var, op, bound = bound, _FLIP[op], var
        if not is_label(var):
            return None
        return var, {"<": f"(-\\infty, {bound})", "≤": f"(-\\infty, {bound}]", ">": f"({bound}, \\infty)", "≥": f"[{bound}, \\infty)"}[op]
    return None


def _relation_equal(p: str, t: str) -> bool | None:
    """Equality of two relations ``lhs op rhs`` (None when either is not one relation)."""
    (ps, pops), (ts, tops) = split_relation(p), split_relation(t)
    if len(pops) != 1 or len(tops) != 1 or "≈" in p + t:
        return None
    try:
        pl, pr, tl, tr = (parse(_mixed_number(x)) for x in (ps[0], ps[1], ts[0], ts[1]))
    except ParseError:
        return None
    pop, top = pops[0], tops[0]
    if pop in ">≥":
        pl, pr, pop = pr, pl, _FLIP[pop]
    if top in ">≥":
        tl, tr, top = tr, tl, _FLIP[top]
    if pop != top:
        return False
    dp, dt = sympy.expand(pl - pr), sympy.expand(tl - tr)
    if dt == 0 or dp == 0:
        return dp == dt
    ratio = sympy.cancel(dp / dt)
    if not ratio.is_number or ratio == 0:
        return False
    return bool(ratio > 0) if pop in "<≤" else True


def _decimal_matches_fraction(decimal: str, truth: sympy.Expr) -> bool:
    """A decimal with 12+ significant digits that is ``truth`` (a fraction) rounded or cut."""
    m = _LONG_DECIMAL.match(decimal)
    if not m or not (truth.is_Rational and truth.q <= 10**6):
        return False
    digits = (m.group(1) + m.group(2)).lstrip("0")
    if len(digits) < 12:
        return False
    return abs(sympy.Rational(decimal) - truth) < sympy.Rational(1, 10 ** len(m.group(2)))


def _loose_scalar_equal(p: str, t: str) -> bool:
    if scalar_equal(p, t):
        return True
    for a, b in ((p, t), (t, p)):
        m = _COMMA_DECIMAL.match(a)
        if m and (len(m.group(3)) != 3 or m.group(2) == "0") and "," not in b:
            if scalar_equal(f"{m.group(1)}{m.group(2)}.{m.group(3)}", b):
                return True
    try:
        return _decimal_matches_fraction(p, parse(t)) or _decimal_matches_fraction(t, parse(p))
    except ParseError:
        return False


def _element_equal(p: str, t: str) -> bool:
    if p == t or structured_equal(p, t):
        return True
    rel = _relation_equal(p, t)
    if rel is not None:
        return rel
    ip, it = _as_interval(p), _as_interval(t)
    if ip is not None or it is not None:
        vp, sp = ip if ip is not None else (None, p)
        vt, st = it if it is not None else (None, t)
        if vp is not None and vt is not None and vp != vt:
            return False
        if (sp, st) != (p, t) and structured_equal(sp, st):
            return True
    mp, mt = _BRACKETED_MATRIX.match(p), _BRACKETED_MATRIX.match(t)
    if mp or mt:
        return structured_equal(mp.group(1) if mp else p, mt.group(1) if mt else t)
    if "," not in p and "," not in t or _COMMA_DECIMAL.match(p) or _COMMA_DECIMAL.match(t):
        return _loose_scalar_equal(p, t)
    return False


def extended_equal(pred: str, truth: str) -> bool:
    """The second pass (see the block comment above): relations, labels, chains, lists."""
    p, t = _relations(normalize(pred, strip_assignment=False)), _relations(normalize(truth, strip_assignment=False))
    if _element_equal(p, t):
        return True
    pl, pkind = _plain_list(p)
    tl, tkind = _plain_list(t)
    if len(pl) == 1 and len(tl) == 1:
        return (pl[0][1], tl[0][1]) != (p, t) and _element_equal(pl[0][1], tl[0][1])
    if len(pl) != len(tl):
        # a tuple against a bare list: the tuple's items in order
        for (one, kind_one), (many, kind_many) in (((pl, pkind), (tl, tkind)), ((tl, tkind), (pl, pkind))):
            if len(one) == 1 and len(many) > 1 and kind_one == "one" and kind_many == "bare":  # never a set
                b = _brackets(one[0][1])
                if b is not None and b[0] == "(" and b[2] == ")":
                    items = split_top_level(b[1])
                    first = many is pl
                    return len(items) == len(many) and all(
                        _element_equal(m[1], i) if first else _element_equal(i, m[1]) for m, i in zip(many, items)
                    )
        return False
    plabels, tlabels = [lab for lab, _ in pl], [lab for lab, _ in tl]
    if all(plabels) and all(tlabels) and len(set(plabels)) == len(pl) and set(plabels) == set(tlabels):
        truth_by_label = dict(tl)
        return all(_element_equal(v, truth_by_label[lab]) for lab, v in pl)
    return _unordered_equal([v for _, v in pl], [v for _, v in tl], _element_equal)
