"""From scored groups to a GRPO training batch (plain data: no Redis, no network, no tensors).

Importing it loads torch all the same, through :mod:`autothink.grpo`'s advantage function.

The learner reads scored groups (at least once, so possibly twice), keeps the first copy of each
group id, leaves out the samples whose grade could not be made (a grader timeout or error is
"could not grade", not "wrong": it must not count against the mode it was sampled in), applies the
stage's reward shaping over the whole batch, normalises advantages inside each group, and cuts
the batch into mini-batches of whole groups.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from autothink.bus.messages import ScoredGroup
from autothink.grpo import group_advantages
from autothink.rewards import ShapingStage, shape_rewards, trace_rewards


@dataclass
class TrainSample:
    group_id: str
    prompt_ids: list[int]
    response_ids: list[int]
    rollout_logprobs: list[float]
    think: bool
    correct: bool
    length: int
    reward: float  # the base reward; shaped rewards live beside, in TrainBatch
    policy_version: int
    level: Any = None
    graded: bool = True  # False: the grader timed out or failed; the sample is left out of training
    truncated: bool = False  # the engine stopped it at max_tokens (finish_reason "length")


@dataclass
class TrainBatch:
    samples: list[TrainSample]
    rewards: list[float]  # after shaping
    advantages: list[float]
    ungraded: int = 0  # samples left out: their grade could not be made
    groups_without_baseline: int = 0  # groups left out: fewer than two graded samples
    #: the advantage of each response's first token -- the mode decision under the ellipsis
    #: prompt (``</think>`` or the first thought) -- where it differs from ``advantages`` (which the
    #: other tokens get); None: the same
    first_token_advantages: list[float] | None = None

    def token_advantages(self, i: int, n_tokens: int) -> list[float]:
        """Per-token advantages of sample ``i`` (``n_tokens`` response tokens).

        >>> b = TrainBatch([], [], [0.0, -1.0], first_token_advantages=[0.5, -1.0])
        >>> b.token_advantages(0, 3), b.token_advantages(1, 2)
        ([0.5, 0.0, 0.0], [-1.0, -1.0])
        """
        rest = float(self.advantages[i])
        first = rest if self.first_token_advantages is None else float(self.first_token_advantages[i])
        return [first] + [rest] * (n_tokens - 1) if n_tokens else []

    def mini_batches(self, groups_per_mini_batch: int) -> list[list[int]]:
        """Indices of samples, in mini-batches of whole groups (a group never straddles two)."""
        order: dict[str, list[int]] = defaultdict(list)
        for i, s in enumerate(self.samples):
            order[s.group_id].append(i)
        groups = list(order.values())
        return [
            [i for g in groups[k : k + groups_per_mini_batch] for i in g]
            for k in range(0, len(groups), groups_per_mini_batch)
        ]


class GroupDeduper:
    """Keeps the first copy of each group id (the bus delivers at least once)."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.duplicates = 0

    def fresh(self, groups: Iterable[ScoredGroup]) -> list[ScoredGroup]:
        out = []
        for g in groups:
            if g.group_id in self.seen:
                self.duplicates += 1
                continue
            self.seen.add(g.group_id)
            out.append(g)
        return out


def flatten(groups: Sequence[ScoredGroup]) -> list[TrainSample]:
    out = []
    for g in groups:
        for sample, score in zip(g.samples, g.scores):
            out.append(
                TrainSample(
                    g.group_id, list(g.prompt_token_ids), list(sample.token_ids), list(sample.logprobs),
                    score.mode == "think", bool(score.correct), len(sample.token_ids), float(score.reward),
                    g.policy_version, g.prompt.level, graded=score.correct is not None,
                    truncated=sample.finish_reason == "length",
                )
            )
    return out


def graded_only(samples: Sequence[TrainSample]) -> tuple[list[TrainSample], int, int]:
    """The samples that were graded, in groups that keep at least two of them (a group of one has
    no baseline); returns them, how many samples were ungraded and how many groups were left out.

    >>> s = [TrainSample("a", [], [1], [], True, True, 1, 1.0, 0), TrainSample("a", [], [1], [], True, False, 1, 0.0, 0, graded=False),
    ...      TrainSample("a", [], [1], [], True, False, 1, 0.0, 0), TrainSample("b", [], [1], [], True, True, 1, 1.0, 0),
    ...      TrainSample("b", [], [1], [], False, False, 1, 0.0, 0, graded=False)]
    >>> kept, ungraded, dropped = graded_only(s)
    >>> [x.group_id for x in kept], ungraded, dropped
    (['a', 'a'], 2, 1)
    """
    graded = [s for s in samples if s.graded]
    per_group: dict[str, int] = defaultdict(int)
    for s in graded:
        per_group[s.group_id] += 1
    kept = [s for s in graded if per_group[s.group_id] >= 2]
    groups_before = {s.group_id for s in samples}
    return kept, len(samples) - len(graded), len(groups_before) - len({s.group_id for s in kept})


def build_batch(groups: Sequence[ScoredGroup], stage: ShapingStage) -> TrainBatch:
    """Leave out what could not be graded, shape rewards over the batch (length shaping per group,
    then batch balance), then GRPO advantages."""
    samples, ungraded, dropped = graded_only(flatten(groups))
    rewards = shape_rewards(samples, stage)
    ids = [s.group_id for s in samples]
    advantages = group_advantages(rewards, ids)
    if getattr(stage, "trace_advantage", "reward") == "reward":  # the reference: every token alike
        return TrainBatch(samples, rewards, advantages, ungraded, dropped)
    # the mode decision (first token) learns from the AutoThink reward; the reasoning after it
    # from correctness and length (autothink.rewards.trace_rewards)
    trace = group_advantages(trace_rewards(samples, stage), ids)
    return TrainBatch(samples, rewards, trace, ungraded, dropped, first_token_advantages=advantages)


def batch_stats(batch: TrainBatch) -> dict[str, Any]:
    """What the learner logs per step about the data it trained on."""
    s = batch.samples
    n = max(1, len(s))
    by_level: dict[Any, list[bool]] = defaultdict(list)
    for x in s:
        by_level[x.level].append(not x.think)
    think_len = [x.length for x in s if x.think]
    direct_len = [x.length for x in s if not x.think]
    think_cut = [x.truncated for x in s if x.think]
    return {
        "samples": len(s),
        "reward_base": sum(x.reward for x in s) / n,
        "reward_shaped": sum(batch.rewards) / n,
        "accuracy": sum(x.correct for x in s) / n,
        "think_rate": sum(x.think for x in s) / n,
        "no_think_rate_by_level": {str(k): round(sum(v) / len(v), 4) for k, v in sorted(by_level.items(), key=lambda kv: str(kv[0]))},
        "mean_length_think": sum(think_len) / len(think_len) if think_len else 0.0,
        "mean_length_no_think": sum(direct_len) / len(direct_len) if direct_len else 0.0,
        "think_samples": len(think_len),
        "truncation_rate": sum(x.truncated for x in s) / n,
        "truncation_rate_think": sum(think_cut) / len(think_cut) if think_cut else 0.0,
        "policy_versions": sorted({x.policy_version for x in s}),
        "ungraded_samples": batch.ungraded,
        "groups_without_baseline": batch.groups_without_baseline,
    }
