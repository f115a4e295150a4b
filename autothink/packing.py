"""Token-budget micro-batches: length-aware, balanced across data-parallel ranks (pure Python).

AutoThink's response lengths are bimodal — no-think answers of a few hundred tokens beside think
answers of many thousands — so a micro-batch of a fixed number of samples, right-padded to its
longest, is mostly padding, and its memory swings with whichever lengths happen to meet.  Here a
mini-batch's samples are cut into micro-batches by a **token budget** instead (verl's "dynamic batch
size", OpenRLHF's packing):

* **padded** layout (right padding; what works everywhere, CPU included): a micro-batch costs
  ``count × longest`` tokens.  Samples are sorted by length and cut into runs of neighbours — the
  cheapest padded partitions are always such runs — each within the budget, choosing the cut with
  the fewest computed tokens plus a fixed price per pass (a small dynamic programme): short
  no-think answers and long think answers end up in passes of their own.
* **packed** layout (sequences concatenated with position ids restarting at 0, for attention
  kernels that keep them apart: flash-attention's varlen path): a micro-batch costs the sum of its
  lengths; samples go longest first into the emptiest micro-batch that still has room.

Then every rank gets the **same number** of micro-batches (ZeRO's collectives run once per forward /
backward on every rank, so a rank that skipped one would hang or desynchronise the others): the
count is rounded up to a multiple of the world size by splitting the costliest micro-batches, and
where nothing is left to split a rank gets an empty micro-batch, which the trainer runs as a dummy
pass with zero loss weight.  Micro-batches go to ranks largest first onto the least-loaded rank
that still needs one, so ranks carry about the same number of tokens.

A sample longer than the budget gets a micro-batch of its own (the budget is a target for memory,
not a reason to drop data); the experiment's validator keeps every response within it.

The update does not depend on any of this: the loss is a token mean over the whole mini-batch on
every rank (autothink.grpo), whatever the cut.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

#: One rank's micro-batches: each a list of indices into the lengths given; ``[]`` is a dummy pass.
RankPlan = list[list[int]]


def micro_batch_cost(lengths: Sequence[int], padded: bool = True) -> int:
    """Tokens a forward pass over these sequences processes, padding included.

    >>> micro_batch_cost([100, 30, 10]), micro_batch_cost([100, 30, 10], padded=False)
    (300, 140)
    """
    if not lengths:
        return 0
    return len(lengths) * max(lengths) if padded else sum(lengths)


#: What one more forward/backward pass costs, in tokens of padding it is worth avoiding: kernel
#: launches, and under ZeRO-3 a gather of every weight (~35 ms for R1-Distill-1.5B on one GPU, about
#: a thousand tokens of compute).  Without it, least padding would mean one pass per distinct length.
PASS_OVERHEAD_TOKENS = 1024


def _padded_runs(lengths: Sequence[int], order: list[int], max_tokens: int, max_samples: int,
                 overhead: int = PASS_OVERHEAD_TOKENS) -> list[tuple[int, int]]:
    """Runs ``[j, i)`` of ``order`` (longest first) within budget, least computed tokens plus
    ``overhead`` per run; ties go to fewer runs.

    ``best[i]`` = (tokens + overheads, runs) for the first ``i`` sorted samples.  A run starting at
    j costs ``(i - j) * length[order[j]]``, growing as j moves left, so the inner loop stops at the
    first run over budget: O(n × samples per micro-batch).
    """
    n = len(order)
    a = [lengths[k] for k in order]
    inf = float("inf")
    best: list[tuple[float, int]] = [(0, 0)] + [(inf, 0)] * n
    cut = [0] * (n + 1)
    for i in range(1, n + 1):
        for j in range(i - 1, max(-1, i - 1 - max_samples), -1):
            cost = (i - j) * a[j]
            if cost > max_tokens and i - j > 1:
                break
            cand = (best[j][0] + cost + overhead, best[j][1] + 1)
            if cand < best[i]:
                best[i], cut[i] = cand, j
    runs, i = [], n
    while i > 0:
        runs.append((cut[i], i))
        i = cut[i]
    return runs[::-1]


def _packed_bins(lengths: Sequence[int], order: list[int], max_tokens: int, max_samples: int) -> list[list[int]]:
    """Longest first into the emptiest bin with room; the fewest bins this greedy finds."""
    total = sum(lengths[k] for k in order)
    count = max(1, math.ceil(total / max_tokens), math.ceil(len(order) / max_samples))
    while True:
        bins: list[list[int]] = [[] for _ in range(count)]
        load = [0] * count
        ok = True
        for k in order:
            fits = [b for b in range(count) if len(bins[b]) < max_samples and (load[b] + lengths[k] <= max_tokens or not bins[b])]
            if not fits:
                ok = False
                break
            b = min(fits, key=lambda b: (load[b], b))
            bins[b].append(k)
            load[b] += lengths[k]
        if ok:
            return [b for b in bins if b]
        count += 1


def _split_costliest(groups: list[list[int]], lengths: Sequence[int], padded: bool) -> bool:
    """Split the costliest micro-batch in two, where the larger half is smallest; False if no
    micro-batch has two samples.  Samples in a group are sorted longest first, so both halves stay
    runs of neighbours (no new padding)."""
    best = None
    for g, grp in enumerate(groups):
        if len(grp) < 2:
            continue
        a = [lengths[x] for x in grp]
        cost = micro_batch_cost(a, padded)
        prefix = [0]
        for x in a:
            prefix.append(prefix[-1] + x)
        for k in range(1, len(a)):
            left = k * a[0] if padded else prefix[k]
            right = (len(a) - k) * a[k] if padded else prefix[-1] - prefix[k]
            key = (cost, -max(left, right))
            if best is None or key > best[0]:
                best = (key, g, k)
    if best is None:
        return False
    _, g, k = best
    grp = groups.pop(g)
    groups[g:g] = [grp[:k], grp[k:]]
    return True


def _assign(groups: list[list[int]], costs: list[int], world_size: int, per_rank: int) -> tuple[list[RankPlan], list[int]]:
    """Largest micro-batch first onto the least-loaded rank that still needs one."""
    plan: list[RankPlan] = [[] for _ in range(world_size)]
    load = [0] * world_size
    for g in sorted(range(len(groups)), key=lambda g: (-costs[g], g)):
        r = min((r for r in range(world_size) if len(plan[r]) < per_rank), key=lambda r: (load[r], r))
        plan[r].append(groups[g])
        load[r] += costs[g]
    return plan, load


#: Ranks may differ by this factor in tokens before more, smaller micro-batches are tried.
BALANCE_TOLERANCE = 1.10


def plan_micro_batches(
    lengths: Sequence[int],
    world_size: int = 1,
    max_tokens: int | None = None,
    max_samples: int | None = None,
    padded: bool = True,
) -> list[RankPlan]:
    """Cut samples of these lengths into micro-batches, the same number on every rank.

    Returns ``plan[rank][k]``: indices into ``lengths`` of rank's k-th micro-batch, longest first
    (``[]``: a dummy pass).  ``max_tokens``: the token budget of one micro-batch (padding counted in
    the padded layout); ``max_samples``: an optional cap on samples per micro-batch.  With several
    ranks, the fewest micro-batches per rank are taken whose busiest rank carries at most
    ``BALANCE_TOLERANCE`` times the mean, else the best balance found within a few more.

    >>> plan_micro_batches([256] * 3 + [8192] * 2, 1, max_tokens=16384)
    [[[3, 4], [0, 1, 2]]]
    >>> plan_micro_batches([256] * 3 + [8192] * 2, 2, max_tokens=16384)  # one long answer per rank
    [[[3], [1, 2]], [[4], [0]]]
    >>> plan_micro_batches([50], 2)  # rank 1 has nothing left: a dummy pass keeps ranks in step
    [[[0]], [[]]]
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    n = len(lengths)
    budget = max_tokens if max_tokens is not None else max(1, micro_batch_cost(list(lengths), padded))
    cap = max_samples if max_samples is not None else max(1, n)
    order = sorted(range(n), key=lambda k: (-lengths[k], k))
    if n == 0:
        base: list[list[int]] = []
    elif padded:
        base = [order[j:i] for j, i in _padded_runs(lengths, order, budget, cap)]
    else:
        base = _packed_bins(lengths, order, budget, cap)

    first = max(1, math.ceil(len(base) / world_size))
    last = first if world_size == 1 else max(first, min(first + 8, math.ceil(n / world_size)))
    best: tuple[int, list[RankPlan]] | None = None
    groups = [list(g) for g in base]
    for per_rank in range(first, last + 1):
        while len(groups) < per_rank * world_size:
            if not _split_costliest(groups, lengths, padded):
                groups.append([])
        costs = [micro_batch_cost([lengths[k] for k in g], padded) for g in groups]
        plan, load = _assign(groups, costs, world_size, per_rank)
        if best is None or max(load) < best[0]:
            best = (max(load), plan)
        if max(load) * world_size <= BALANCE_TOLERANCE * max(1, sum(load)):
            break
    assert best is not None
    return best[1]


def plan_tokens(plan: Sequence[RankPlan], lengths: Sequence[int], padded: bool = True) -> tuple[int, int]:
    """(real tokens, computed tokens) of a plan; a dummy pass computes the shortest sample."""
    real = sum(lengths[k] for rank in plan for mb in rank for k in mb)
    dummy = min(lengths) if lengths else 0
    computed = sum(micro_batch_cost([lengths[k] for k in mb], padded) if mb else dummy for rank in plan for mb in rank)
    return real, computed
