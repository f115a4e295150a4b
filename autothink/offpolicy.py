"""Correcting for the gap between the policy that sampled and the policy that learns.

Rollouts come from the inference engine: a policy version up to ``max_staleness`` behind the
learner, computed by another kernel stack (vLLM in bf16 against the learner in fp32 here; on
GPUs, different kernels in the same dtype).  PPO's ratio is taken against the learner's own
log-probs before the update (the *proximal* policy), so by itself it never sees that gap.  As in
decoupled PPO (AReaL) and truncated importance sampling (Yao et al., "Your efficient RL framework
secretly brings you off-policy RL training", 2025), each token's loss is weighted by

    w = π_prox(token) / π_behav(token) = exp(logp_prox − logp_behav)

where π_behav is the engine's log-prob of the sampled token *as the sampler saw it* (temperature
applied: vLLM's ``processed_logprobs``).  Two ways to keep the variance bounded:

* ``tis`` -- truncate: ``w ← min(w, cap)``;
* ``mask`` -- drop tokens whose ``w`` lies outside ``[1/cap, cap]`` (weight 0), keep the rest at 1.

:func:`importance_weights` returns the weights and what happened (how many tokens were truncated
or masked, the largest ratio, a KL estimate of the mismatch), all as plain numbers for the log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Correction = Literal["none", "tis", "mask"]


@dataclass(frozen=True)
class MismatchStats:
    """How far the sampling engine's policy was from the learner's, over the response tokens."""

    tokens: int
    kl: float  # k3 estimate of KL(π_behav ‖ π_prox): mean of exp(d) − d − 1, d = logp_prox − logp_behav
    max_ratio: float  # largest π_prox / π_behav
    min_ratio: float
    corrected_fraction: float  # tokens whose weight the correction changed (truncated or masked)


def importance_weights(
    prox_logprobs: torch.Tensor, behav_logprobs: torch.Tensor, mode: Correction = "tis", cap: float = 2.0
) -> tuple[torch.Tensor, MismatchStats]:
    """Per-token weights [T] for the policy loss, and the mismatch statistics.

    ``prox_logprobs``: the learner's log-probs of the sampled tokens before the update; ``behav_logprobs``:
    the engine's, NaN where the engine gave none (those tokens get weight 1 and are not counted).

    >>> prox = torch.log(torch.tensor([0.5, 0.5, 0.2]))
    >>> behav = torch.log(torch.tensor([0.5, 0.2, 0.5]))   # ratios 1, 2.5, 0.4
    >>> w, st = importance_weights(prox, behav, "tis", cap=2.0)
    >>> [round(x, 4) for x in w.tolist()], st.corrected_fraction, round(st.max_ratio, 4)
    ([1.0, 2.0, 0.4], 0.3333333333333333, 2.5)
    >>> w, st = importance_weights(prox, behav, "mask", cap=2.0)
    >>> w.tolist(), round(st.corrected_fraction, 4)
    ([1.0, 0.0, 0.0], 0.6667)
    """
    if cap < 1.0:
        raise ValueError(f"cap must be >= 1, got {cap}")
    prox = prox_logprobs.detach().float()
    behav = behav_logprobs.detach().float().to(prox.device)
    known = ~torch.isnan(behav)
    d = torch.where(known, prox - behav, torch.zeros_like(prox))
    ratio = torch.exp(d)
    if mode == "none":
        weights = torch.ones_like(ratio)
        changed = torch.zeros_like(known)
    elif mode == "tis":
        weights = torch.clamp(ratio, max=cap)
        changed = known & (ratio > cap)
    elif mode == "mask":
        inside = (ratio <= cap) & (ratio >= 1.0 / cap)
        weights = torch.where(inside | ~known, torch.ones_like(ratio), torch.zeros_like(ratio))
        changed = known & ~inside
    else:
        raise ValueError(f"unknown correction {mode!r}; expected none, tis or mask")
    n = int(known.sum())
    if n:
        kl = float(((torch.exp(d) - d - 1.0) * known).sum() / n)
        max_r, min_r = float(ratio[known].max()), float(ratio[known].min())
    else:
        kl, max_r, min_r = 0.0, 1.0, 1.0
    return weights, MismatchStats(n, kl, max_r, min_r, float(changed.sum()) / n if n else 0.0)


def merge(stats: list[MismatchStats]) -> dict[str, float]:
    """Token-weighted summary of several micro-batches' statistics, for the step's log row.

    >>> merge([MismatchStats(2, 0.5, 1.5, 0.9, 0.5), MismatchStats(6, 0.25, 1.1, 0.5, 0.0)])
    {'mismatch_kl': 0.3125, 'mismatch_max_ratio': 1.5, 'mismatch_min_ratio': 0.5, 'is_corrected_fraction': 0.125}
    """
    n = sum(s.tokens for s in stats)
    if not n:
        return {"mismatch_kl": 0.0, "mismatch_max_ratio": 1.0, "mismatch_min_ratio": 1.0, "is_corrected_fraction": 0.0}
    return {
        "mismatch_kl": sum(s.kl * s.tokens for s in stats) / n,
        "mismatch_max_ratio": max(s.max_ratio for s in stats if s.tokens),
        "mismatch_min_ratio": min(s.min_ratio for s in stats if s.tokens),
        "is_corrected_fraction": sum(s.corrected_fraction * s.tokens for s in stats) / n,
    }


def resolve(mode: str, max_staleness: int) -> Correction:
    """``auto``: truncated importance sampling when rollouts may be stale, none when on-policy.

    >>> resolve("auto", 1), resolve("auto", 0), resolve("mask", 0)
    ('tis', 'none', 'mask')
    """
    if mode == "auto":
        return "tis" if max_staleness >= 1 else "none"
    if mode not in ("none", "tis", "mask"):
        raise ValueError(f"unknown correction {mode!r}")
    return mode  # type: ignore[return-value]


__all__ = ["Correction", "MismatchStats", "importance_weights", "merge", "resolve"]
