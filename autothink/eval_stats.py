"""Statistics of an evaluation: pass@k, bootstrap confidence intervals, and the paper's E-F1.

Pure functions of plain numbers (no engine, no files), so each is checked by hand in
``tests/unit/test_eval_stats.py`` and by the doctests here.

The unit of resampling is the *problem*, not the sample: the 16 samples of one AIME problem are
not 16 independent observations, and a bootstrap over samples would report an interval far too
narrow.  A benchmark's accuracy is the mean over its problems of the per-problem mean
correctness (with equal samples per problem this is the mean over samples); the overall number,
as in the paper's Table 1, is the unweighted mean over benchmarks, and its bootstrap resamples
problems within each benchmark (a stratified bootstrap).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

#: The paper's Table 1 for DeepSeek-R1-Distill-Qwen-1.5B (arXiv 2505.10832; docs/design.md §1):
#: accuracy % per benchmark where the paper gives it, the benchmark average, and the average
#: response tokens.
PAPER_BENCHMARKS = ("math500", "minerva", "olympiadbench", "aime24", "amc23")
PAPER_TABLE1_R1_1_5B: dict[str, dict] = {
    "standard prompt": {"prompt": "standard", "accuracy": 48.6, "tokens": 10633,
                        "per_benchmark": dict(zip(PAPER_BENCHMARKS, (83.1, 26.0, 43.7, 27.5, 62.5)))},
    "no-thinking prompt": {"prompt": "no_think", "accuracy": 37.5, "tokens": 2528,
                           "per_benchmark": dict(zip(PAPER_BENCHMARKS, (70.4, 19.1, 33.1, 15.8, 49.0)))},
    "ellipsis prompt": {"prompt": "ellipsis", "accuracy": 44.2, "tokens": 7453,
                        "per_benchmark": dict(zip(PAPER_BENCHMARKS, (78.2, 21.9, 38.6, 25.2, 57.2)))},
    "ThinkPrune-4k": {"prompt": "standard", "accuracy": 49.8, "tokens": 4943, "per_benchmark": {}},
    "AutoThink stage 1": {"prompt": "ellipsis", "accuracy": 45.6, "tokens": 6465, "per_benchmark": {}},
    "AutoThink stage 2": {"prompt": "ellipsis", "accuracy": 51.4, "tokens": 7295, "per_benchmark": {}},
    "AutoThink stage 3": {"prompt": "ellipsis", "accuracy": 51.7, "tokens": 5108,
                          "per_benchmark": dict(zip(PAPER_BENCHMARKS, (84.0, 28.1, 44.8, 34.6, 67.0)))},
}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with ``c`` correct among ``n`` samples (Chen et al. 2021):
    ``1 - C(n-c, k) / C(n, k)``, the chance that k samples drawn without replacement hold a
    correct one.

    >>> pass_at_k(4, 1, 1), pass_at_k(4, 1, 2), round(pass_at_k(4, 2, 2), 4), pass_at_k(4, 3, 2)
    (0.25, 0.5, 0.8333, 1.0)
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def mean_pass_at_k(counts: Sequence[tuple[int, int]], k: int) -> float:
    """pass@k averaged over problems, each given as ``(n samples, c correct)``.

    >>> mean_pass_at_k([(4, 1), (4, 0)], 2)
    0.25
    """
    return sum(pass_at_k(n, c, k) for n, c in counts) / len(counts) if counts else 0.0


def pass_ks(samples: int) -> list[int]:
    """The k reported for ``samples`` samples per problem: 1, then powers of two, then ``samples``.

    >>> pass_ks(16), pass_ks(6), pass_ks(1)
    ([1, 2, 4, 8, 16], [1, 2, 4, 6], [1])
    """
    ks = [k for k in (2**i for i in range(samples.bit_length())) if k <= samples]
    return ks + ([samples] if samples not in ks else [])


def bootstrap_means(strata: Sequence[Sequence[float]], rounds: int = 1000, seed: int = 0) -> np.ndarray:
    """``rounds`` bootstrap replicates of the mean over strata of each stratum's mean.

    Each stratum (a benchmark) is a list of per-problem values; every replicate redraws each
    stratum's problems with replacement, independently.  One stratum is the plain bootstrap of a
    mean.  Seeded: the same inputs and seed give the same replicates.
    """
    rng = np.random.default_rng(seed)
    total = np.zeros(rounds)
    kept = [np.asarray(s, dtype=float) for s in strata if len(s)]
    for values in kept:
        idx = rng.integers(0, len(values), size=(rounds, len(values)))
        total += values[idx].mean(axis=1)
    return total / max(1, len(kept))


def bootstrap_ci(strata: Sequence[Sequence[float]], rounds: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over strata of the strata means.

    >>> bootstrap_ci([[0.7, 0.7, 0.7]])  # no spread, no uncertainty
    (0.7, 0.7)
    >>> lo, hi = bootstrap_ci([[0.0] * 50 + [1.0] * 50], rounds=2000)
    >>> 0.39 < lo < 0.41 and 0.59 < hi < 0.61  # 0.5 ± 1.96 * sqrt(0.25 / 100)
    True
    """
    reps = bootstrap_means(strata, rounds, seed)
    tail = (1 - level) / 2
    lo, hi = np.quantile(reps, [tail, 1 - tail])
    return round(float(lo), 6), round(float(hi), 6)


def paired_difference_ci(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]], rounds: int = 1000, seed: int = 0,
                         level: float = 0.95) -> tuple[float, float, float]:
    """Difference ``mean(a) - mean(b)`` (means over strata of strata means) and its paired bootstrap
    interval: the same problems, each resampled with its value under both methods, so what the
    two share (a hard problem is hard for both) cancels.  ``a[s][i]`` and ``b[s][i]`` must be the
    same problem.  The difference is *inside the noise* when the interval holds 0.

    >>> paired_difference_ci([[1, 1, 0, 1]], [[1, 1, 0, 1]])  # identical results: no difference at all
    (0.0, 0.0, 0.0)
    >>> d, lo, hi = paired_difference_ci([[1, 1, 1, 1] * 10], [[1, 0, 1, 0] * 10])
    >>> d, lo > 0
    (0.5, True)
    """
    if [len(s) for s in a] != [len(s) for s in b]:
        raise ValueError("a paired bootstrap needs the same problems in both")
    diffs = [[x - y for x, y in zip(sa, sb)] for sa, sb in zip(a, b)]
    kept = [d for d in diffs if d]
    point = sum(sum(d) / len(d) for d in kept) / max(1, len(kept))
    lo, hi = bootstrap_ci(diffs, rounds, seed, level)
    return round(point, 6), lo, hi


def inside_noise(interval: tuple[float, float]) -> bool:
    """True when a difference's interval holds 0.

    >>> inside_noise((-0.02, 0.05)), inside_noise((0.01, 0.05))
    (True, False)
    """
    return interval[0] <= 0 <= interval[1]


def paper_e_f1(accuracy: float, tokens: float, std_accuracy: float, std_tokens: float,
               no_accuracy: float, no_tokens: float) -> float | None:
    """The paper's efficiency F1 (§4.2), on benchmark-averaged accuracy and response tokens.

    Both gains are normalised by the gap between the standard prompt (``std``: thinks always)
    and the no-thinking prompt (``no``): ΔAcc = max(0, (Acc − Acc_std) / (Acc_std − Acc_no)),
    ΔTok = max(0, (Tok_std − Tok) / (Tok_std − Tok_no)); E-F1 = 2·ΔAcc·ΔTok / (ΔAcc + ΔTok) × 100.
    A method not better than the standard prompt on both counts scores 0.  None when the gap is
    not positive (no-thinking as accurate as, or longer than, thinking): the scale is undefined.
    Accuracy may be given as a fraction or in %, as long as all three are given alike.

    From the paper's own Table 1 (R1-Distill-Qwen-1.5B): AutoThink stage 3, then ThinkPrune-4k.

    >>> round(paper_e_f1(51.7, 5108, 48.6, 10633, 37.5, 2528), 1)
    39.6
    >>> round(paper_e_f1(49.8, 4943, 48.6, 10633, 37.5, 2528), 1)
    18.7
    >>> paper_e_f1(48.6, 10633, 48.6, 10633, 37.5, 2528), paper_e_f1(0.5, 1, 0.5, 1, 0.5, 1)
    (0.0, None)
    """
    acc_gap, tok_gap = std_accuracy - no_accuracy, std_tokens - no_tokens
    if acc_gap <= 0 or tok_gap <= 0:
        return None
    d_acc = max(0.0, (accuracy - std_accuracy) / acc_gap)
    d_tok = max(0.0, (std_tokens - tokens) / tok_gap)
    if d_acc == 0 or d_tok == 0:
        return 0.0
    return 2 * d_acc * d_tok / (d_acc + d_tok) * 100


def paper_reference_rows() -> list[dict]:
    """The paper's Table 1 rows with their E-F1 computed here from the same numbers.

    >>> {r["method"]: r["e_f1"] for r in paper_reference_rows()}["AutoThink stage 3"]
    39.6
    """
    t = PAPER_TABLE1_R1_1_5B
    std, no = t["standard prompt"], t["no-thinking prompt"]
    rows = []
    for method, r in t.items():
        ef1 = paper_e_f1(r["accuracy"], r["tokens"], std["accuracy"], std["tokens"], no["accuracy"], no["tokens"])
        rows.append({"method": method, **r, "e_f1": None if ef1 is None else round(ef1, 1)})
    return rows


def per_problem(values: Mapping[object, Sequence[float]]) -> list[float]:
    """Mean of each problem's sample values, in the mapping's order.

    >>> per_problem({"p1": [1, 0, 1, 1], "p2": [0, 0]})
    [0.75, 0.0]
    """
    return [sum(v) / len(v) for v in values.values() if len(v)]
