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
    "ways|people|students|points|times|percent"
)
_TRAILING_UNIT = re.compile(rf"^(.*?\d)\s*(?:\\mbox{{\s*(?:{_UNIT_WORDS})\s*}}|(?:{_UNIT_WORDS}))(?:\^?\{{?[23]\}}?)?\.?$")
_TEXT_CMD = re.compile(r"\\(?:text|textbf|mathrm|mbox|textit|mathbf|operatorname)\s*\{([^{}]*)\}")
_THOUSANDS = re.compile(r"(?<![\d.])(\d{1,3}(?:,\d{3})+)(?![\d,])")
_ASSIGNMENT = re.compile(r"^\s*[a-zA-Z](?:_\{?\w+\}?)?\s*=(?!=)\s*(.+)$")


def strip_text_commands(s: str) -> str:
    """``\\text{...}`` and friends: dropped when math remains (``5 \\text{ cm}`` → ``5``), else
    replaced by their words (``\\text{Evelyn}`` → ``Evelyn``)."""
    without = _TEXT_CMD.sub("", s).strip()
    if without and re.search(r"[\d\\]", without):
        return without
    return _TEXT_CMD.sub(lambda m: m.group(1), s)


def normalize(answer: str) -> str:
    s = str(answer).strip()
    s = s.replace("\u2212", "-").replace("\u2013", "-").replace("\u00b0", "^\\circ")
    s = s.replace("\\$", "").replace("$", "")
    s = re.sub(r"\\(?:left|right|big|Big|bigg|Bigg)(?![a-zA-Z])", "", s)
    s = re.sub(r"(?<!\\)\\[,;:! ]|~", " ", s)
    s = s.replace("\\displaystyle", "").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|\\degree|\\circ", "", s)
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace("{,}", ",")
    s = re.sub(r"\\text\s*\{\s*(?:and|or)\s*\}", ",", s)
    s = strip_text_commands(s)
    m = _TRAILING_UNIT.match(s.strip())
    if m:
        s = m.group(1)
    s = _THOUSANDS.sub(lambda m: m.group(1).replace(",", ""), s)
    m = _ASSIGNMENT.match(s)
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
