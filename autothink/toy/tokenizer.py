"""An R1-format tokenizer built locally with the ``tokenizers`` library.

Byte-level BPE trained on the toy corpus (so the fixed instruction costs a few tokens, not 70),
digits split one by one, the DeepSeek-R1 special tokens, and an R1 chat template.  As in the real
tokenizer, ``<think>``/``</think>`` and the role tags are added tokens that are *not* special,
so decoding keeps them in the text; only BOS/EOS are special.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from autothink.prompting import ASSISTANT, BOS, EOS, THINK_CLOSE, THINK_OPEN, USER

#: R1's template in spirit: BOS, system text, alternating User/Assistant tags, and a generation
#: prompt that opens the think block (autothink.prompting strips it to add its own strategy).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}"
    "{% elif m['role'] == 'user' %}" + USER + "{{ m['content'] }}"
    "{% elif m['role'] == 'assistant' %}" + ASSISTANT + "{{ m['content'] }}" + EOS + ""
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + THINK_OPEN + "\n{% endif %}"
)


def build_tokenizer(corpus: Iterable[str], vocab_size: int, out_dir: Path) -> None:
    """Train the BPE on ``corpus`` and save a Hugging Face tokenizer into ``out_dir``."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[BOS, EOS],
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in (BOS, EOS)])
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in (USER, ASSISTANT, THINK_OPEN, THINK_CLOSE)])

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
        # named, so that a loader which picks Qwen2's tokenizer class from the folder's config.json
        # (AutoTokenizer does once the model is saved beside it) does not add its own
        # "<|endoftext|>" unk token: the vocabulary must be the same however the folder is loaded
        unk_token=EOS,
        model_max_length=1024,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out_dir))
