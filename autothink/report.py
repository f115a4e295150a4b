"""The evaluation report: a table shaped like the paper's Table 1 with bootstrap intervals, pass@k,
think rate by benchmark and difficulty, response length by mode, the paper's E-F1, the targets, and
plots.  Tabulation is pure (tested with hand-made rows); plotting uses matplotlib.

E-F1 is the paper's (§4.2, docs/design.md §3): both the accuracy gain and the token reduction are
normalised by the gap between the standard prompt (thinks always) and the no-thinking prompt, and
their harmonic mean is scaled to 0-100 (:func:`autothink.eval_stats.paper_e_f1`).  It needs both
prompts' rows in the same report.  (Until issue #24 the report divided by the standard prompt's
numbers alone; those values are not comparable with the paper's.)

Uncertainty: every accuracy has a 95 % bootstrap interval over problems (samples of one problem
move together), and each method's difference from the standard prompt has a paired bootstrap
interval over the same problems; a difference whose interval holds 0 is *inside the noise* and is
marked ``~`` in the tables.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from autothink import eval_stats as S
from autothink.evaluation import Scored

BASELINE, NO_THINK = "standard prompt", "no-thinking prompt"


def _stats(rows: Sequence[Scored]) -> dict[str, float]:
    n = max(1, len(rows))
    return {
        "accuracy": round(sum(r.correct for r in rows) / n, 4),
        "mean_tokens": round(sum(r.num_tokens for r in rows) / n, 1),
        "think_rate": round(sum(r.mode == "think" for r in rows) / n, 4),
        "count": len(rows),
    }


def toy_group(level: Any) -> str:
    """Difficulty groups of the toy task's levels 1..8.

    >>> [toy_group(level) for level in (1, 2, 3, 5, 6, 8)]
    ['easy (L1-2)', 'easy (L1-2)', 'medium (L3-5)', 'medium (L3-5)', 'hard (L6-8)', 'hard (L6-8)']
    """
    level = int(level)
    return "easy (L1-2)" if level <= 2 else "medium (L3-5)" if level <= 5 else "hard (L6-8)"


def _by_problem(scored: Sequence[Scored], group_of: Callable[[Scored], str]) -> dict[str, dict[Any, list[Scored]]]:
    """group -> problem -> its samples (a sample without a problem id is a problem of its own)."""
    out: dict[str, dict[Any, list[Scored]]] = defaultdict(dict)
    for k, s in enumerate(scored):
        key = ("sample", k) if s.problem is None else s.problem
        out[group_of(s)].setdefault(key, []).append(s)
    return out


def _problem_strata(by: dict[str, dict[Any, list[Scored]]], per_group: bool, value: Callable[[Scored], float] = lambda s: float(s.correct)
                    ) -> list[list[float]]:
    if per_group:
        return [[sum(map(value, v)) / len(v) for v in probs.values()] for probs in by.values()]
    return [[sum(map(value, v)) / len(v) for probs in by.values() for v in probs.values()]]


def _pass_at(probs: list[dict[Any, list[Scored]]]) -> dict[str, float]:
    """pass@k for k up to the fewest samples any problem has, averaged over problems of each
    dict, then over the dicts (groups)."""
    counts = [[(len(v), sum(s.correct for s in v)) for v in p.values()] for p in probs if p]
    if not counts:
        return {}
    n_min = min(n for c in counts for n, _ in c)
    return {str(k): round(sum(S.mean_pass_at_k(c, k) for c in counts) / len(counts), 4) for k in S.pass_ks(n_min)}


def _by_mode(scored: Sequence[Scored]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for mode in ("think", "no_think"):
        toks = [s.num_tokens for s in scored if s.mode == mode]
        out[mode] = round(sum(toks) / len(toks), 1) if toks else None
    return out


def table(results: dict[str, list[Scored]], group_of: Callable[[Scored], str], baseline: str = BASELINE, no_think: str = NO_THINK,
          average: str = "samples", rounds: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
    """One row per method (in the order given).

    ``average="samples"``: overall numbers are means over all samples (the toy's difficulty
    groups); ``"groups"``: unweighted means over groups, as the paper averages its benchmarks.
    Each row: accuracy with its bootstrap interval, pass@k, mean tokens, think rate, tokens by
    mode, the paper's E-F1 (against the ``baseline`` and ``no_think`` rows; None without them),
    the paired difference from ``baseline``; the same per group; think rate per level.
    """
    per_group = average == "groups"
    if average not in ("samples", "groups"):
        raise ValueError("average is 'samples' or 'groups'")
    rows = []
    problems = {}
    for method, scored in results.items():
        by = _by_problem(scored, group_of)
        problems[method] = by
        groups: dict[str, list[Scored]] = defaultdict(list)
        levels: dict[str, list[Scored]] = defaultdict(list)
        for s in scored:
            groups[group_of(s)].append(s)
            if s.level is not None:
                levels[str(s.level)].append(s)
        gstats = {}
        for g, v in groups.items():  # in the order the problems come
            gstats[g] = {**_stats(v), "accuracy_ci": S.bootstrap_ci(_problem_strata({g: by[g]}, False), rounds, seed),
                         "pass_at_k": _pass_at([by[g]]), "tokens_by_mode": _by_mode(v)}
        overall = _stats(scored)
        if per_group and gstats:
            for key, nd in (("accuracy", 4), ("mean_tokens", 1), ("think_rate", 4)):
                overall[key] = round(sum(g[key] for g in gstats.values()) / len(gstats), nd)
        rows.append({
            "method": method,
            **{k: v for k, v in overall.items() if k != "count"},
            "accuracy_ci": S.bootstrap_ci(_problem_strata(by, per_group), rounds, seed) if scored else None,
            "pass_at_k": _pass_at(list(by.values()) if per_group else [{(g, k): v for g, p in by.items() for k, v in p.items()}]),
            "tokens_by_mode": _by_mode(scored),
            "samples": len(scored),
            "groups": gstats,
            "by_level": {lv: _stats(v) for lv, v in sorted(levels.items(), key=lambda kv: _level_key(kv[0]))},
        })
    by_name = {r["method"]: r for r in rows}
    base, no = by_name.get(baseline), by_name.get(no_think)
    for r in rows:
        ef1 = None
        if base and no:
            ef1 = S.paper_e_f1(r["accuracy"], r["mean_tokens"], base["accuracy"], base["mean_tokens"], no["accuracy"], no["mean_tokens"])
        r["e_f1"] = None if ef1 is None else round(ef1, 1)
        r["vs_baseline"] = None
        if base and r is not base:
            r["vs_baseline"] = _paired(problems[r["method"]], problems[baseline], per_group, rounds, seed)
            for g, gs in r["groups"].items():
                gs["vs_baseline"] = _paired({g: problems[r["method"]].get(g, {})}, {g: problems[baseline].get(g, {})}, False, rounds, seed)
    return rows


def _paired(a: dict[str, dict[Any, list[Scored]]], b: dict[str, dict[Any, list[Scored]]], per_group: bool, rounds: int, seed: int
            ) -> dict[str, Any] | None:
    """Accuracy difference a − b on the problems both have, with its paired bootstrap interval."""
    sa, sb = [], []
    for g in a:
        shared = [k for k in a[g] if k in b.get(g, {}) and not (isinstance(k, tuple) and k[:1] == ("sample",))]
        if shared:
            sa.append([sum(s.correct for s in a[g][k]) / len(a[g][k]) for k in shared])
            sb.append([sum(s.correct for s in b[g][k]) / len(b[g][k]) for k in shared])
    if not sa:
        return None
    if not per_group:
        sa, sb = [[x for s in sa for x in s]], [[x for s in sb for x in s]]
    d, lo, hi = S.paired_difference_ci(sa, sb, rounds, seed)
    return {"difference": d, "ci": [lo, hi], "inside_noise": S.inside_noise((lo, hi))}


#: row labels of the three prompts in ``autothink eval``
PROMPT_LABELS = {"standard": BASELINE, "no_think": NO_THINK, "ellipsis": "ellipsis prompt"}


def is_r1_distill_1_5b(*names: str | None) -> bool:
    """Whether the evaluated model is the paper's DeepSeek-R1-Distill-Qwen-1.5B (by path, served name or
    the ``_name_or_path`` of its config), so that the paper's Table 1 rows are shown beside ours.

    >>> is_r1_distill_1_5b("/models/DeepSeek-R1-Distill-Qwen-1.5B"), is_r1_distill_1_5b("autothink", ".cache/toy-model")
    (True, False)
    """
    return any(n and "r1-distill-qwen-1.5b" in n.lower() for n in names)


def benchmark_report(results: dict[str, list[Scored]], title: str, subtitle: str, settings: dict[str, Any],
                     paper_reference: bool = False, rounds: int = 1000, seed: int = 0, baseline: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report of ``autothink eval``: one row per prompt, benchmarks averaged as in the paper,
    think rate per MATH500 level, and the paper's Table 1 rows when asked.  ``baseline``: the
    report of another run (the base model) whose standard and no-thinking rows give the E-F1 of
    this run's rows when it has none of its own (e.g. a trained checkpoint under the ellipsis
    prompt only)."""
    rows = table({PROMPT_LABELS.get(k, k): v for k, v in results.items()}, lambda s: str(s.group), average="groups", rounds=rounds, seed=seed)
    report: dict[str, Any] = {"title": title, "subtitle": subtitle, "rows": rows, "average": "groups", "settings": settings,
                              "levels_title": "Think rate per MATH500 level"}
    if baseline is not None:
        report["rows"] = with_baseline(rows, baseline)
        report["baseline"] = baseline.get("settings", {}).get("model")
    if paper_reference:
        report["paper_reference"] = S.paper_reference_rows()
    return report


def with_baseline(rows: list[dict[str, Any]], baseline: dict[str, Any]) -> list[dict[str, Any]]:
    """``rows`` with the E-F1 taken against the standard and no-thinking rows of another report,
    which come first, marked ``(baseline)``.  Rows of this run's own prompts are kept as they are.

    >>> base = {"rows": [{"method": "standard prompt", "accuracy": 0.486, "mean_tokens": 10633, "groups": {}},
    ...                  {"method": "no-thinking prompt", "accuracy": 0.375, "mean_tokens": 2528, "groups": {}}]}
    >>> ours = [{"method": "ellipsis prompt", "accuracy": 0.517, "mean_tokens": 5108, "e_f1": None}]
    >>> [(r["method"], r["e_f1"]) for r in with_baseline(ours, base)][-1]
    ('ellipsis prompt', 39.6)
    """
    names = {r["method"] for r in rows}
    if BASELINE in names and NO_THINK in names:
        return rows
    by = {r["method"]: r for r in baseline.get("rows", [])}
    if BASELINE not in by or NO_THINK not in by:
        raise ValueError("the baseline report has no standard-prompt and no-thinking-prompt rows")
    std, no = by[BASELINE], by[NO_THINK]
    out = [{**r, "method": f"{r['method']} (baseline)", "e_f1": 0.0 if r is std else None, "vs_baseline": None} for r in (std, no)]
    for r in rows:
        ef1 = S.paper_e_f1(r["accuracy"], r["mean_tokens"], std["accuracy"], std["mean_tokens"], no["accuracy"], no["mean_tokens"])
        out.append({**r, "e_f1": None if ef1 is None else round(ef1, 1)})
    return out


def _level_key(level: str) -> tuple[int, Any]:
    return (0, int(level)) if level.lstrip("-").isdigit() else (1, level)


def think_by_level(row: dict[str, Any]) -> dict[str, float]:
    return {lv: s["think_rate"] for lv, s in row["by_level"].items()}


def no_think_by_level(row: dict[str, Any]) -> dict[str, float]:
    return {lv: round(1 - s["think_rate"], 4) for lv, s in row["by_level"].items()}


def check_targets(rows: list[dict[str, Any]], final: str, baseline: str = "standard prompt",
                  previous: str | None = None) -> dict[str, dict[str, Any]]:
    """The demo's targets for the final model, each with the value reached and whether it is met;
    with ``previous`` (the stage before the final one) also the paper's stage-3 effect: fewer
    tokens at about the same accuracy (paper: 0.70x at equal accuracy on R1-Distill-1.5B)."""
    by = {r["method"]: r for r in rows}
    f, b = by[final], by[baseline]
    nt = no_think_by_level(f)
    levels = sorted(nt, key=_level_key)
    out: dict[str, dict[str, Any]] = {
        "accuracy >= standard - 2 points": {"value": f["accuracy"], "goal": round(b["accuracy"] - 0.02, 4), "met": f["accuracy"] >= b["accuracy"] - 0.02},
        "mean tokens <= 0.6 x standard": {"value": round(f["mean_tokens"] / max(b["mean_tokens"], 1e-9), 3), "goal": 0.6,
                                          "met": f["mean_tokens"] <= 0.6 * b["mean_tokens"]},
    }
    if levels:
        out[f"no-think rate >= 0.8 at level {levels[0]}"] = {"value": nt[levels[0]], "goal": 0.8, "met": nt[levels[0]] >= 0.8}
        out[f"no-think rate <= 0.3 at level {levels[-1]}"] = {"value": nt[levels[-1]], "goal": 0.3, "met": nt[levels[-1]] <= 0.3}
    if previous is not None:
        p = by[previous]
        ratio = f["mean_tokens"] / max(p["mean_tokens"], 1e-9)
        out["last stage vs the one before: tokens <= 0.85x"] = {"value": round(ratio, 3), "goal": 0.85, "met": ratio <= 0.85}
        out["last stage vs the one before: accuracy >= -1 point"] = {
            "value": f["accuracy"], "goal": round(p["accuracy"] - 0.01, 4), "met": f["accuracy"] >= p["accuracy"] - 0.01}
    return out


def _acc(stats: dict[str, Any], digits: int = 1) -> str:
    """Accuracy in % with its interval, ``~`` when its difference from the standard prompt is noise.

    >>> _acc({"accuracy": 0.5, "accuracy_ci": [0.4, 0.6], "vs_baseline": {"inside_noise": True}})
    '50.0 [40.0, 60.0] ~'
    """
    text = f"{stats['accuracy'] * 100:.{digits}f}"
    ci = stats.get("accuracy_ci")
    if ci:
        text += f" [{ci[0] * 100:.{digits}f}, {ci[1] * 100:.{digits}f}]"
    if (stats.get("vs_baseline") or {}).get("inside_noise"):
        text += " ~"
    return text


def _num(v: Any, fmt: str = ".1f") -> str:
    return "–" if v is None else format(v, fmt)


def markdown(report: dict[str, Any]) -> str:
    rows = report["rows"]
    groups = list(rows[0]["groups"]) if rows else []
    avg = "average" if report.get("average") == "groups" else "overall"
    head = "| method | " + " | ".join(f"{g} acc | {g} tokens" for g in groups) + f" | {avg} acc [95% CI] | {avg} tokens | think rate | E-F1 |"
    sep = "|---" * (2 * len(groups) + 5) + "|"
    lines = [head, sep]
    for r in rows:
        cells = [f"{_acc(r['groups'][g])} | {r['groups'][g]['mean_tokens']:.1f}" if g in r["groups"] else "– | –" for g in groups]
        lines.append(f"| {r['method']} | " + " | ".join(cells) + f" | **{_acc(r)}** | **{r['mean_tokens']:.1f}** | {r['think_rate']:.2f} | {_num(r['e_f1'])} |")
    out = [f"# {report.get('title', 'AutoThink evaluation')}", "", report.get("subtitle", ""), "", *lines, ""]
    ks = list(rows[0].get("pass_at_k") or {}) if rows else []
    if len(ks) > 1:
        out += [f"## pass@k ({avg}, %; unbiased estimator over each problem's samples)", "",
                "| method | " + " | ".join(f"pass@{k}" for k in ks) + " |", "|---" * (len(ks) + 1) + "|"]
        out += [f"| {r['method']} | " + " | ".join(f"{r['pass_at_k'].get(k, float('nan')) * 100:.1f}" for k in ks) + " |" for r in rows]
        out.append("")
    diffs = [r for r in rows if r.get("vs_baseline")]
    if diffs:
        out += ["## Difference from the standard prompt (accuracy points, paired bootstrap over the same problems)", "",
                "| method | " + " | ".join(groups) + f" | {avg} |", "|---" * (len(groups) + 2) + "|"]
        for r in diffs:
            def cell(v: dict | None) -> str:
                if not v:
                    return "–"
                mark = " ~ (noise)" if v["inside_noise"] else ""
                return f"{v['difference'] * 100:+.1f} [{v['ci'][0] * 100:+.1f}, {v['ci'][1] * 100:+.1f}]{mark}"
            out.append(f"| {r['method']} | " + " | ".join(cell(r["groups"].get(g, {}).get("vs_baseline")) for g in groups)
                       + f" | {cell(r['vs_baseline'])} |")
        out.append("")
    out += ["## Think rate and response length by mode", "",
            "| method | " + " | ".join(f"{g} think rate" for g in groups) + " | tokens (think) | tokens (no-think) |",
            "|---" * (len(groups) + 3) + "|"]
    for r in rows:
        tm = r.get("tokens_by_mode") or {}
        out.append(f"| {r['method']} | " + " | ".join(f"{r['groups'][g]['think_rate']:.2f}" if g in r["groups"] else "–" for g in groups)
                   + f" | {_num(tm.get('think'))} | {_num(tm.get('no_think'))} |")
    out.append("")
    levelled = [r for r in rows if r["by_level"]]
    if levelled and report.get("levels_title"):
        levels = list(dict.fromkeys(lv for r in levelled for lv in r["by_level"]))
        out += [f"## {report['levels_title']}", "", "| method | " + " | ".join(f"L{lv}" for lv in levels) + " |", "|---" * (len(levels) + 1) + "|"]
        out += [f"| {r['method']} | " + " | ".join(_num((r['by_level'].get(lv) or {}).get('think_rate'), '.2f') for lv in levels) + " |"
                for r in levelled]
        out.append("")
    tr = report.get("think_rate_by_level")
    if tr and tr.get("before") and tr.get("after"):
        levels = list(tr["before"])
        out += ["## Think rate by difficulty (ellipsis prompt)", "",
                "| | " + " | ".join(f"L{lv}" for lv in levels) + " |", "|---" * (len(levels) + 1) + "|",
                "| before training | " + " | ".join(f"{tr['before'][lv]:.2f}" for lv in levels) + " |",
                "| after training | " + " | ".join(f"{tr['after'].get(lv, float('nan')):.2f}" for lv in levels) + " |", ""]
    ref = report.get("paper_reference")
    if ref:
        out += ["## The paper's Table 1 (DeepSeek-R1-Distill-Qwen-1.5B), for reference", "",
                "| method (paper) | " + " | ".join(f"{b} acc" for b in S.PAPER_BENCHMARKS) + " | average acc | average tokens | E-F1 |",
                "|---" * (len(S.PAPER_BENCHMARKS) + 4) + "|"]
        for r in ref:
            out.append(f"| {r['method']} | " + " | ".join(_num(r["per_benchmark"].get(b)) for b in S.PAPER_BENCHMARKS)
                       + f" | {r['accuracy']:.1f} | {r['tokens']} | {_num(r['e_f1'])} |")
        out.append("")
    if report.get("targets"):
        out += ["## Targets (final model)", ""]
        for name, t in report["targets"].items():
            out.append(f"- [{'x' if t['met'] else ' '}] {name}: reached {t['value']} (goal {t['goal']})")
        out.append("")
    for title, path in report.get("plots", {}).items():
        out += [f"## {title}", "", f"![{title}]({path})", ""]
    out += ["Accuracy in %, with a 95 % bootstrap interval over problems; `~`: the difference from the standard prompt is inside",
            "the noise (its paired bootstrap interval holds 0). E-F1: the paper's (§4.2): accuracy gain and token reduction, each",
            "divided by the standard − no-thinking gap, harmonic mean × 100; 0 unless better than the standard prompt on both;",
            "– without both prompts' rows. Tokens are response tokens (reasoning + answer).", ""]
    return "\n".join(out)


def plot_think_rate(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8))
    styles = iter(["o--", "s-", "^-", "D-", "v-", "P-", "X-", "*-"] * 4)
    for row in report["rows"]:  # the fixed prompts think always / never: only the adaptive rows tell
        if row["by_level"] and row["method"] not in ("standard prompt", "no-thinking prompt"):
            rate = think_by_level(row)
            ax.plot([str(k) for k in rate], list(rate.values()), next(styles), label=row["method"])
    ax.set_xlabel("difficulty level")
    ax.set_ylabel("think rate")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Think rate by difficulty: low on easy problems, high on hard ones")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_training(metrics_rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in metrics_rows]
    fig, axes = plt.subplots(2, 2, figsize=(9, 5.5), sharex=True)
    panels = [
        ("reward (shaped)", ["reward_shaped"]),
        ("accuracy", ["accuracy"]),
        ("think rate", ["think_rate"]),
        ("response length", ["mean_length_think", "mean_length_no_think"]),
    ]
    bounds = [r["step"] for a, r in zip(metrics_rows, metrics_rows[1:]) if a["stage"] != r["stage"]]
    for ax, (title, keys) in zip(axes.flat, panels):
        for k in keys:
            ax.plot(steps, [r.get(k, 0.0) for r in metrics_rows], label=k.replace("mean_length_", ""))
        for b in bounds:
            ax.axvline(b - 0.5, color="grey", ls=":", lw=1)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=8)
    for ax in axes[1]:
        ax.set_xlabel("step (dotted: stage boundaries)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(report: dict[str, Any], out: Path, metrics_rows: list[dict[str, Any]] | None = None) -> Path:
    """report.json, report.md and the PNG plots into ``out``; returns ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    plots = {}
    if any(r["by_level"] for r in report["rows"]):
        plot_think_rate(report, out / "think_rate_by_level.png")
        plots["Think rate by difficulty"] = "think_rate_by_level.png"
    if metrics_rows:
        plot_training(metrics_rows, out / "training_curves.png")
        plots["Training curves"] = "training_curves.png"
    report = {**report, "plots": plots}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(markdown(report))
    return out
