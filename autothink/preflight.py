"""Can this model show what AutoThink does?  A check before training (``autothink preflight``,
``autothink up --preflight``): sample part of the training set under the ellipsis prompt and
report accuracy per mode, overall and on its hard part.

AutoThink needs both modes under the ellipsis prompt and a think mode that is *better* than
answering directly where problems are hard: then choosing to think there pays, and the stages
can shape the choice.  Where thinking is no better (a weak warm start, a model that is not an R1
model), GRPO under the reference rewards tends to reinforce wrong think traces instead, and the
run degrades while both modes stay alive (issue #31).  The toy builds check this at build time
(``autothink.toy.build.check_targets``); this module asks the same of any model.

:func:`verdict` is pure (scored samples in, a verdict out); :func:`run_preflight` samples with vLLM.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from autothink.evaluation import Scored


def hard_part(rows: Sequence[dict[str, Any]], fraction: float = 1 / 3) -> set[int]:
    """Indices of the hardest ``fraction`` of ``rows`` by their ``level`` (rows without a level:
    none are hard, and the verdict judges the whole sample).

    >>> sorted(hard_part([{"level": 1}, {"level": 8}, {"level": 5}, {"level": 7}, {"level": None}, {"level": 2}]))
    [1, 3]
    """
    levelled = [(float(r["level"]), i) for i, r in enumerate(rows) if isinstance(r.get("level"), (int, float))]
    if not levelled:
        return set()
    levelled.sort(reverse=True)
    return {i for _, i in levelled[: max(1, round(fraction * len(levelled)))]}


def _acc(xs: Sequence[Scored]) -> float | None:
    graded = [x for x in xs if x.correct is not None]
    return sum(bool(x.correct) for x in graded) / len(graded) if graded else None


def verdict(scored: Sequence[Scored], hard: set[int], min_samples: int = 8) -> dict[str, Any]:
    """Per-mode accuracy overall and on the hard part (``Scored.problem`` in ``hard``; all
    samples when ``hard`` is empty), and the warnings: a mode missing (fewer than
    ``min_samples`` samples) or think no better than no-think where it matters.

    >>> from autothink.evaluation import Scored as S
    >>> xs = [S(8, "ellipsis", "think", True, True, 90, problem=0)] * 6 + [S(8, "ellipsis", "no_think", False, True, 9, problem=0)] * 10
    >>> v = verdict(xs, {0}, min_samples=4)
    >>> v["ok"], v["hard"]["think_accuracy"], v["hard"]["no_think_accuracy"], v["hard"]["no_think_rate"]
    (True, 1.0, 0.0, 0.625)
    >>> xs = [S(8, "ellipsis", "think", False, True, 90, problem=0)] * 6 + [S(8, "ellipsis", "no_think", True, True, 9, problem=0)] * 4
    >>> verdict(xs, {0}, min_samples=4)["warnings"]
    ['on the hard part think mode is not better than no-think (0.00 vs 1.00): thinking does not pay where it should']
    """
    def part(xs: Sequence[Scored]) -> dict[str, Any]:
        think = [x for x in xs if x.mode == "think"]
        direct = [x for x in xs if x.mode != "think"]
        return {"samples": len(xs), "no_think_rate": len(direct) / len(xs) if xs else None,
                "think_accuracy": _acc(think), "no_think_accuracy": _acc(direct), "think_samples": len(think),
                "no_think_samples": len(direct)}

    everything = part(scored)
    hard = part([x for x in scored if x.problem in hard] if hard else list(scored))
    warnings = []
    for mode in ("think", "no_think"):
        if everything[f"{mode}_samples"] < min_samples:
            warnings.append(f"only {everything[f'{mode}_samples']} {mode.replace('_', '-')} samples under the ellipsis prompt: "
                            "that mode is (almost) absent, and RL cannot learn to choose it")
    t, d = hard["think_accuracy"], hard["no_think_accuracy"]
    if t is not None and d is not None and t <= d:
        warnings.append(f"on the hard part think mode is not better than no-think ({t:.2f} vs {d:.2f}): thinking does not pay "
                        "where it should")
    return {"all": everything, "hard": hard, "hard_is_levelled": bool(hard), "warnings": warnings, "ok": not warnings}


def run_preflight(run: Any, problems: int = 64, samples: int = 8, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Sample ``problems`` training problems (drawn with the run's seed) ``samples`` times each
    under the ellipsis prompt, at stage 1's temperature and length cap, and return :func:`verdict`."""
    from autothink.data import load_problems
    from autothink.evaluation import VLLMSampler, exact_grade, safe_grade, sample_scored

    rows = load_problems(run.data.source, run.model.path, run.data.problem_key, run.data.answer_key)
    rng = random.Random(f"preflight-{run.seed}")
    chosen = rng.sample(rows, min(problems, len(rows)))
    stage = run.stages[0]
    grade = exact_grade if run.data.source == "toy" else safe_grade
    log(f"preflight: {len(chosen)} training problems x {samples} samples under the ellipsis prompt "
        f"(temperature {stage.temperature}, up to {stage.max_response_tokens} tokens)")
    from autothink.engine import context_length

    max_len = min(context_length(run.model.path, 1 << 30), stage.max_response_tokens + 2048)
    with VLLMSampler(run.model.path, seed=run.seed, max_model_len=max_len) as sampler:
        scored = sample_scored(sampler, chosen, ("ellipsis",), stage.temperature, stage.max_response_tokens, n=samples,
                               grade=grade)["ellipsis"]
    return verdict(scored, hard_part(chosen))


def describe(v: dict[str, Any]) -> list[str]:
    """The verdict as lines for a terminal."""
    def fmt(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}"

    lines = []
    for name in ("all", "hard"):
        p = v[name]
        label = "all" if name == "all" else ("hard third (by level)" if v["hard_is_levelled"] else "hard part (no levels: all)")
        lines.append(f"  {label:28s} no-think rate {fmt(p['no_think_rate'])}   think acc {fmt(p['think_accuracy'])} "
                     f"({p['think_samples']})   no-think acc {fmt(p['no_think_accuracy'])} ({p['no_think_samples']})")
    lines += [f"  [WARNING] {w}" for w in v["warnings"]] or ["  [ok] both modes present; thinking pays on the hard part"]
    return lines
