"""GRPO: group-normalised advantages and the PPO-clip policy loss (docs/design.md §3).

The advantage of response i in a group of responses to one prompt is
``A_i = (r_i - mean(r)) / (std(r) + 1e-6)`` (unbiased std), the same for every token of the
response.  The loss per token is ``max(-A ratio, -A clip(ratio, 1 - eps_low, 1 + eps_high))``
with ``ratio = exp(logp - logp_old)``, averaged over all response tokens of the mini-batch
("token-mean").

Data-parallel training averages gradients over ranks.  To keep the token mean exact when ranks
hold different numbers of tokens, each rank divides its token sum by ``global_tokens /
world_size`` (:func:`policy_loss`'s ``token_normalizer``); the average over ranks then equals
the whole-batch token mean.  ``tests/unit/test_grpo.py`` checks this for loss and gradient.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch


def group_advantages(rewards: Sequence[float], group_ids: Sequence[str], eps: float = 1e-6) -> list[float]:
    """GRPO advantages, normalised inside each group.  A group of one gets advantage 0.

    >>> [round(a, 4) for a in group_advantages([1.0, 0.0, 2.0, 5.0], ["a", "a", "a", "b"])]
    [0.0, -1.0, 1.0, 0.0]
    """
    if len(rewards) != len(group_ids):
        raise ValueError(f"{len(rewards)} rewards but {len(group_ids)} group ids")
    groups: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(group_ids):
        groups[g].append(i)
    out = [0.0] * len(rewards)
    for idx in groups.values():
        if len(idx) < 2:
            continue
        values = [float(rewards[i]) for i in idx]
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        for i, v in zip(idx, values):
            out[i] = (v - mean) / (std + eps)
    return out


@dataclass
class LossStats:
    """Diagnostics of one loss evaluation (plain floats, detached)."""

    policy_loss: float
    kl: float
    clip_fraction: float
    approx_kl_old: float
    ratio_mean: float
    tokens: float


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-probability of each next token.

    logits: [B, T, V] for positions predicting ``tokens`` [B, T]; returns [B, T].
    Sampling temperature is applied to the logits, as the sampler did.
    """
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    return torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the next-token distribution: logits [B, T, V] -> [B, T]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def low_variance_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """The k3 estimator of KL(policy || reference) per token: exp(d) - d - 1 with d = ref - logp.

    d has either sign; the estimate is ≥ 0 for every d (exp(d) ≥ 1 + d), and its mean over tokens
    sampled from the policy is an unbiased estimate of the KL.  logprobs, ref_logprobs: [B, T].
    """
    d = ref_logprobs - logprobs
    return torch.exp(d) - d - 1.0


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    kl_coef: float = 0.0,
    ref_logprobs: torch.Tensor | None = None,
    token_normalizer: float | None = None,
    is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, LossStats]:
    """PPO-clip loss with token-mean aggregation.

    logprobs, old_logprobs, mask: [B, T] (mask 1 on response tokens); advantages: [B] or [B, T].
    ``token_normalizer`` is what the token sum is divided by: the mask sum by default; in
    data-parallel training ``global_tokens / world_size`` (see the module docstring).
    ``is_weights`` [B, T] (no gradient) scales each token's loss: the importance-sampling
    correction of :mod:`autothink.offpolicy` (old_logprobs are the learner's own, before the update).
    """
    mask = mask.to(logprobs.dtype)
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    advantages = advantages.to(logprobs.dtype)
    norm = float(token_normalizer) if token_normalizer is not None else float(mask.sum().clamp(min=1.0))

    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    if is_weights is not None:
        per_token = per_token * is_weights.detach().to(per_token.dtype)
    pg_loss = (per_token * mask).sum() / norm

    kl_value = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    if kl_coef and ref_logprobs is not None:
        kl_value = (low_variance_kl(logprobs, ref_logprobs) * mask).sum() / norm
    loss = pg_loss + kl_coef * kl_value

    with torch.no_grad():
        tokens = mask.sum().clamp(min=1.0)
        stats = LossStats(
            policy_loss=float(pg_loss),
            kl=float(kl_value),
            clip_fraction=float(((clipped > unclipped).to(mask.dtype) * mask).sum() / tokens),
            approx_kl_old=float((0.5 * log_ratio.pow(2) * mask).sum() / tokens),
            ratio_mean=float((ratio * mask).sum() / tokens),
            tokens=float(mask.sum()),
        )
    return loss, stats


def mode_floor_penalty(close_logprobs: torch.Tensor, floor: float) -> torch.Tensor:
    """Per-sample hinge that keeps both modes of the decision above ``floor`` (stage 1's mode floor).

    ``close_logprobs`` [N]: log p(``</think>``) at each sample's first response position -- the
    probability of answering directly under the ellipsis prompt, at the sampling temperature;
    thinking has the rest.  The penalty is ``relu(log floor - log p) + relu(log floor - log(1 - p))``:
    zero while both modes keep at least ``floor``, growing by one per nat that either falls below.

    Why (issue #31): batch balance acts on the batch's share of each mode.  A prompt whose eight
    samples all think gives its group zero advantage, so once a level has gone all-think nothing
    can bring it back, however much a direct answer would earn there.  A floor on the probability
    of each mode keeps sampling both at every prompt, so every group can keep comparing them.

    >>> import math
    >>> p = torch.tensor([0.5, 0.05, 0.99])
    >>> [round(x, 4) for x in mode_floor_penalty(torch.log(p), 0.1).tolist()]   # 0, log(0.1/0.05), log(0.1/0.01)
    [0.0, 0.6931, 2.3026]
    >>> float(mode_floor_penalty(torch.log(p), 0.0).sum())
    0.0
    """
    if not 0.0 <= floor < 0.5:
        raise ValueError(f"the mode floor must be in [0, 0.5), got {floor}")
    if floor == 0.0:
        return torch.zeros_like(close_logprobs)
    lp = close_logprobs.float()
    log_floor = math.log(floor)
    # log(1 - p) from log p without cancellation near p = 1
    log_rest = torch.log(-torch.expm1(lp.clamp(max=-1e-7)))
    return torch.relu(log_floor - lp) + torch.relu(log_floor - log_rest)
