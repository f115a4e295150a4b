"""Token-budget micro-batches: every sample once, within budget, little padding, and every rank
running the same number of micro-batches with about the same tokens."""

import random

import pytest

from autothink.packing import micro_batch_cost, plan_micro_batches, plan_tokens


def _bimodal(rng, n):
    """AutoThink's lengths: no-think answers of a few hundred tokens, think answers of thousands."""
    return [rng.randint(150, 600) if rng.random() < 0.6 else rng.randint(2000, 12000) for _ in range(n)]


def _check(plan, lengths, world, budget, cap=None, padded=True):
    assert len(plan) == world
    assert len({len(rank) for rank in plan}) == 1, [len(r) for r in plan]  # same count on every rank
    seen = sorted(k for rank in plan for mb in rank for k in mb)
    assert seen == list(range(len(lengths)))  # every sample exactly once
    for rank in plan:
        for mb in rank:
            if len(mb) > 1:
                assert micro_batch_cost([lengths[k] for k in mb], padded) <= budget
            if cap:
                assert len(mb) <= cap


@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("padded", [True, False])
def test_random_bimodal_batches(world, padded):
    rng = random.Random(world)
    for _trial in range(20):
        lengths = _bimodal(rng, rng.randint(1, 64))
        budget = rng.choice([12_000, 16_384, 32_768, 65_536])
        plan = plan_micro_batches(lengths, world, budget, padded=padded)
        _check(plan, lengths, world, budget, padded=padded)
        real, computed = plan_tokens(plan, lengths, padded)
        assert real == sum(lengths)
        if not padded:
            assert computed == real + sum(min(lengths) for rank in plan for mb in rank if not mb)


def test_the_issue_example_has_little_padding():
    """30 no-think answers of 256 tokens and 2 think answers of 8192, each after a 128-token prompt."""
    lengths = [128 + 256] * 30 + [128 + 8192] * 2
    for budget in (16_384, 24_576, 32_768, 65_536):
        plan = plan_micro_batches(lengths, 1, budget)
        real, computed = plan_tokens(plan, lengths)
        assert computed / real <= 1.10, (budget, plan)
    # a fixed 16 samples a pass, as the learner did before, pads 14 short answers to 8320 tokens
    before = micro_batch_cost(sorted(lengths, reverse=True)[:16]) + micro_batch_cost(lengths[:16])
    assert before / sum(lengths) > 4


def test_least_padding_plus_a_price_per_pass():
    # 10 x 100 within 500 tokens: 2 micro-batches of 5
    assert [len(mb) for mb in plan_micro_batches([100] * 10, 1, 500)[0]] == [5, 5]
    # [400, 300, 300, 100, 100] within 1200: two micro-batches either way; [400] + [300, 300, 100, 100]
    # computes 400 + 1200 tokens, [400, 300] + [300, 100, 100] 800 + 900, [400, 300, 300] + [100, 100]
    # 1200 + 200 -> the last (200 tokens of padding)
    plan = plan_micro_batches([400, 300, 300, 100, 100], 1, 1200)
    assert plan == [[[0, 1, 2], [3, 4]]]
    # a budget large enough for everything does not put short answers beside long ones
    lengths = [384] * 30 + [8320] * 2
    plan = plan_micro_batches(lengths, 1, 1_000_000)
    assert plan == [[[30, 31], list(range(30))]] and plan_tokens(plan, lengths) == (28160, 28160)
    # but close lengths share a pass rather than pay for one more (100 tokens of padding < a pass)
    assert plan_micro_batches([110, 100], 1, 1000) == [[[0, 1]]]
    # the cap on samples per micro-batch still holds under a generous budget
    plan = plan_micro_batches([10] * 16, 1, 10_000, max_samples=4)
    assert [len(mb) for mb in plan[0]] == [4, 4, 4, 4]


def test_a_sample_over_budget_gets_a_micro_batch_of_its_own():
    plan = plan_micro_batches([5000, 100, 100], 1, 1000)
    assert plan == [[[0], [1, 2]]]


def test_ranks_carry_about_the_same_tokens():
    rng = random.Random(7)
    ratios = []
    for _ in range(30):
        lengths = _bimodal(rng, 64)
        plan = plan_micro_batches(lengths, 4, 32_768)
        loads = [sum(micro_batch_cost([lengths[k] for k in mb]) for mb in rank) for rank in plan]
        ratios.append(max(loads) * 4 / sum(loads))
    assert sorted(ratios)[len(ratios) // 2] <= 1.10, ratios  # median rank imbalance
    assert max(ratios) <= 1.5, ratios


def test_more_ranks_than_samples_gives_dummy_passes():
    plan = plan_micro_batches([30, 20, 10], 4, 1000)
    assert [len(r) for r in plan] == [1, 1, 1, 1]
    assert sorted(len(mb) for r in plan for mb in r) == [0, 1, 1, 1]
    real, computed = plan_tokens(plan, [30, 20, 10])
    assert (real, computed) == (60, 70)  # the dummy pass runs the shortest sample


def test_packed_layout_counts_no_padding():
    lengths = [8000, 300, 300, 300, 7000]
    plan = plan_micro_batches(lengths, 1, 9000, padded=False)
    _check(plan, lengths, 1, 9000, padded=False)
    assert len(plan[0]) == 2 and plan_tokens(plan, lengths, padded=False) == (15900, 15900)


def test_one_rank_without_a_budget_is_one_micro_batch():
    assert plan_micro_batches([3, 2, 1]) == [[[0, 1, 2]]]
    with pytest.raises(ValueError):
        plan_micro_batches([1], 0)


def test_the_experiment_says_when_a_response_cannot_fit_the_budget():
    from autothink.config import ConfigError, load_config

    assert load_config("paper").optim.max_tokens_per_micro_batch >= 24_576
    with pytest.raises(ConfigError, match="max_response_tokens=24576 exceeds optim.max_tokens_per_micro_batch=16384"):
        load_config("paper", ["optim.max_tokens_per_micro_batch=16384"], environ={})
