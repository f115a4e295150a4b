"""GRPO advantages and the PPO-clip loss against hand-computed values."""

import math

import pytest
import torch

from autothink.grpo import group_advantages, low_variance_kl, policy_loss, token_entropy, token_logprobs


def test_advantages_hand_computed():
    # group a: rewards 1, 0, 2 -> mean 1, unbiased std 1 -> 0, -1, +1 (divided by 1 + 1e-6)
    adv = group_advantages([1.0, 0.0, 2.0], ["a", "a", "a"])
    assert adv == pytest.approx([0.0, -1.0, 1.0], abs=1e-5)
    # rewards 2, -1: mean 0.5, std 2.1213 -> +0.7071, -0.7071
    assert group_advantages([2.0, -1.0], ["g", "g"]) == pytest.approx([0.7071065, -0.7071065], abs=1e-6)


def test_advantages_edge_cases():
    assert group_advantages([5.0], ["solo"]) == [0.0]  # a group of one has no baseline
    assert group_advantages([1.0, 1.0, 1.0], ["a"] * 3) == [0.0, 0.0, 0.0]  # all correct: nothing to learn
    # interleaved groups are normalised separately and the order is kept
    adv = group_advantages([1.0, 10.0, 0.0, 20.0], ["a", "b", "a", "b"])
    assert adv == pytest.approx([0.7071064, -0.7071064, -0.7071064, 0.7071064], abs=1e-6)
    with pytest.raises(ValueError):
        group_advantages([1.0], ["a", "b"])


def _three_tokens():
    logp = torch.tensor([[math.log(1.5), math.log(0.5), math.log(1.1)]], requires_grad=True)
    old = torch.zeros(1, 3)
    mask = torch.ones(1, 3)
    return logp, old, mask


def test_policy_loss_positive_advantage():
    logp, old, mask = _three_tokens()
    # ratios 1.5, 0.5, 1.1 with A = +1: max(-r, -clip(r)) = -1.2, -0.5, -1.1 -> mean -0.933333
    loss, stats = policy_loss(logp, old, torch.tensor([1.0]), mask)
    assert loss.item() == pytest.approx(-2.8 / 3, abs=1e-6)
    assert stats.clip_fraction == pytest.approx(1 / 3)  # only the 1.5 ratio is clipped
    loss.backward()
    # d/dlogp: clipped token 0; otherwise -A * ratio / 3
    assert logp.grad.tolist()[0] == pytest.approx([0.0, -0.5 / 3, -1.1 / 3], abs=1e-6)


def test_policy_loss_negative_advantage():
    logp, old, mask = _three_tokens()
    # A = -1: max(r, clip(r)) = 1.5, 0.8, 1.1 -> mean 1.133333; the 0.5 ratio is clipped
    loss, stats = policy_loss(logp, old, torch.tensor([-1.0]), mask)
    assert loss.item() == pytest.approx(3.4 / 3, abs=1e-6)
    assert stats.clip_fraction == pytest.approx(1 / 3)
    loss.backward()
    assert logp.grad.tolist()[0] == pytest.approx([1.5 / 3, 0.0, 1.1 / 3], abs=1e-6)


def test_policy_loss_with_importance_weights():
    logp, old, mask = _three_tokens()
    # A = +1, per-token losses -1.2, -0.5, -1.1 (as above); weights 2.0 (truncated), 1.0, 0.0 (masked)
    # -> (-2.4 - 0.5 + 0) / 3 = -0.966667; gradients scale the same way and the weights get none
    w = torch.tensor([[2.0, 1.0, 0.0]], requires_grad=True)
    loss, _ = policy_loss(logp, old, torch.tensor([1.0]), mask, is_weights=w)
    assert loss.item() == pytest.approx(-2.9 / 3, abs=1e-6)
    loss.backward()
    assert logp.grad.tolist()[0] == pytest.approx([0.0, -0.5 / 3, 0.0], abs=1e-6)
    assert w.grad is None


def test_policy_loss_mask_and_token_mean():
    # two sequences, 3 and 1 response tokens; ratio 1 everywhere, A = +1 and -2
    logp = torch.zeros(2, 3)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    loss, stats = policy_loss(logp, torch.zeros(2, 3), torch.tensor([1.0, -2.0]), mask)
    # token mean over 4 tokens: (-1 -1 -1 + 2) / 4 = -0.25 (a sequence mean would give 0.5)
    assert loss.item() == pytest.approx(-0.25)
    assert stats.tokens == 4.0 and stats.clip_fraction == 0.0 and stats.ratio_mean == 1.0


def test_low_variance_kl():
    # logp = ln 0.5, ref = 0: d = ln 2, k3 = 2 - ln 2 - 1 = 0.3068528
    assert float(low_variance_kl(torch.tensor(math.log(0.5)), torch.tensor(0.0))) == pytest.approx(0.3068528)
    logp = torch.full((1, 2), math.log(0.5))
    loss, stats = policy_loss(logp, logp.clone(), torch.tensor([0.0]), torch.ones(1, 2), kl_coef=0.1, ref_logprobs=torch.zeros(1, 2))
    assert stats.kl == pytest.approx(0.3068528) and float(loss) == pytest.approx(0.03068528)


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = [5, 1, 7, 2]  # unequal on purpose: the two ranks hold 6 and 9 tokens
    T = max(lengths)
    mask = torch.tensor([[1.0] * n + [0.0] * (T - n) for n in lengths])
    logp = (torch.randn(4, T, generator=g) * 0.3).requires_grad_(True)
    old = torch.randn(4, T, generator=g) * 0.3
    adv = torch.tensor([1.0, -0.5, 0.3, -1.2])
    return logp, old, adv, mask


def test_loss_and_gradient_do_not_depend_on_the_data_parallel_split():
    logp, old, adv, mask = _batch()
    whole, _ = policy_loss(logp, old, adv, mask)
    whole.backward()
    whole_grad = logp.grad.clone()

    world = 2
    global_tokens = float(mask.sum())
    shards = [slice(0, 2), slice(2, 4)]
    rank_losses, grads = [], torch.zeros_like(logp)
    for sl in shards:
        lp = logp.detach()[sl].clone().requires_grad_(True)
        loss, _ = policy_loss(lp, old[sl], adv[sl], mask[sl], token_normalizer=global_tokens / world)
        loss.backward()
        rank_losses.append(loss.item())
        grads[sl] = lp.grad / world  # DDP/DeepSpeed average the gradients over ranks
    assert sum(rank_losses) / world == pytest.approx(whole.item(), abs=1e-6)
    assert torch.allclose(grads, whole_grad, atol=1e-7)

    # the naive per-rank token mean is not the same thing when ranks hold unequal token counts
    naive = sum(policy_loss(logp.detach()[sl], old[sl], adv[sl], mask[sl])[0].item() for sl in shards) / world
    assert abs(naive - whole.item()) > 1e-3


def test_token_logprobs_and_entropy():
    logits = torch.tensor([[[0.0, math.log(3.0)]]])  # p = 0.25, 0.75
    assert float(token_logprobs(logits, torch.tensor([[1]]))) == pytest.approx(math.log(0.75))
    # temperature 0.5 doubles the logits: p = 1/10, 9/10
    assert float(token_logprobs(logits, torch.tensor([[1]]), temperature=0.5)) == pytest.approx(math.log(0.9))
    assert float(token_entropy(torch.zeros(1, 1, 4))) == pytest.approx(math.log(4))
