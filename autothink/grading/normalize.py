"""String normalisation of final answers, before any parsing.

Each rule removes a way of writing the same answer differently: dollar signs and spacing
commands, ``\\dfrac``/``\\tfrac``, ``\\left``/``\\right``, degrees, a percent sign, ``\\text{}``
units after a number, thousands separators, a leading ``x =``, the Unicode minus.  Nothing is
evaluated here.

>>> normalize("$\\\\dfrac{1}{2}$")
'\\\\frac{1}{2}'
>>> normalize("x = 1{,}000 \\\\text{ cm}")
'1000'
>>> normalize("90^\\\\circ"), normalize("25\\\\%"), normalize("−3")
('90', '25', '-3')
"""

from __future__ import annotations

import re

_UNIT_WORDS = (
    "cm|mm|km|m|meters?|inches|inch|in|feet|foot|ft|yards?|miles?|units?|sq|square|cubic|degrees?|"
    "dollars?|cents?|hours?|minutes?|seconds?|days?|weeks?|years?|mph|kg|g|grams?|pounds?|lbs?|liters?|ml|"
    "ways|people|students|points|times|percentage|percent|pct|yuan|euros?"
)
# a unit word, or a currency sign / squared unit written in Unicode (1,000.99€, 12 m²)
_TRAILING_UNIT = re.compile(
    rf"^(.*?\d)\s*(?:\\mbox{{\s*(?:{_UNIT_WORDS})\s*}}|(?:{_UNIT_WORDS})|[a-z]{{0,2}}[²³]|[€£¥])(?:\^?\{{?[23]\}}?)?\.?$"
)
_TEXT_CMD = re.compile(r"\\(?:text|textbf|textnormal|textrm|textup|textsf|mathrm|mbox|textit|mathbf|operatorname)\s*\{([^{}]*)\}")
# 1,000,000 but not 0,111 (a comma decimal) nor (12,102) / [1,100] (a pair or an interval)
_THOUSANDS = re.compile(r"(?<![\d.(\[])([1-9]\d{0,2}(?:,\d{3})+)(?![\d,)\]])")
_ASSIGNMENT = re.compile(r"^\s*[a-zA-Z](?:_\{?\w+\}?)?\s*=(?!=)\s*(.+)$")


def strip_text_commands(s: str) -> str:
    """``\\text{...}`` and friends: dropped when math remains (``5 \\text{ cm}`` → ``5``), else
    replaced by their words (``\\text{Evelyn}`` → ``Evelyn``)."""
    without = _TEXT_CMD.sub("", s).strip()
    if without and re.search(r"[\d\\]", without):
        return without
    return _TEXT_CMD.sub(lambda m: m.group(1), s)


def normalize(answer: str, strip_assignment: bool = True) -> str:
    """The canonical text of an answer; ``strip_assignment=False`` keeps a leading ``x =`` (the
    relation comparison needs ``y = 2x`` whole)."""
    s = str(answer).strip()
    s = s.replace("\u2212", "-").replace("\u2013", "-").replace("\u00b0", "^\\circ")
    s = s.replace("\\$", "").replace("$", "")
    s = re.sub(r"\\(?:left|right|big|Big|bigg|Bigg)(?![a-zA-Z])", "", s)
    # digit-group separators written as spacing: 11,\! 111 and 14 {, }916 and 1\,000
    s = re.sub(r"(?<=\d)\s*,\s*\\!\s*(?=\d{3})|(?<=\d)\s*\{,\s*\}\s*(?=\d{3})", ",", s)
    s = re.sub(r"(?<=\d)\\[,!](?=\d{3}(?!\d))", "", s)
    s = s.replace("\\!", "")  # a negative thin space separates nothing
    s = re.sub(r"(?<!\\)\\[,;:! ]|~|\\q?quad", " ", s)
    s = s.replace("\\displaystyle", "").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\cfrac", "\\frac")
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|\\degree|\\circ", "", s)
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace("{,}", ",")
    s = re.sub(r",?\s*\\text\s*\{\s*(?:and|or)\s*\}", ",", s)
    s = strip_text_commands(s)
    m = _TRAILING_UNIT.match(s.strip())
    if m:
        s = m.group(1)
    s = _THOUSANDS.sub(lambda m: m.group(1).replace(",", ""), s)
    m = _ASSIGNMENT.match(s) if strip_assignment else None
    if m and "=" not in m.group(1) and "," not in m.group(1):
        s = m.group(1)
    s = s.strip().rstrip(".").strip()
    s = re.sub(r"\s+", " ", s)
    s = re.sub(r"\\sqrt\s*(\d)", r"\\sqrt{\1}", s)
    return s


_CHOICE = re.compile(r"^\(?\s*([A-E])\s*\)?(?:\s.*)?$")


def choice_letter(answer: str) -> str | None:
    """The multiple-choice letter of an answer such as ``\\textbf{(C)}``, ``(C) 12`` or ``C``."""
    s = _TEXT_CMD.sub(lambda m: m.group(1), str(answer)).replace("$", "").strip()
    for candidate in (s, normalize(s)):
        m = _CHOICE.match(candidate)
        if m:
            return m.group(1)
    return None
