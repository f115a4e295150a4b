"""The toy's R1-format tokenizer: the same vocabulary however its folder is loaded, digits one
token each, the R1 tags whole, and text that round-trips."""

import random

import pytest

from autothink.prompting import THINK_CLOSE, build_prompt
from autothink.toy.task import GlanceRule, make_problem, sft_example, think_response
from autothink.toy.tokenizer import build_tokenizer


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    rng = random.Random(0)
    problems = [make_problem(rng, rng.randint(1, 8)) for _ in range(400)]
    corpus = [a + b for a, b in (sft_example(p, rng, GlanceRule()) for p in problems)] + [think_response(p) for p in problems]
    out = tmp_path_factory.mktemp("tok")
    build_tokenizer(corpus, 512, out)
    return out


def test_the_vocabulary_does_not_depend_on_the_model_config_beside_it(folder, tmp_path):
    # Two toy builds once differed (vocab 393 vs 394): a rebuild found the previous build's
    # config.json in the folder, so AutoTokenizer picked Qwen2's tokenizer class, which adds an
    # "<|endoftext|>" unk token. Every consumer (vLLM, the learner, the gateway) loads the folder
    # with the model's config.json beside the tokenizer.
    import shutil

    from transformers import AutoTokenizer, Qwen2Config

    bare = AutoTokenizer.from_pretrained(str(folder))
    shutil.copytree(folder, tmp_path / "with-model")
    Qwen2Config(vocab_size=len(bare), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1, intermediate_size=64).save_pretrained(str(tmp_path / "with-model"))
    beside = AutoTokenizer.from_pretrained(str(tmp_path / "with-model"))
    assert len(beside) == len(bare) and beside.get_vocab() == bare.get_vocab()
    text = build_prompt("What is the value of $12+7$?", "ellipsis") + "12+7=19\n" + THINK_CLOSE + "\n\nThe answer is $\\boxed{19}$."
    assert beside(text, add_special_tokens=False)["input_ids"] == bare(text, add_special_tokens=False)["input_ids"]


def test_the_tokenizer_splits_digits_and_keeps_the_r1_tags(folder):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    assert tok.tokenize("1234") == ["1", "2", "3", "4"]
    text = build_prompt("What is the value of $12+7$?", "ellipsis") + "12+7=19\n" + THINK_CLOSE + "\n\nThe answer is $\\boxed{19}$."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert tok.convert_tokens_to_ids(THINK_CLOSE) in ids and len(ids) < 60  # merges make the instruction cheap
