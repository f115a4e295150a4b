"""The synthetic task: problems, traces, the warm start's mix of modes and its noise rule."""

import random
from collections import Counter

import pytest

from autothink.prompting import parse_response
from autothink.toy.task import (
    LEVELS,
    NoiseRule,
    direct_value,
    eval_split,
    make_problem,
    sft_example,
    think_response,
    think_trace,
    train_split,
)


def test_problem_reads_like_the_real_data():
    p = make_problem(random.Random(1), 3)
    assert len(p.digits) == 4 and all(1 <= d <= 9 for d in p.digits)
    assert p.problem == "What is the value of $" + "+".join(map(str, p.digits)) + "$?"
    assert p.answer == str(sum(p.digits))


def test_think_trace_is_a_running_sum():
    assert think_trace((9, 8, 7)) == "9+8=17\n17+7=24\n"
    r = parse_response(think_response(make_problem(random.Random(0), 8)))
    assert r.mode == "think" and r.format_ok and r.reasoning.count("\n") == 7


def test_noise_rule_matches_the_design_fallback():
    rule = NoiseRule()
    assert [rule.probability(level) for level in LEVELS] == pytest.approx([0, 0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.0])
    rng = random.Random(0)
    easy = [make_problem(rng, 2) for _ in range(200)]
    assert all(direct_value(p, rng, rule) == sum(p.digits) for p in easy)
    hard = [make_problem(rng, 8) for _ in range(200)]
    errors = [direct_value(p, rng, rule) - sum(p.digits) for p in hard]
    assert all(1 <= abs(e) <= 3 for e in errors)
    assert {e > 0 for e in errors} == {True, False}  # off in both directions


def test_warm_start_mode_mix_is_flat_across_levels():
    rng = random.Random(0)
    rule = NoiseRule()
    for level in (1, 8):
        modes = Counter()
        for _ in range(2000):
            prompt, response = sft_example(make_problem(rng, level), rng, rule)
            if prompt.endswith("<think>\n...\n"):
                modes[parse_response(response).mode] += 1
        rate = modes["no_think"] / sum(modes.values())
        assert 0.45 < rate < 0.55, (level, rate)


def test_splits_are_deterministic_and_disjoint():
    ev = eval_split(0, 16)
    assert [p.problem for p in ev] == [p.problem for p in eval_split(0, 16)]
    assert Counter(p.level for p in ev) == {level: 16 for level in LEVELS}
    tr = train_split(0, 3000, {p.problem for p in ev})
    assert [p.problem for p in tr[:50]] == [p.problem for p in train_split(0, 50, {p.problem for p in ev})]
    held_out = {p.problem for p in ev if p.level > 1}
    assert not held_out & {p.problem for p in tr}
