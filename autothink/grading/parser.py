"""A small, safe parser from LaTeX or plain math to sympy expressions.

Model output is untrusted.  Nothing here passes text to ``eval``, ``exec``, ``sympify`` or
``parse_expr``: a recursive-descent parser accepts a fixed grammar (numbers, single-letter and
Greek symbols, ``+ - * / ^ **``, ``\\frac``, ``\\sqrt``, ``!``, a few functions) and builds the
sympy tree itself.  Limits keep every parse cheap: input length, nesting depth, digits of a
literal, and the size of powers and factorials (``(9**9)**(9**9)`` is refused in microseconds
instead of hanging the grader).

>>> parse("\\\\frac{1}{2} + 0.5")
1
>>> parse("2\\\\sqrt{3}x")
2*sqrt(3)*x
"""

from __future__ import annotations

import math
import re

import sympy

MAX_CHARS = 400
MAX_DEPTH = 40
MAX_LITERAL_DIGITS = 200
MAX_RESULT_DIGITS = 2_000  # refuse powers whose value would have more digits than this
MAX_FACTORIAL = 500


class ParseError(ValueError):
    """The text is not in the grammar, or breaks a size limit."""


_GREEK = {
    "alpha", "beta", "gamma", "delta", "epsilon", "theta", "lambda", "mu", "sigma", "phi", "omega", "tau", "rho", "psi",
}
_FUNCS = {
    "sin": sympy.sin, "cos": sympy.cos, "tan": sympy.tan, "sec": sympy.sec, "csc": sympy.csc, "cot": sympy.cot,
    "ln": sympy.log, "log": sympy.log, "exp": sympy.exp,
}

_TOKEN = re.compile(
    r"""
    (?P<num>\d+(?:\.\d*)?|\.\d+)
  | (?P<cmd>\\[a-zA-Z]+)
  | (?P<pow>\*\*)
  | (?P<op>[-+*/^(){}\[\]!|_,])
  | (?P<name>[a-zA-Z])
  | (?P<space>\s+)
    """,
    re.VERBOSE,
)


def tokenize(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise ParseError(f"unexpected character {text[pos]!r}")
        pos = m.end()
        kind = m.lastgroup
        if kind == "space":
            continue
        value = m.group()
        if kind == "pow":
            kind, value = "op", "^"
        out.append((kind, value))
    return out


class _Parser:
    def __init__(self, text: str):
        if len(text) > MAX_CHARS:
            raise ParseError(f"expression longer than {MAX_CHARS} characters")
        self.toks = tokenize(text)
        self.i = 0
        self.depth = 0

    # -- helpers
    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise ParseError("unexpected end of expression")
        self.i += 1
        return tok

    def accept(self, value: str) -> bool:
        tok = self.peek()
        if tok is not None and tok[1] == value:
            self.i += 1
            return True
        return False

    def expect(self, value: str) -> None:
        if not self.accept(value):
            tok = self.peek()
            raise ParseError(f"expected {value!r}, found {tok[1] if tok else 'end'!r}")

    def nested(self):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ParseError("expression nested too deeply")

    # -- grammar
    def parse(self) -> sympy.Expr:
        e = self.expr()
        if self.peek() is not None:
            raise ParseError(f"unexpected {self.peek()[1]!r}")
        return e

    def expr(self) -> sympy.Expr:
        self.nested()
        left = self.term()
        while (tok := self.peek()) is not None and tok[1] in "+-":
            self.take()
            right = self.term()
            left = left + right if tok[1] == "+" else left - right
        self.depth -= 1
        return left

    def _starts_atom(self, tok: tuple[str, str] | None) -> bool:
        if tok is None:
            return False
        kind, value = tok
        if kind in ("num", "name"):
            return True
        if kind == "cmd":
            return value[1:] in ("frac", "dfrac", "tfrac", "sqrt", "pi", "infty", "left") or value[1:] in _GREEK or value[1:] in _FUNCS
        return value in ("(", "{", "[")

    def term(self) -> sympy.Expr:
        left = self.unary()
        while True:
            tok = self.peek()
            if tok is not None and tok[1] in ("*", "/", "\\cdot", "\\times", "\\div"):
                self.take()
                right = self.unary()
                if tok[1] in ("/", "\\div"):
                    if right == 0:
                        raise ParseError("division by zero")
                    left = left / right
                else:
                    left = left * right
            elif self._starts_atom(tok):  # implicit multiplication: 2x, 3\sqrt{2}, x(x+1)
                left = left * self.power()
            else:
                return left

    def unary(self) -> sympy.Expr:
        if self.accept("-"):
            return -self.unary()
        if self.accept("+"):
            return self.unary()
        return self.power()

    def power(self) -> sympy.Expr:
        base = self.postfix()
        if self.accept("^"):
            exponent = self.exponent()
            return _safe_pow(base, exponent)
        return base

    def exponent(self) -> sympy.Expr:
        if self.accept("-"):
            return -self.exponent()
        tok = self.peek()
        if tok is not None and tok[1] == "{":
            return self.group("{", "}")
        return self.power()

    def postfix(self) -> sympy.Expr:
        e = self.atom()
        while self.accept("!"):
            if not (e.is_Integer and 0 <= int(e) <= MAX_FACTORIAL):
                raise ParseError(f"factorial only of integers up to {MAX_FACTORIAL}")
            e = sympy.factorial(e)
        return e

    def group(self, open_: str, close: str) -> sympy.Expr:
        self.expect(open_)
        e = self.expr()
        self.expect(close)
        return e

    def atom(self) -> sympy.Expr:
        kind, value = self.take()
        if kind == "num":
            digits = value.replace(".", "")
            if len(digits) > MAX_LITERAL_DIGITS:
                raise ParseError("number literal too long")
            return sympy.Rational(value) if "." in value else sympy.Integer(value)
        if kind == "name":
            return sympy.Symbol(value)
        if value == "(":
            e = self.expr()
            self.expect(")")
            return e
        if value == "{":
            e = self.expr()
            self.expect("}")
            return e
        if value == "[":
            e = self.expr()
            self.expect("]")
            return e
        if value == "|":
            e = self.expr()
            self.expect("|")
            return sympy.Abs(e)
        if kind == "cmd":
            name = value[1:]
            if name in ("frac", "dfrac", "tfrac"):
                num = self.frac_arg()
                den = self.frac_arg()
                if den == 0:
                    raise ParseError("division by zero")
                return num / den
            if name == "sqrt":
                if self.accept("["):
                    index = self.expr()
                    self.expect("]")
                    return _safe_pow(self.frac_arg(), 1 / index)
                return sympy.sqrt(self.frac_arg())
            if name == "pi":
                return sympy.pi
            if name == "infty":
                return sympy.oo
            if name in _GREEK:
                return sympy.Symbol(name)
            if name in _FUNCS:
                if self.accept("^"):  # \sin^2 x = (\sin x)^2
                    exponent = self.exponent()
                    return _safe_pow(_FUNCS[name](self.power()), exponent)
                if self.accept("_"):  # \log_2 x
                    base = self.frac_arg()
                    return sympy.log(self.power(), base)
                return _FUNCS[name](self.power())
            if name == "left":
                return self.atom()
        raise ParseError(f"unexpected {value!r}")

    def frac_arg(self) -> sympy.Expr:
        """A braced group, or a single digit/letter as in ``\\frac12``."""
        tok = self.peek()
        if tok is not None and tok[1] == "{":
            return self.group("{", "}")
        kind, value = self.take()
        if kind == "num":
            if len(value) > 1 and value.isdigit():  # \frac12: the first digit is the argument
                self.toks.insert(self.i, ("num", value[1:]))
                value = value[0]
            return sympy.Rational(value)
        if kind == "name":
            return sympy.Symbol(value)
        if kind == "cmd":
            self.i -= 1
            return self.atom()
        raise ParseError(f"bad argument {value!r}")


def _digits(x: sympy.Expr) -> float:
    """log10 of |x| for a number (inf for non-numbers)."""
    try:
        v = abs(float(x))
    except (TypeError, ValueError):
        return math.inf
    return math.log10(v) if v > 0 else 0.0


def _safe_pow(base: sympy.Expr, exponent: sympy.Expr) -> sympy.Expr:
    """``base ** exponent`` unless its value would be astronomically large."""
    if exponent.is_number:
        try:
            e = float(abs(exponent))
        except (TypeError, ValueError):
            raise ParseError("exponent is not a real number") from None
        if e > MAX_RESULT_DIGITS * 4:
            raise ParseError("exponent too large")
        if base.is_number and base != 0:
            if abs(_digits(base)) * e > MAX_RESULT_DIGITS:
                raise ParseError("power too large")
    elif not exponent.free_symbols:
        raise ParseError("exponent too complex")
    return sympy.Pow(base, exponent)


def parse(text: str) -> sympy.Expr:
    """Parse ``text`` (already normalised) into a sympy expression or raise :class:`ParseError`."""
    return _Parser(text).parse()
