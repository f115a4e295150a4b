"""The final answer of a response: the last ``\\boxed{}``, or the last few when they form one list.

Models write a solution list as several boxes: ``\\boxed{-2} \\quad \\text{and} \\quad \\boxed{1}``
or ``\\boxed{(2, 2)}, \\boxed{(6, 2)}``.  Boxes are joined (last first, walking back) while the
text between two of them is only a connector: punctuation and spacing, or a short phrase with the
word "and" ("papers and", "for part (a) and", ``\\) and \\( y_2 =``).  Boxes separated by prose
("first \\boxed{1}, finally \\boxed{2}", "\\boxed{1} no no no \\boxed{2}") are not a list: the
last box alone is the answer, as before.  Text after the last box (a trailing note, a second
unfinished turn ``<|im_start|>user``, even one cut off inside a new ``\boxed{``) is ignored; a
response whose only box is unclosed has no answer.

>>> final_answers("so \\\\boxed{-2} \\\\quad \\\\text{and} \\\\quad \\\\boxed{1}.")
('-2, 1', '1')
>>> final_answers("first \\\\boxed{1}, finally \\\\boxed{2}")
(None, '2')
"""

from __future__ import annotations

import re

from autothink.prompting import extract_boxed

_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_SPACING = re.compile(r"\\(?:q?quad|[,;:! ]|\(|\)|\[|\])|\$|~|\\text\s*\{([^{}]*)\}")
_MAX_CONNECTOR_CHARS = 40


def boxed_spans(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of every closed ``\\boxed{...}`` / ``\\fbox{...}``, in order."""
    spans, pos = [], 0
    while (m := _BOX.search(text, pos)) is not None:
        depth, j = 0, m.end() - 1
        for j in range(m.end() - 1, len(text)):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    spans.append((m.start(), j + 1, text[m.end() : j]))
                    break
        else:
            return spans  # unclosed: nothing after it is an answer
        pos = j + 1
    return spans


def _is_connector(between: str) -> bool:
    """True when the text between two boxes joins them into one list."""
    words = _SPACING.sub(lambda m: f" {m.group(1)} " if m.group(1) else " ", between)
    if not re.search(r"[A-Za-z0-9]", words):
        return True  # punctuation and spacing only: ", ", "\quad", "\) , \("
    return len(words.strip()) <= _MAX_CONNECTOR_CHARS and re.search(r"\band\b", words) is not None


def final_answers(response: str) -> tuple[str | None, str | None]:
    """(the joined list of the trailing boxes, or None when there is only one; the last box)."""
    last = extract_boxed(response)
    spans = boxed_spans(response)
    if last is None and spans:
        last = spans[-1][2]  # an unfinished box after the answer (a cut-off second turn) is not one
    if last is None:
        return None, None
    if len(spans) < 2 or spans[-1][2] != last:
        return None, last
    k = len(spans) - 1
    while k > 0 and _is_connector(response[spans[k - 1][1] : spans[k][0]]):
        k -= 1
    if k == len(spans) - 1:
        return None, last
    return ", ".join(s[2].strip() for s in spans[k:]), last
