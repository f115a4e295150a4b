"""The evaluation report: a table shaped like the paper's Table 1, think rate by difficulty, E-F1,
the targets, and plots.  Tabulation is pure (tested with hand-made rows); plotting uses matplotlib.

E-F1 (efficiency F1) of a method against the standard prompt: the harmonic mean of the relative
accuracy gain ``(acc − acc_std) / acc_std`` and the relative token reduction
``(tokens_std − tokens) / tokens_std``; 0 when accuracy falls (or tokens grow).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from autothink.evaluation import Scored


def e_f1(accuracy: float, tokens: float, base_accuracy: float, base_tokens: float) -> float:
    """E-F1 of (accuracy, tokens) against a baseline.

    >>> round(e_f1(0.55, 50, 0.5, 100), 4)  # +10 % accuracy, −50 % tokens
    0.1667
    >>> e_f1(0.45, 10, 0.5, 100), e_f1(0.6, 120, 0.5, 100)
    (0.0, 0.0)
    """
    if base_accuracy <= 0 or base_tokens <= 0:
        return 0.0
    gain = (accuracy - base_accuracy) / base_accuracy
    cut = (base_tokens - tokens) / base_tokens
    if gain <= 0 or cut <= 0:
        return 0.0
    return 2 * gain * cut / (gain + cut)


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


def table(results: dict[str, list[Scored]], group_of: Callable[[Scored], str], baseline: str = "standard prompt") -> list[dict[str, Any]]:
    """One row per method (in the order given): overall accuracy, mean tokens, think rate, E-F1
    against ``baseline``, and the same per group and per level."""
    rows = []
    for method, scored in results.items():
        groups: dict[str, list[Scored]] = defaultdict(list)
        levels: dict[str, list[Scored]] = defaultdict(list)
        for s in scored:
            groups[group_of(s)].append(s)
            if s.level is not None:
                levels[str(s.level)].append(s)
        rows.append({
            "method": method,
            **{k: v for k, v in _stats(scored).items() if k != "count"},
            "samples": len(scored),
            "groups": {g: _stats(v) for g, v in groups.items()},  # in the order the problems come
            "by_level": {lv: _stats(v) for lv, v in sorted(levels.items(), key=lambda kv: _level_key(kv[0]))},
        })
    base = next((r for r in rows if r["method"] == baseline), None)
    for r in rows:
        r["e_f1"] = round(e_f1(r["accuracy"], r["mean_tokens"], base["accuracy"], base["mean_tokens"]), 4) if base else None
    return rows


def _level_key(level: str) -> tuple[int, Any]:
    return (0, int(level)) if level.lstrip("-").isdigit() else (1, level)


def think_by_level(row: dict[str, Any]) -> dict[str, float]:
    return {lv: s["think_rate"] for lv, s in row["by_level"].items()}


def no_think_by_level(row: dict[str, Any]) -> dict[str, float]:
    return {lv: round(1 - s["think_rate"], 4) for lv, s in row["by_level"].items()}


def check_targets(rows: list[dict[str, Any]], final: str, baseline: str = "standard prompt") -> dict[str, dict[str, Any]]:
    """The demo's targets for the final model, each with the value reached and whether it is met."""
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
    return out


def markdown(report: dict[str, Any]) -> str:
    rows = report["rows"]
    groups = list(rows[0]["groups"]) if rows else []
    head = "| method | " + " | ".join(f"{g} acc | {g} tokens" for g in groups) + " | overall acc | overall tokens | think rate | E-F1 |"
    sep = "|---" * (2 * len(groups) + 5) + "|"
    lines = [head, sep]
    for r in rows:
        cells = [f"{r['groups'][g]['accuracy'] * 100:.1f} | {r['groups'][g]['mean_tokens']:.1f}" if g in r["groups"] else "– | –" for g in groups]
        ef1 = "–" if r["e_f1"] is None else f"{r['e_f1']:.3f}"
        lines.append(f"| {r['method']} | " + " | ".join(cells) + f" | **{r['accuracy'] * 100:.1f}** | **{r['mean_tokens']:.1f}** | {r['think_rate']:.2f} | {ef1} |")
    out = [f"# {report.get('title', 'AutoThink evaluation')}", "", report.get("subtitle", ""), "", *lines, ""]
    tr = report.get("think_rate_by_level")
    if tr and tr.get("before"):
        levels = list(tr["before"])
        out += ["## Think rate by difficulty (ellipsis prompt)", "",
                "| | " + " | ".join(f"L{lv}" for lv in levels) + " |", "|---" * (len(levels) + 1) + "|",
                "| before training | " + " | ".join(f"{tr['before'][lv]:.2f}" for lv in levels) + " |",
                "| after training | " + " | ".join(f"{tr['after'].get(lv, float('nan')):.2f}" for lv in levels) + " |", ""]
    if report.get("targets"):
        out += ["## Targets (final model)", ""]
        for name, t in report["targets"].items():
            out.append(f"- [{'x' if t['met'] else ' '}] {name}: reached {t['value']} (goal {t['goal']})")
        out.append("")
    for title, path in report.get("plots", {}).items():
        out += [f"## {title}", "", f"![{title}]({path})", ""]
    out += ["E-F1: harmonic mean of the relative accuracy gain and the relative token reduction against the",
            "standard prompt; 0 when accuracy falls or tokens grow. Tokens are response tokens (reasoning + answer).", ""]
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
