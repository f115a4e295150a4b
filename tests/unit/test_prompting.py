"""Prompts in the DeepSeek-R1 format, mode classification and boxed-answer extraction."""

import pytest

from autothink.prompting import build_prompt, extract_boxed, parse_response

HEAD = "<｜begin▁of▁sentence｜><｜User｜>What is 2+3? Let's think step by step and output the final answer within \\boxed{}.<｜Assistant｜>"


def test_three_strategies_exact_text():
    assert build_prompt("What is 2+3?", "standard") == HEAD + "<think>\n"
    assert build_prompt("What is 2+3?", "ellipsis") == HEAD + "<think>\n...\n"
    assert build_prompt("What is 2+3?", "no_think") == HEAD + "<think>\nOkay, I think I have finished thinking.\n</think>\n\n"
    assert build_prompt("What is 2+3?  \n", "ellipsis") == HEAD + "<think>\n...\n"  # trailing space trimmed


def test_unknown_strategy():
    with pytest.raises(ValueError, match="unknown prompting strategy 'maybe'"):
        build_prompt("x", "maybe")


class TemplateTokenizer:
    """Stands in for a HF tokenizer whose R1 chat template already appends "<think>\\n"."""

    chat_template = "r1"

    def __init__(self, appends_think: bool):
        self.appends_think = appends_think

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert tokenize is False and add_generation_prompt is True
        text = "<｜begin▁of▁sentence｜>" + "".join(f"<｜User｜>{m['content']}" for m in messages) + "<｜Assistant｜>"
        return text + ("<think>\n" if self.appends_think else "")


@pytest.mark.parametrize("appends_think", [True, False])
def test_tokenizer_template_think_tag_not_doubled(appends_think):
    tok = TemplateTokenizer(appends_think)
    assert build_prompt("What is 2+3?", "ellipsis", tok) == HEAD + "<think>\n...\n"


def test_parse_no_think():
    p = parse_response("</think>\n\nIt is \\boxed{5}.")
    assert (p.mode, p.reasoning, p.answer, p.boxed, p.format_ok) == ("no_think", "", "It is \\boxed{5}.", "5", True)
    # white space before the closing tag still counts as closing at once
    assert parse_response("\n</think>\n\n\\boxed{5}").mode == "no_think"


def test_parse_think():
    p = parse_response("2 then 5.\n</think>\n\nSo \\boxed{5}")
    assert (p.mode, p.reasoning, p.boxed, p.format_ok) == ("think", "2 then 5.", "5", True)


def test_format_errors():
    # no </think>: think mode that never finished
    p = parse_response("2 then 5, \\boxed{5}")
    assert (p.mode, p.closed_think, p.boxed, p.format_ok) == ("think", False, None, False)
    # closed but no boxed answer after it; a box inside the reasoning does not count
    p = parse_response("maybe \\boxed{5}\n</think>\n\nfive")
    assert (p.mode, p.boxed, p.format_ok) == ("think", None, False)
    # an unclosed box is no answer
    assert not parse_response("</think>\n\n\\boxed{5").format_ok


def test_parse_under_no_thinking_prompt():
    p = parse_response("The answer is \\boxed{12}.", strategy="no_think")
    assert (p.mode, p.reasoning, p.boxed, p.format_ok) == ("no_think", "", "12", True)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("\\boxed{5}", "5"),
        ("first \\boxed{1} then \\boxed{2}", "2"),
        ("\\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{1}{\\sqrt{2}}"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
        ("\\fbox{7}", "7"),
        ("\\boxed{3} and \\fbox{4}", "4"),
        ("so $\\boxed 42$.", "42"),
        ("\\boxed 42.", "42"),
        ("\\boxed{}", ""),
        ("\\boxed{5", None),
        ("no box at all", None),
        ("\\boxed", None),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected
