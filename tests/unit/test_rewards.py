"""The reward rules of docs/design.md §3 against numbers worked out by hand."""

from dataclasses import dataclass

import pytest

from autothink.rewards import (
    RepetitionRule,
    RewardTable,
    base_reward,
    batch_balance,
    has_repetition,
    length_shaping,
    repetition_guard,
    shape_rewards,
)
from tests.fakes import Stage


@dataclass
class S:
    group_id: str
    think: bool
    correct: bool
    length: int
    reward: float


# --------------------------------------------------------------------------- base reward


@pytest.mark.parametrize(
    "mode,correct,expected",
    [("think", True, 1.0), ("think", False, 0.0), ("no_think", True, 2.0), ("no_think", False, -1.0),
     ("format_error", False, 0.0), ("format_error", True, 0.0), ("think", None, 0.0), ("no_think", None, 0.0)],
)
def test_base_reward_table(mode, correct, expected):
    assert base_reward(mode, correct) == expected


def test_base_reward_custom_table_and_unknown_mode():
    table = RewardTable(no_think_correct=3.0, format_error=-0.5)
    assert base_reward("no_think", True, table) == 3.0
    assert base_reward("format_error", False, table) == -0.5
    with pytest.raises(ValueError, match="unknown mode 'maybe'"):
        base_reward("maybe", True)


# --------------------------------------------------------------------------- repetition guard


def test_repetition_ngram_runs():
    assert has_repetition("word " * 10)
    assert not has_repetition("word " * 9)
    assert has_repetition("x = 1 " * 10)  # a 3-gram ten times in a row
    assert not has_repetition("x = 1 " * 9)
    # the run must be consecutive: a break in the middle resets it
    assert not has_repetition("a " * 5 + "b " + "a " * 5)
    # an n-gram longer than 30 words is not looked for
    phrase = " ".join(f"w{i}" for i in range(31)) + " "
    assert not has_repetition(phrase * 10)
    assert has_repetition(" ".join(f"w{i}" for i in range(30)) + " " + (" ".join(f"w{i}" for i in range(30)) + " ") * 9)


def test_repetition_unbroken_run():
    assert has_repetition("ok " + "9" * 120)
    assert not has_repetition("ok " + "9" * 119)
    assert has_repetition("a" * 50, RepetitionRule(max_unbroken_chars=50))


def test_repetition_guard_only_on_negative_rewards():
    loop = "</think>\n\n" + "the answer is " * 10
    assert repetition_guard(-1.0, loop) == -2.0
    assert repetition_guard(0.0, loop) == 0.0  # a wrong think answer is not punished further
    assert repetition_guard(2.0, loop) == 2.0
    assert repetition_guard(-1.0, "a short wrong answer") == -1.0
    assert repetition_guard(-1.0, loop, RewardTable(repetition_penalty=-5.0)) == -5.0


# --------------------------------------------------------------------------- length shaping


def test_length_shaping_two_correct_hand_computed():
    # lengths 10, 30: mean 20, unbiased std 14.142, z = -0.7071, +0.7071; alpha 0.05
    # short: exp(+0.035355) - 1 = +0.0359878 ; long: exp(-0.035355) - 1 = -0.0347376
    out = length_shaping([10, 30], [True, True], [1.0, 1.0], alpha=0.05, beta=0.0)
    assert out == pytest.approx([1.0359878, 0.9652624], abs=1e-6)


def test_length_shaping_three_wrong_hand_computed():
    # lengths 10, 20, 30: std 10, z = -1, 0, 1; beta 0.1: 1 - exp(0.1), 0, 1 - exp(-0.1)
    out = length_shaping([10, 20, 30], [False] * 3, [-1.0, -1.0, -1.0], alpha=0.0, beta=0.1)
    assert out == pytest.approx([-1.1051709, -1.0, -0.9048374], abs=1e-6)


def test_length_shaping_edge_cases():
    # one correct and one wrong: neither subset has 2 members
    assert length_shaping([10, 30], [True, False], [1.0, 0.0], 0.05, 0.05) == [1.0, 0.0]
    # zero length variance: std floored at 1e-6, z = 0, no change
    assert length_shaping([7, 7, 7], [True] * 3, [1.0, 2.0, 1.0], 0.05, 0.05) == [1.0, 2.0, 1.0]
    # alpha = beta = 0 (stages 1 and 2): nothing moves
    assert length_shaping([1, 100], [True, True], [1.0, 1.0], 0.0, 0.0) == [1.0, 1.0]


# --------------------------------------------------------------------------- batch balance


def test_batch_balance_think_over_represented():
    # 3 of 4 think, gamma 0.5, slope 2: f = 0.5. Think targets: 0 correct, -1 wrong.
    out = batch_balance([True, True, True, False], [True, False, True, True], [1.0, 0.0, 1.0, 2.0], gamma=0.5)
    assert out == pytest.approx([0.5, -0.5, 0.5, 2.0])


def test_batch_balance_no_think_over_represented():
    # 3 of 4 no-think: f = 0.5. No-think targets: +1 correct, -2 wrong.
    out = batch_balance([False, False, False, True], [True, False, True, True], [2.0, -1.0, 2.0, 1.0], gamma=0.5)
    assert out == pytest.approx([1.5, -1.5, 1.5, 1.0])


def test_batch_balance_all_think_batch():
    # 100% think: f = clip((1 - 0.5) * 2) = 1, every sample lands on its target
    out = batch_balance([True] * 3, [True, False, True], [1.0, 0.0, 1.0], gamma=0.5)
    assert out == pytest.approx([0.0, -1.0, 0.0])


def test_batch_balance_slope_and_off():
    # rate 0.75, gamma 0.6, slope 2: f = 0.3 -> 0.7 * 1 + 0.3 * 0 = 0.7
    assert batch_balance([True, True, True, False], [True] * 4, [1.0] * 3 + [2.0], 0.6)[0] == pytest.approx(0.7)
    # slope 10: f = min(1.5, 1) = 1
    assert batch_balance([True, True, True, False], [True] * 4, [1.0] * 3 + [2.0], 0.6, slope=10)[0] == 0.0
    # gamma 1.0 is "off"; an exactly balanced batch is left alone too
    assert batch_balance([True, True], [True, True], [1.0, 1.0], 1.0) == [1.0, 1.0]
    assert batch_balance([True, False], [True, True], [1.0, 2.0], 0.5) == [1.0, 2.0]
    assert batch_balance([], [], [], 0.5) == []


# --------------------------------------------------------------------------- the whole pipeline


def test_shape_rewards_length_first_then_balance():
    batch = [
        S("a", True, True, 10, 1.0),
        S("a", True, True, 30, 1.0),
        S("a", False, True, 5, 2.0),
        S("a", True, False, 40, 0.0),
    ]
    # length: correct lengths 10, 30, 5 -> mean 15, std sqrt(175) = 13.229,
    #   z = -0.37796, 1.13389, -0.75593 -> rewards 1.0190779, 0.9448825, 2.0385198; the wrong one alone
    # balance: think rate 3/4, f = 0.5 -> 0.5095390, 0.4724413, -0.5; no-think unchanged
    out = shape_rewards(batch, Stage(alpha=0.05, beta=0.05, batch_balance_rate=0.5))
    assert out == pytest.approx([0.5095390, 0.4724413, 2.0385198, -0.5], abs=1e-6)


def test_shape_rewards_groups_are_separate():
    # the same lengths in two groups: each group is normalised on its own
    batch = [S("a", True, True, 10, 1.0), S("b", True, True, 10, 1.0), S("a", True, True, 30, 1.0), S("b", True, True, 90, 1.0)]
    out = shape_rewards(batch, Stage(alpha=0.05))
    assert out[0] == pytest.approx(1.0359878, abs=1e-6) and out[1] == pytest.approx(1.0359878, abs=1e-6)
    assert out[2] == pytest.approx(0.9652624, abs=1e-6) and out[3] == pytest.approx(0.9652624, abs=1e-6)


def test_shape_rewards_group_of_one_and_all_correct_group():
    batch = [S("solo", False, True, 3, 2.0), S("g", True, True, 8, 1.0), S("g", True, True, 8, 1.0)]
    # the group of one is untouched; the all-correct group has zero length variance
    assert shape_rewards(batch, Stage(alpha=0.05, beta=0.05)) == [2.0, 1.0, 1.0]


def test_shape_rewards_stage2_is_identity():
    batch = [S("a", True, True, 10, 1.0), S("a", False, False, 3, -2.0)]
    assert shape_rewards(batch, Stage()) == [1.0, -2.0]
