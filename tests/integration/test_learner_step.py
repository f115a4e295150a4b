"""One learner on the toy model with real DeepSpeed (gloo, CPU): learning happens on a fixed batch."""

import random

import pytest
import torch

from autothink.batching import build_batch
from autothink.bus.messages import PromptMsg, Sample, Score, ScoredGroup
from autothink.config import DeepSpeedConfig, OptimConfig
from autothink.prompting import build_prompt
from autothink.toy.task import final_answer, make_problem, think_response

pytestmark = pytest.mark.slow


class Stage:
    alpha = beta = 0.0
    batch_balance_rate = 1.0
    penalty_slope = 2.0


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


def make_trainer(model_dir, micro, zero=2):
    from services.learner.trainer import GRPOTrainer

    optim = OptimConfig(lr=1e-4, epochs=1, mini_batch_prompts=2, micro_batch_samples=micro, gradient_checkpointing=False)
    return GRPOTrainer(model_dir, optim, DeepSpeedConfig(zero_stage=zero, dtype="float32"))


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
    # the positive-advantage (think) responses became more likely, the negative ones less
    final = trainer.logprobs(batch.samples, 0.6, 8)
    for i, adv in enumerate(batch.advantages):
        delta = float(final[i].sum() - initial[i].sum())
        assert (delta > 0) == (adv > 0), (i, adv, delta)


def test_update_does_not_depend_on_micro_batching(toy_model):
    """Three samples per pass or the whole mini-batch at once: the same token-mean gradient."""
    from transformers import AutoTokenizer

    batch = fixed_batch(AutoTokenizer.from_pretrained(toy_model[0]))
    results = []
    for micro in (3, 16):
        t = make_trainer(toy_model[0], micro=micro)
        t.train(batch, groups_per_mini_batch=4, temperature=0.6)
        results.append(t.state_dict())
    for k in results[0]:
        assert torch.allclose(results[0][k], results[1][k], atol=1e-6), k


def test_one_update_per_batch_skips_the_old_logprob_pass_and_makes_the_same_update(toy_model):
    """One epoch over one mini-batch: the loss's own forward pass is the old policy, so the
    separate no-grad pass is skipped (one forward per micro-batch instead of two), with the same
    parameters after the step and ratios of exactly 1."""
    from transformers import AutoTokenizer

    batch = fixed_batch(AutoTokenizer.from_pretrained(toy_model[0]))
    results, forwards, stats = [], [], []
    for reuse in (True, False):
        t = make_trainer(toy_model[0], micro=4)
        assert t.reuse_logprobs_for_one_update  # the toy model has no dropout
        t.reuse_logprobs_for_one_update = reuse
        calls = []
        t.engine.module.register_forward_hook(lambda *_: calls.append(1))
        stats.append(t.train(batch, groups_per_mini_batch=4, temperature=0.6))
        results.append(t.state_dict())
        forwards.append(len(calls))
    assert forwards == [4, 8]  # 16 samples, 4 a pass: 4 training passes, plus 4 no-grad ones without the shortcut
    for k in results[0]:
        assert torch.allclose(results[0][k], results[1][k], atol=1e-6), k
    assert stats[0]["approx_kl"] == 0.0 and stats[0]["clip_fraction"] == 0.0
    assert abs(stats[1]["approx_kl"]) < 1e-6 and abs(stats[0]["loss"] - stats[1]["loss"]) < 1e-6
