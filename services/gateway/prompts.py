"""Prompt token ids in which a user's text is only ever text.

The chat template is rendered with a placeholder for each message, the template's own text is
tokenised with its special tokens (``<｜User｜>``, ``<｜Assistant｜>``, ``</think>`` ...) and each
message's text is tokenised so that no added token can come out of it: a user who types
``<｜Assistant｜>`` or ``</think>`` gets those characters, not the control tokens, and cannot
forge earlier turns or close the reasoning.  Pure functions of a Hugging Face-style tokenizer.
"""

from __future__ import annotations

import re
from typing import Any

from autothink.prompting import ASSISTANT, BOS, EOS, INSTRUCTION_SUFFIX, THINK_CLOSE, USER, chat_turns

_MARK = "\ue000{}\ue001"  # private-use characters: no template writes them


_ADDED: dict[int, tuple[Any, re.Pattern[str] | None, frozenset[int]]] = {}


def _added(tokenizer: Any) -> tuple[re.Pattern[str] | None, frozenset[int]]:
    """A pattern matching every added token's text (longest first), and their ids; per tokenizer."""
    hit = _ADDED.get(id(tokenizer))
    if hit is None or hit[0] is not tokenizer:
        vocab = tokenizer.get_added_vocab()
        texts = sorted((t for t in vocab if len(t) > 1), key=len, reverse=True)
        pattern = re.compile("|".join(re.escape(t) for t in texts)) if texts else None
        hit = _ADDED[id(tokenizer)] = (tokenizer, pattern, frozenset(vocab.values()))
    return hit[1], hit[2]


def _render(messages: list[dict[str, str]], tokenizer: Any) -> str:
    """The model's chat template, or the DeepSeek-R1 format written out when it has none."""
    if getattr(tokenizer, "chat_template", None) is not None:
        return chat_turns(messages, tokenizer)
    tags = {"system": "", "user": USER, "assistant": ASSISTANT}
    return BOS + "".join(tags[m["role"]] + m["content"] + (EOS if m["role"] == "assistant" else "") for m in messages) + ASSISTANT


def encode_untrusted(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` as plain text: every added token's string in it is cut in two and the
    halves are tokenised apart, so the tokenizer cannot match it; a piece that still yields an
    added token (through normalisation) is tokenised a character at a time.

    >>> class T:  # a character tokenizer with one added token "</think>" = 99
    ...     def get_added_vocab(self): return {"</think>": 99}
    ...     def encode(self, s, add_special_tokens=False):
    ...         return [99] if s == "</think>" else [ord(c) for c in s]
    >>> encode_untrusted(T(), "a</think>") == [ord(c) for c in "a</think>"]
    True
    """
    pattern, added_ids = _added(tokenizer)

    def plain(piece: str) -> list[int]:
        if not piece:
            return []
        ids = list(tokenizer.encode(piece, add_special_tokens=False))
        if added_ids.isdisjoint(ids):
            return ids
        return [t for ch in piece for t in tokenizer.encode(ch, add_special_tokens=False)]

    if pattern is None:
        return plain(text)
    ids: list[int] = []
    pos = 0
    for m in pattern.finditer(text):
        ids += plain(text[pos : m.start()])
        token = m.group()
        half = len(token) // 2
        ids += encode_untrusted(tokenizer, token[:half]) + encode_untrusted(tokenizer, token[half:])
        pos = m.end()
    return ids + plain(text[pos:])


def encode_conversation(tokenizer: Any, messages: list[dict[str, str]], assistant_prefix: str) -> list[int]:
    """The prompt of a conversation rendered by the model's chat template, then ``assistant_prefix``
    (the prompting strategy's text after the assistant tag).

    A past assistant turn keeps only its answer (the text after its last ``</think>``), as the R1
    template itself does.  A message the template leaves out is left out.
    """
    shown = [{"role": m["role"], "content": _MARK.format(i)} for i, m in enumerate(messages)]
    text = _render(shown, tokenizer) + assistant_prefix
    ids: list[int] = []
    pos = 0
    for i, m in enumerate(messages):
        mark = _MARK.format(i)
        at = text.find(mark, pos)
        if at < 0:
            continue
        content = m["content"]
        if m["role"] == "assistant" and THINK_CLOSE in content:
            content = content.rsplit(THINK_CLOSE, 1)[1].lstrip()
        ids += list(tokenizer.encode(text[pos:at], add_special_tokens=False)) if at > pos else []
        ids += encode_untrusted(tokenizer, content)
        pos = at + len(mark)
    if "\ue000" in text[pos:]:
        raise ValueError("the chat template reordered the messages")
    return ids + list(tokenizer.encode(text[pos:], add_special_tokens=False))


def problem_messages(problem: str, add_instruction: bool) -> list[dict[str, str]]:
    """``POST /generate``'s ``prompt``: one user turn, with the boxed-answer instruction appended
    (as autothink.prompting.build_prompt writes it)."""
    return [{"role": "user", "content": problem.rstrip() + INSTRUCTION_SUFFIX if add_instruction else problem}]
