"""Importance-sampling correction of the engine/learner gap, against numbers worked out by hand."""

import math

import pytest
import torch

from autothink.offpolicy import importance_weights, merge, resolve


def _lp(*p):
    return torch.log(torch.tensor(p, dtype=torch.float64))


def test_truncation_by_hand():
    # ratios pi_prox / pi_behav: 0.5/0.5 = 1, 0.5/0.2 = 2.5, 0.2/0.5 = 0.4
    w, st = importance_weights(_lp(0.5, 0.5, 0.2), _lp(0.5, 0.2, 0.5), "tis", cap=2.0)
    assert w.tolist() == pytest.approx([1.0, 2.0, 0.4])
    assert st.tokens == 3 and st.corrected_fraction == pytest.approx(1 / 3)
    assert st.max_ratio == pytest.approx(2.5) and st.min_ratio == pytest.approx(0.4)
    # k3: exp(d) - d - 1 for d = 0, ln 2.5, ln 0.4 -> 0, 0.58371, 0.31629; mean 0.30000
    assert st.kl == pytest.approx((0 + (2.5 - math.log(2.5) - 1) + (0.4 - math.log(0.4) - 1)) / 3)
    assert st.kl == pytest.approx(0.3, abs=1e-4)


def test_masking_by_hand():
    # ratios 1, 2.5 (above 2), 0.4 (below 1/2), 0.6 (inside)
    w, st = importance_weights(_lp(0.5, 0.5, 0.2, 0.3), _lp(0.5, 0.2, 0.5, 0.5), "mask", cap=2.0)
    assert w.tolist() == [1.0, 0.0, 0.0, 1.0]
    assert st.corrected_fraction == 0.5


def test_tokens_without_an_engine_log_prob_keep_weight_one_and_are_not_counted():
    behav = torch.tensor([math.log(0.25), float("nan")], dtype=torch.float64)
    w, st = importance_weights(_lp(0.5, 0.9), behav, "tis", cap=10.0)
    assert w.tolist() == pytest.approx([2.0, 1.0]) and st.tokens == 1 and st.max_ratio == pytest.approx(2.0)


def test_on_policy_tokens_have_no_mismatch():
    lp = _lp(0.3, 0.6, 0.1)
    w, st = importance_weights(lp, lp.clone(), "tis")
    assert w.tolist() == [1.0, 1.0, 1.0] and st.kl == 0.0 and st.corrected_fraction == 0.0


def test_none_leaves_weights_at_one_but_still_measures():
    w, st = importance_weights(_lp(0.5), _lp(0.25), "none")
    assert w.tolist() == [1.0] and st.max_ratio == pytest.approx(2.0) and st.corrected_fraction == 0.0


def test_merge_and_resolve():
    assert merge([])["mismatch_kl"] == 0.0
    assert resolve("auto", 1) == "tis" and resolve("auto", 0) == "none"
    with pytest.raises(ValueError):
        resolve("sometimes", 0)
    with pytest.raises(ValueError):
        importance_weights(_lp(0.5), _lp(0.5), "tis", cap=0.5)
