"""One learner on the toy model with real DeepSpeed (gloo, CPU): learning happens on a fixed batch."""

import random

import pytest
import torch

from autothink.batching import build_batch
from autothink.bus.messages import PromptMsg, Sample, Score, ScoredGroup
from autothink.config import DeepSpeedConfig, OptimConfig
from autothink.prompting import build_prompt
from autothink.toy.task import final_answer, make_problem, think_response
from tests.fakes import Stage

pytestmark = pytest.mark.slow


def fixed_batch(tok, groups=4):
    """Per prompt: two correct think answers and two wrong direct answers (rewards 1 / -1)."""
    rng = random.Random(0)
    out = []
    for g in range(groups):
        p = make_problem(rng, 4)
        prompt_ids = tok(build_prompt(p.problem, "ellipsis"), add_special_tokens=False).input_ids
        texts = [think_response(p)] * 2 + ["</think>\n\n" + final_answer(sum(p.digits) + 2)] * 2
        rewards = [1.0, 1.0, -1.0, -1.0]
        samples = [Sample(t, tok(t, add_special_tokens=False).input_ids + [tok.eos_token_id], []) for t in texts]
        scores = [Score("think" if r > 0 else "no_think", True, r > 0, "ok", r, len(s.token_ids)) for r, s in zip(rewards, samples)]
        out.append(ScoredGroup(PromptMsg(group_id=f"g{g}", problem=p.problem, level=4), 0, samples, scores, prompt_ids))
    return build_batch(out, Stage())


LR = 1e-4
SGD_LR = 1.0  # the same-update tests: a step of ~1e-2 per element, far above the parameters' own rounding
UPDATE_RTOL = 1e-4


def sgd(params):
    """The same-update tests' optimiser: plain SGD, whose step is lr x gradient, so that two runs'
    parameters differ by lr x their gradients' difference.  (Adam's first step is lr x g / (|g| +
    eps): an element whose gradient is ~eps turns a float32 rounding difference into up to 2 lr,
    and how many such elements a batch has depends on the machine's kernels -- CI saw 1e-5 on
    another CPU against 5e-6 allowed.)"""
    return torch.optim.SGD(params, lr=SGD_LR)


def assert_same_update(before: dict, a: dict, b: dict, rtol: float = UPDATE_RTOL) -> None:
    """Two SGD trainers reached the same parameters from ``before``, within float32 error.

    The updates differ only in summation order (another cut of the batch, another kernel): each
    gradient element is a sum of per-token terms, whose float32 error grows at most like n x u
    (u = 2**-24 = 6e-8) times the terms' magnitudes.  ``rtol`` = 1e-4 (~1700 u) of the largest
    update element covers sums of ~1000 terms of that size; two units in the last place of each
    parameter cover the rounding of theta + step.  A wrong split (per-micro-batch normalisation, a
    sample counted twice, a lost micro-batch) changes the gradient by a factor like 3/16 or 2:
    thousands of times the bound."""
    scale = max(float((a[k].double() - before[k].double()).abs().max()) for k in before)
    assert scale > 1e-4, scale  # the step moved the weights
    for k in before:
        ulp = torch.finfo(torch.float32).eps * before[k].double().abs().clamp_min(1e-30)
        diff = (a[k].double() - b[k].double()).abs()
        bound = rtol * scale + 2 * ulp
        assert bool((diff <= bound).all()), (k, float(diff.max()), float((diff - bound).max()), scale)


def make_trainer(model_dir, micro, zero=2, budget=32_768, dtype="float32", **kw):
    from services.learner.trainer import GRPOTrainer

    optim = OptimConfig(lr=LR, epochs=1, mini_batch_prompts=2, micro_batch_samples=micro, gradient_checkpointing=False,
                        max_tokens_per_micro_batch=budget)
    return GRPOTrainer(model_dir, optim, DeepSpeedConfig(zero_stage=zero, dtype=dtype), **kw)


def initial_state(model_dir) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def test_learning_happens_on_a_fixed_batch(toy_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(toy_model[0])
    batch = fixed_batch(tok)
    trainer = make_trainer(toy_model[0], micro=3)
    before = {k: v.clone() for k, v in trainer.state_dict().items()}
    initial = trainer.logprobs(batch.samples, 0.6, 8)

    def objective() -> float:
        """sum_i A_i log p(response_i): what policy-gradient ascent increases."""
        now = trainer.logprobs(batch.samples, 0.6, 8)
        return sum(a * float(lp.sum()) for a, lp in zip(batch.advantages, now))

    values = [objective()]
    stats = []
    for _ in range(4):
        stats.append(trainer.train(batch, groups_per_mini_batch=2, temperature=0.6))
        values.append(objective())
    assert all(b > a for a, b in zip(values, values[1:])), values
    assert stats[0]["optimizer_updates"] == 2 and stats[0]["entropy"] > 0
    assert stats[-1]["clip_fraction"] >= 0 and abs(stats[0]["approx_kl"]) < 1.0
    after = trainer.state_dict()
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(moved) > len(before) // 2, moved
    # the positive-advantage (think) responses became more likely, the negative (direct) ones less,
    # on the whole; and for every prompt the mode decision moved: the direct answers' first token,
    # </think>, lost probability.  A single think response's log-probability is not asserted: it
    # ends with the very tokens the penalised direct answers are made of (</think>, "The answer
    # is $\boxed{"), so it can fall while the objective rises (seen once in CI: -4.6 nats for one
    # of eight think responses, on a toy whose direct answers weigh more in the warm start).
    final = trainer.logprobs(batch.samples, 0.6, 8)
    deltas = [float(final[i].sum() - initial[i].sum()) for i in range(len(batch.samples))]
    up = [d for d, a in zip(deltas, batch.advantages) if a > 0]
    down = [d for d, a in zip(deltas, batch.advantages) if a < 0]
    assert len(up) == len(down) == 8
    assert sum(up) / len(up) > 0 > sum(down) / len(down), deltas
    assert all(d < 0 for d in down), deltas
    for i, (s, a) in enumerate(zip(batch.samples, batch.advantages)):
        if a < 0:  # a direct answer: its first token is the mode decision
            assert not s.think
            assert float(final[i][0]) < float(initial[i][0]), (i, float(initial[i][0]), float(final[i][0]))


def test_update_does_not_depend_on_micro_batching(toy_model):
    """Three samples per pass or the whole mini-batch at once: the same token-mean gradient."""
    from transformers import AutoTokenizer

    batch = fixed_batch(AutoTokenizer.from_pretrained(toy_model[0]))
    results = []
    for micro in (3, 16):
        t = make_trainer(toy_model[0], micro=micro, optimizer=sgd)
        t.train(batch, groups_per_mini_batch=4, temperature=0.6)
        results.append(t.state_dict())
    assert_same_update(initial_state(toy_model[0]), results[0], results[1])


def test_one_update_per_batch_skips_the_old_logprob_pass_and_makes_the_same_update(toy_model):
    """One epoch over one mini-batch: the loss's own forward pass is the old policy, so the
    separate no-grad pass is skipped (one forward per micro-batch instead of two), with the same
    parameters after the step and ratios of exactly 1."""
    from transformers import AutoTokenizer

    batch = fixed_batch(AutoTokenizer.from_pretrained(toy_model[0]))
    results, forwards, stats = [], [], []
    for reuse in (True, False):
        t = make_trainer(toy_model[0], micro=4, optimizer=sgd)
        assert t.reuse_logprobs_for_one_update  # the toy model has no dropout
        t.reuse_logprobs_for_one_update = reuse
        calls = []
        t.engine.module.register_forward_hook(lambda *_, calls=calls: calls.append(1))
        stats.append(t.train(batch, groups_per_mini_batch=4, temperature=0.6))
        results.append(t.state_dict())
        forwards.append(len(calls))
    assert forwards == [4, 8]  # 16 samples, 4 a pass: 4 training passes, plus 4 no-grad ones without the shortcut
    assert_same_update(initial_state(toy_model[0]), results[0], results[1])
    assert stats[0]["approx_kl"] == 0.0 and stats[0]["clip_fraction"] == 0.0
    assert abs(stats[1]["approx_kl"]) < 1e-6 and abs(stats[0]["loss"] - stats[1]["loss"]) < 1e-6


def _same_update(model_dir, variants, batch=None, **train_kw):
    """Train a fresh SGD trainer per variant (kwargs of make_trainer) on the fixed batch, two epochs
    so the old log-prob pass runs too; every variant must reach the same parameters."""
    from transformers import AutoTokenizer

    batch = batch or fixed_batch(AutoTokenizer.from_pretrained(model_dir))
    results, stats = [], []
    for kw in variants:
        t = make_trainer(model_dir, optimizer=sgd, **kw)
        t.optim = t.optim.model_copy(update={"epochs": 2})
        stats.append(t.train(batch, groups_per_mini_batch=4, temperature=0.6, **train_kw))
        results.append(t.state_dict())
    for r in results[1:]:
        assert_same_update(initial_state(model_dir), results[0], r)
    return stats


def test_update_does_not_depend_on_the_token_budget(toy_model):
    """The whole mini-batch in one pass, or cut by a 96-token budget into many: the same update."""
    stats = _same_update(toy_model[0], [{"micro": 16}, {"micro": 16, "budget": 96}])
    assert stats[0]["micro_batches"] == 1 and stats[1]["micro_batches"] >= 8, stats
    assert stats[0]["real_tokens"] == stats[1]["real_tokens"] > 0
    assert stats[1]["padding_fraction"] < stats[0]["padding_fraction"]  # smaller passes of similar lengths pad less


def test_chunked_logprobs_make_the_same_update_as_full_logits(toy_model):
    """Chunked log-probs against full-vocabulary logits: the same update within float32 error
    (tests/unit/test_logprobs.py checks loss and gradients themselves); a wrong chunking (a token
    dropped or counted twice at a chunk edge) changes the update by far more."""
    stats = _same_update(toy_model[0], [{"micro": 4, "chunked_logprobs": False}, {"micro": 4, "logprob_chunk_tokens": 7}])
    # entropy and loss: means over ~1000 tokens of O(1) values, float32 error ~1e-7 each (1e-5: 100x room)
    assert abs(stats[0]["entropy"] - stats[1]["entropy"]) < 1e-5 and abs(stats[0]["loss"] - stats[1]["loss"]) < 1e-5


def test_packed_sequences_make_the_same_update_as_right_padding(toy_model):
    """The packed layout (sequences end to end, position ids restarting) is for flash-attention's
    varlen kernel; transformers' sdpa path builds the same block-diagonal mask from the position
    ids, which checks the layout on CPU."""
    stats = _same_update(toy_model[0], [{"micro": 16}, {"micro": 16, "packed": True}])
    assert stats[1]["padding_fraction"] == 0.0 < stats[0]["padding_fraction"]


def test_step_metrics(toy_model):
    from transformers import AutoTokenizer

    batch = fixed_batch(AutoTokenizer.from_pretrained(toy_model[0]))
    t = make_trainer(toy_model[0], micro=16)
    st = t.train(batch, groups_per_mini_batch=4, temperature=0.6)
    real = sum(len(s.prompt_ids) + len(s.response_ids) for s in batch.samples)
    longest = max(len(s.prompt_ids) + len(s.response_ids) for s in batch.samples)
    assert st["real_tokens"] == real and st["computed_tokens"] == longest * len(batch.samples)
    assert abs(st["padding_fraction"] - (1 - real / st["computed_tokens"])) < 1e-9
    assert st["tokens_per_s"] > 0 and st["seconds"] > 0
    assert 50 << 20 < st["peak_memory_bytes"] < 8 << 30  # this process's resident peak during the step


def test_bf16_training_publishes_bf16_weights(toy_model):
    """Weights go out in the training dtype: bf16, half the bytes, no fp32 copy made."""
    t = make_trainer(toy_model[0], micro=16, dtype="bfloat16", zero=0)
    state = t.state_dict()
    assert {v.dtype for v in state.values()} == {torch.bfloat16}
    assert make_trainer(toy_model[0], micro=16).state_dict()[next(iter(state))].dtype == torch.float32


# ---------------------------------------------------------------------- stage 1's mode floor
def all_think_batch(tok, groups=4):
    """Per prompt four correct think answers, reward 1 each: every advantage is 0, so the policy
    gradient is zero and whatever moves comes from the mode floor alone (the case of issue #31: a
    level gone all-think, which batch balance cannot bring back)."""
    rng = random.Random(1)
    out = []
    for g in range(groups):
        p = make_problem(rng, 1 + 2 * g)
        prompt_ids = tok(build_prompt(p.problem, "ellipsis"), add_special_tokens=False).input_ids
        text = think_response(p)
        samples = [Sample(text, tok(text, add_special_tokens=False).input_ids + [tok.eos_token_id], []) for _ in range(4)]
        scores = [Score("think", True, True, "ok", 1.0, len(s.token_ids)) for s in samples]
        out.append(ScoredGroup(PromptMsg(group_id=f"g{g}", problem=p.problem, level=1 + 2 * g), 0, samples, scores, prompt_ids))
    return build_batch(out, Stage())


def decision_p(trainer, batch, token) -> list[float]:
    """p(</think>) at the decision position of one sample per group, at temperature 0.6."""
    firsts = [batch.samples[i] for i in range(0, len(batch.samples), 4)]
    with torch.no_grad():
        close = trainer._score(firsts, 0.6, False, decision_token=token)[3]
    return [float(x) for x in close.exp()]


def test_the_mode_floor_brings_back_a_mode_the_policy_gradient_cannot(toy_model):
    """Issue #31's trap and its way out.  Direct answers penalised (the fixed batch) push the
    shared decision toward thinking until p(</think>) is below 0.25 at every prompt of an
    all-think batch.  On that batch (zero advantages) a step without a floor leaves a fresh
    trainer's weights exactly as they were; steps with a floor of 0.3 raise p(</think>) at every
    prompt.  The logged
    statistics agree with a separate pass."""
    from transformers import AutoTokenizer

    from services.learner.worker import decision_token_id

    tok = AutoTokenizer.from_pretrained(toy_model[0])
    token = decision_token_id(toy_model[0])
    assert tok.convert_ids_to_tokens(token) == "</think>"
    stuck = all_think_batch(tok)
    assert set(stuck.advantages) == {0.0} and stuck.first_token_advantages is None

    fresh = make_trainer(toy_model[0], micro=16)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    fresh.train(stuck, groups_per_mini_batch=4, temperature=0.6)  # no floor: nothing to learn from
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())

    t = make_trainer(toy_model[0], micro=16)
    penalised = fixed_batch(tok)
    for _ in range(30):
        if max(decision_p(t, stuck, token)) < 0.25:
            break
        t.train(penalised, groups_per_mini_batch=4, temperature=0.6)
    p0 = decision_p(t, stuck, token)
    assert max(p0) < 0.25, p0

    # Adam's momentum still carries the push toward thinking: the floor must overcome it too
    stats = [t.train(stuck, groups_per_mini_batch=4, temperature=0.6, mode_floor=0.3, decision_token=token) for _ in range(5)]
    p1 = decision_p(t, stuck, token)
    assert all(b > a for a, b in zip(p0, p1)), (p0, p1)
    # the first floor step's statistics: the mean of p(</think>) over the 16 samples (4 per prompt,
    # the same value) and the share below the floor; float32 passes over the same batch, so 1e-5
    # is ~100 float32 ulps of a probability
    assert abs(stats[0]["decision_p_no_think"] - sum(p0) / 4) < 1e-5, (stats[0], p0)
    assert stats[0]["decision_below_floor"] == 1.0 and stats[0]["mode_floor_penalty"] > 0


def test_the_mode_floor_update_does_not_depend_on_the_cut_or_the_head(toy_model):
    """The floor's term is divided by the same token normaliser as the policy loss: three samples a
    pass, the whole mini-batch at once, full-vocabulary logits or packed sequences give the same
    update (on the fixed batch, whose advantages are not zero, so both terms act)."""
    from transformers import AutoTokenizer

    from services.learner.worker import decision_token_id

    token = decision_token_id(toy_model[0])
    stats = _same_update(toy_model[0], [{"micro": 16}, {"micro": 3}, {"micro": 16, "chunked_logprobs": False},
                                        {"micro": 16, "packed": True}],
                         batch=fixed_batch(AutoTokenizer.from_pretrained(toy_model[0])), mode_floor=0.49, decision_token=token)
    assert all(s["mode_floor_penalty"] > 0 for s in stats), stats


def test_a_mode_floor_without_the_decision_token_is_refused(toy_model):
    from transformers import AutoTokenizer

    t = make_trainer(toy_model[0], micro=16)
    with pytest.raises(ValueError, match="decision token"):
        t.train(fixed_batch(AutoTokenizer.from_pretrained(toy_model[0])), groups_per_mini_batch=4, temperature=0.6, mode_floor=0.1)
