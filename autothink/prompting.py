"""Prompts in the DeepSeek-R1 chat format and the parsing of responses to them.

AutoThink (arXiv 2505.10832, §3.1) appends the *ellipsis prompt* ``<think>\\n...\\n`` after the
assistant tag.  Under it an R1 model either keeps reasoning (think mode) or closes ``</think>`` at
once and answers directly (no-think mode).  Everything here is plain string handling: no tokenizer
is needed except to render a model's own chat template.

>>> build_prompt("What is 1+1?", "ellipsis").endswith("<｜Assistant｜><think>\\n...\\n")
True
>>> parse_response("</think>\\n\\nThe answer is \\\\boxed{2}.").mode
'no_think'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

#: DeepScaleR's instruction, which AutoThink keeps for training and evaluation.
INSTRUCTION_SUFFIX = " Let's think step by step and output the final answer within \\boxed{}."

Strategy = Literal["standard", "no_think", "ellipsis"]
STRATEGIES: tuple[Strategy, ...] = ("standard", "no_think", "ellipsis")

#: Text placed after the assistant tag for each prompting strategy (docs/design.md §2).
ASSISTANT_PREFIX: dict[str, str] = {
    "standard": "<think>\n",
    "no_think": "<think>\nOkay, I think I have finished thinking.\n</think>\n\n",
    "ellipsis": "<think>\n...\n",
}

Mode = Literal["think", "no_think"]


def user_turn(problem: str, tokenizer: Any | None = None) -> str:
    """The conversation up to and including the assistant tag, with no ``<think>`` yet.

    Without a tokenizer the DeepSeek-R1 format is written literally.  With one, its own chat
    template renders the turn (see :func:`chat_turns`).
    """
    content = problem.rstrip() + INSTRUCTION_SUFFIX
    if tokenizer is None or getattr(tokenizer, "chat_template", None) is None:
        return f"{BOS}{USER}{content}{ASSISTANT}"
    return chat_turns([{"role": "user", "content": content}], tokenizer)


def chat_turns(messages: list[dict[str, str]], tokenizer: Any) -> str:
    """A conversation rendered by the model's chat template, up to the assistant tag.

    Newer R1 templates already append ``<think>\\n`` to the generation prompt; it is removed so
    that the strategy decides what follows.
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    stripped = text.rstrip("\n")
    if stripped.endswith(THINK_OPEN):
        text = stripped[: -len(THINK_OPEN)]
    return text


def chat_prompt(messages: list[dict[str, str]], strategy: Strategy, tokenizer: Any) -> str:
    """The prompt text for a chat conversation under ``strategy``."""
    if strategy not in ASSISTANT_PREFIX:
        raise ValueError(f"unknown prompting strategy {strategy!r}; expected one of {STRATEGIES}")
    return chat_turns(messages, tokenizer) + ASSISTANT_PREFIX[strategy]


def build_prompt(problem: str, strategy: Strategy = "ellipsis", tokenizer: Any | None = None) -> str:
    """The full prompt text for ``problem`` under ``strategy`` (standard, no_think or ellipsis)."""
    if strategy not in ASSISTANT_PREFIX:
        raise ValueError(f"unknown prompting strategy {strategy!r}; expected one of {STRATEGIES}")
    return user_turn(problem, tokenizer) + ASSISTANT_PREFIX[strategy]


@dataclass(frozen=True)
class ParsedResponse:
    """A response split the way the reward and the gateway need it.

    ``mode`` is ``no_think`` when the response closes the think block before writing anything
    (the reference checks the prefix ``</think>\\n\\n``; leading white space is tolerated here),
    otherwise ``think``.  ``format_ok`` is False when there is no ``</think>`` or no boxed answer
    after it.
    """

    mode: Mode
    reasoning: str
    answer: str
    boxed: str | None
    closed_think: bool

    @property
    def format_ok(self) -> bool:
        return self.closed_think and self.boxed is not None


def parse_response(text: str, strategy: Strategy = "ellipsis") -> ParsedResponse:
    """Split a response into reasoning and answer and classify its mode.

    Under the no-thinking prompt the think block is already closed in the prompt, so the whole
    response is the answer.

    >>> p = parse_response("Add 2 and 3.\\n</think>\\n\\nSo \\\\boxed{5}")
    >>> (p.mode, p.reasoning, p.boxed, p.format_ok)
    ('think', 'Add 2 and 3.', '5', True)
    >>> parse_response("I keep thinking forever").format_ok
    False
    """
    if strategy == "no_think":
        return ParsedResponse("no_think", "", text.strip(), extract_boxed(text), True)
    head, sep, tail = text.partition(THINK_CLOSE)
    if not sep:
        return ParsedResponse("think", text.strip(), "", None, False)
    mode: Mode = "no_think" if head.strip() == "" else "think"
    return ParsedResponse(mode, head.strip(), tail.strip(), extract_boxed(tail), True)


_BOX_COMMANDS = ("\\boxed", "\\fbox")


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``, or ``\\boxed x``) in ``text``.

    Braces nest; an unclosed box is no answer.

    >>> extract_boxed(r"so \\boxed{\\frac{1}{2}} and finally \\boxed{\\frac{3}{4}}")
    '\\\\frac{3}{4}'
    >>> extract_boxed(r"\\boxed{x") is None
    True
    >>> extract_boxed(r"\\boxed 7.")
    '7'
    """
    start = max(text.rfind(cmd) for cmd in _BOX_COMMANDS)
    if start < 0:
        return None
    cmd = next(c for c in _BOX_COMMANDS if text.startswith(c, start))
    i = start + len(cmd)
    if text.startswith(" ", i):  # "\boxed 7": the argument runs to the next space or "$"/"."
        rest = text[i + 1 :]
        arg = ""
        for ch in rest:
            if ch in " $\n":
                break
            arg += ch
        arg = arg.rstrip(".,")
        return arg or None
    if not text.startswith("{", i):
        return None
    depth = 0
    for j in range(i, len(text)):
        ch = text[j]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None
