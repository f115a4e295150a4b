"""The synthetic task: problems, traces, the warm start's mix of modes and its direct-answer heuristic."""

import random
from collections import Counter

import pytest

from autothink.prompting import parse_response
from autothink.toy.task import (
    LEVELS,
    RECHECK_PHRASES,
    GlanceRule,
    RecheckRule,
    overthink_trace,
    eval_split,
    is_direct,
    loss_weights,
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


def test_glance_rule_by_hand():
    rule = GlanceRule()  # the first 3 digits exactly, a later digit only if <= 4
    assert rule.value((9, 8)) == 17 and rule.value((9, 8, 7)) == 24  # levels 1-2: exact
    assert rule.value((9, 8, 7, 4)) == 28  # 4 is small: exact
    assert rule.value((9, 8, 7, 5)) == 24  # 5 is missed: 24, not 29
    assert rule.value((1, 1, 1, 9, 2, 9, 3, 4, 9)) == 3 + 2 + 3 + 4  # level 8: the three 9s are missed
    assert GlanceRule(span=1, small=0).value((5, 5, 5)) == 5
    with pytest.raises(ValueError, match="span"):
        GlanceRule(span=0)
    with pytest.raises(ValueError, match="small"):
        GlanceRule(small=10)


def test_direct_demonstrations_are_systematic_not_random():
    # the same problem always gets the same direct answer: a miss is learnt as the answer, not
    # noise around the true sum that RL could sharpen away
    rng = random.Random(0)
    p = make_problem(random.Random(5), 6)
    values = {GlanceRule().value(p.digits) for _ in range(20)}
    assert len(values) == 1
    answers = set()
    for _ in range(400):
        prompt, response = sft_example(p, rng)
        if is_direct(response):
            answers.add(response.split("boxed{")[1].split("}")[0])
    assert answers == {str(GlanceRule().value(p.digits))}
    # and a miss is always short of the truth: the heuristic drops digits, it never adds one
    hard = [make_problem(rng, 8) for _ in range(200)]
    assert all(GlanceRule().value(q.digits) <= sum(q.digits) for q in hard)


def test_warm_start_mode_mix_is_flat_across_levels():
    rng = random.Random(0)
    rule = GlanceRule()
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


def test_overthinking_trace_repeats_the_running_sum_after_a_recheck_phrase():
    # hand-written: 9+8+7 with one re-check
    text = overthink_trace((9, 8, 7), 1, random.Random(0))
    phrase = text.splitlines()[2]
    assert phrase in RECHECK_PHRASES
    assert text == f"9+8=17\n17+7=24\n{phrase}\n9+8=17\n17+7=24\n"
    assert overthink_trace((9, 8, 7), 0, random.Random(0)) == think_trace((9, 8, 7))
    two = think_response(make_problem(random.Random(3), 4), 2, random.Random(1))
    r = parse_response(two)
    assert r.mode == "think" and r.format_ok and r.reasoning.count("\n") + 1 == 3 * 4 + 2  # lines: 3 x 4 steps, 2 phrases
    assert two.endswith("The answer is $\\boxed{" + str(sum(make_problem(random.Random(3), 4).digits)) + "}$.")


def test_recheck_passes_are_drawn_independently_of_level_and_average_1_2():
    rule = RecheckRule()
    assert rule.mean() == pytest.approx(0.0 * 0.2 + 1 * 0.4 + 2 * 0.4)
    rng = random.Random(0)
    for level in (1, 8):
        counts = Counter()
        for _ in range(3000):
            prompt, response = sft_example(make_problem(rng, level), rng, GlanceRule())
            r = parse_response(response)
            if r.mode == "think" and r.closed_think and r.reasoning:  # a think demonstration (not a direct one)
                counts[sum(response.count(p) for p in RECHECK_PHRASES)] += 1
        total = sum(counts.values())
        # 0, 1, 2 passes at 0.2 / 0.4 / 0.4 (binomial sd at n~1350: < 0.014)
        assert [round(counts[k] / total, 1) for k in range(3)] == [0.2, 0.4, 0.4], (level, counts)
        assert set(counts) == {0, 1, 2}
    with pytest.raises(ValueError, match="sum to 1"):
        RecheckRule((0.5, 0.4))


def test_direct_demonstrations_exact_on_easy_levels_and_falling_steeply_after():
    rng, rule = random.Random(0), GlanceRule()
    right = {}
    for level in LEVELS:
        ps = [make_problem(rng, level) for _ in range(2000)]
        right[level] = sum(rule.value(p.digits) == sum(p.digits) for p in ps) / len(ps)
    assert right[1] == right[2] == 1.0
    # (4/9)^(level - 2): 0.444, 0.198, 0.088, ... (binomial sd at n = 2000: < 0.012)
    for level in LEVELS[2:]:
        assert abs(right[level] - rule.exact_rate(level)) < 0.04, (level, right[level])
    assert right[8] < 0.02
    # the reward's break-even for a direct answer is p ~ 0.67 (3p - 1 = q with q ~ 1): the
    # demonstrations put it between level 2 (p = 1) and level 3 (p = 0.44)
    assert right[2] > 2 / 3 > right[3]


def test_direct_answers_weigh_more_but_the_mode_decision_does_not():
    # the warm start up-weights a direct answer's tokens (levels 1-2 must be near-perfect, as an R1
    # model's easy answers are) but not an ellipsis answer's </think>: the summed weight of the
    # mode decision is the same for both modes, so the untrained no-think rate stays the data's mix
    rng = random.Random(3)
    mode_weight = Counter()
    for _ in range(2000):
        prompt, response = sft_example(make_problem(rng, rng.choice(LEVELS)), rng, GlanceRule())
        direct = is_direct(response)
        assert direct == (parse_response(response).mode == "no_think" or prompt.endswith("</think>\n\n")), response
        w = loss_weights(response, 6, 4.0)
        if prompt.endswith("<think>\n...\n"):
            assert w[0] == 1.0  # the first response token decides the mode
            mode_weight[direct] += w[0]
        assert w[1:] == [4.0 if direct else 1.0] * 5
    assert 0.9 < mode_weight[True] / mode_weight[False] < 1.1
