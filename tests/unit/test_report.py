"""The evaluation report: Table-1 rows, E-F1 and targets from hand-made samples; the files it writes."""

from __future__ import annotations

import json

import pytest

from autothink import report as R
from autothink.evaluation import Scored


def _s(level: int, mode: str, correct: bool, tokens: int) -> Scored:
    return Scored(level, "x", mode, correct, True, tokens)


def _results() -> dict[str, list[Scored]]:
    # standard: always thinks, 3/4 right, 100 tokens; trained: skips thinking on level 1
    standard = [_s(1, "think", True, 100), _s(1, "think", True, 100), _s(8, "think", True, 100), _s(8, "think", False, 100)]
    trained = [_s(1, "no_think", True, 10), _s(1, "no_think", True, 10), _s(8, "think", True, 90), _s(8, "think", True, 90)]
    worse = [_s(1, "no_think", True, 10), _s(1, "no_think", False, 10), _s(8, "no_think", False, 10), _s(8, "think", True, 90)]
    no_think = [_s(1, "no_think", True, 10), _s(1, "no_think", True, 10), _s(8, "no_think", False, 10), _s(8, "no_think", False, 10)]
    return {"standard prompt": standard, "AutoThink stage 3": trained, "worse": worse, "no-thinking prompt": no_think}


def test_rows_by_hand() -> None:
    rows = R.table(_results(), lambda s: R.toy_group(s.level))
    std, trained, worse, no = rows
    assert (std["accuracy"], std["mean_tokens"], std["think_rate"], std["e_f1"]) == (0.75, 100.0, 1.0, 0.0)
    assert (trained["accuracy"], trained["mean_tokens"], trained["think_rate"]) == (1.0, 50.0, 0.5)
    # the paper's E-F1: gains over the standard prompt divided by the standard - no-thinking gap
    # (accuracy 0.75 - 0.5, tokens 100 - 10): dAcc = 0.25 / 0.25 = 1, dTok = 50 / 90 = 5/9,
    # E-F1 = 2 * 1 * 5/9 / (1 + 5/9) * 100 = 71.4
    assert trained["e_f1"] == 71.4
    assert worse["e_f1"] == 0.0  # accuracy fell: 0 whatever the savings
    assert no["e_f1"] == 0.0
    g = trained["groups"]["easy (L1-2)"]
    assert {k: g[k] for k in ("accuracy", "mean_tokens", "think_rate", "count")} == {"accuracy": 1.0, "mean_tokens": 10.0, "think_rate": 0.0, "count": 2}
    assert trained["tokens_by_mode"] == {"think": 90.0, "no_think": 10.0} and std["tokens_by_mode"] == {"think": 100.0, "no_think": None}
    assert trained["by_level"]["8"]["think_rate"] == 1.0
    assert R.think_by_level(trained) == {"1": 0.0, "8": 1.0}


def test_targets() -> None:
    rows = R.table(_results(), lambda s: R.toy_group(s.level))
    t = R.check_targets(rows, "AutoThink stage 3")
    assert t["accuracy >= standard - 2 points"]["met"]
    assert t["mean tokens <= 0.6 x standard"] == {"value": 0.5, "goal": 0.6, "met": True}
    assert t["no-think rate >= 0.8 at level 1"]["met"]
    assert t["no-think rate <= 0.3 at level 8"] == {"value": 0.0, "goal": 0.3, "met": True}
    t = R.check_targets(rows, "worse")
    assert not t["accuracy >= standard - 2 points"]["met"] and not t["no-think rate <= 0.3 at level 8"]["met"]
    assert not any(name.startswith("last stage") for name in t)  # no previous stage named: no stage-3 targets


def test_stage_targets_against_the_previous_stage() -> None:
    rows = R.table(_results(), lambda s: R.toy_group(s.level))
    # "worse" after "AutoThink stage 3": tokens 30 vs 50 (0.6x, met), accuracy 0.5 vs 1.0 (not within 1 point)
    t = R.check_targets(rows, "worse", previous="AutoThink stage 3")
    assert t["last stage vs the one before: tokens <= 0.85x"] == {"value": 0.6, "goal": 0.85, "met": True}
    assert t["last stage vs the one before: accuracy >= -1 point"] == {"value": 0.5, "goal": 0.99, "met": False}
    # stage 3 after the standard prompt: 50 vs 100 tokens, accuracy 1.0 vs 0.75
    t = R.check_targets(rows, "AutoThink stage 3", previous="standard prompt")
    assert t["last stage vs the one before: tokens <= 0.85x"]["value"] == 0.5
    assert t["last stage vs the one before: accuracy >= -1 point"]["met"]


def test_write_report_files(tmp_path) -> None:
    rows = R.table(_results(), lambda s: R.toy_group(s.level))
    report = {"title": "t", "rows": rows, "think_rate_by_level": {"before": R.think_by_level(rows[0]), "after": R.think_by_level(rows[1])},
              "targets": R.check_targets(rows, "AutoThink stage 3")}
    metrics = [{"step": i, "stage": "stage1" if i < 2 else "stage2", "reward_shaped": 0.1 * i, "accuracy": 0.5, "think_rate": 0.5,
                "mean_length_think": 40, "mean_length_no_think": 10} for i in range(4)]
    R.write(report, tmp_path, metrics)
    data = json.loads((tmp_path / "report.json").read_text())
    assert [r["method"] for r in data["rows"]] == ["standard prompt", "AutoThink stage 3", "worse", "no-thinking prompt"]
    assert {"method", "accuracy", "mean_tokens", "think_rate", "e_f1"} <= set(data["rows"][0])
    assert data["think_rate_by_level"] == {"before": {"1": 1.0, "8": 1.0}, "after": {"1": 0.0, "8": 1.0}}
    md = (tmp_path / "report.md").read_text()
    assert "| AutoThink stage 3 |" in md and "**100.0" in md and "[x] no-think rate >= 0.8 at level 1" in md
    assert "| 71.4 |" in md  # the trained row's E-F1
    for png in ("think_rate_by_level.png", "training_curves.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_e_f1_needs_both_prompts() -> None:
    results = _results()
    del results["no-thinking prompt"]
    assert all(r["e_f1"] is None for r in R.table(results, lambda s: R.toy_group(s.level)))


def _bench(group: str, problem: int, correct: list[bool], tokens: int = 10, mode: str = "think") -> list[Scored]:
    return [Scored(None, "x", mode, c, True, tokens, group, problem) for c in correct]


def test_benchmark_average_pass_at_k_and_noise() -> None:
    """Two benchmarks of unequal size: the average is over benchmarks (as the paper's), pass@k over
    each problem's samples, and a small difference on few problems is marked as noise."""
    std = _bench("a", 0, [True, False]) + _bench("a", 1, [False, False]) + _bench("b", 0, [True, True]) \
        + _bench("b", 1, [True, True]) + _bench("b", 2, [True, False]) + _bench("b", 3, [False, False])
    other = _bench("a", 0, [True, True]) + _bench("a", 1, [False, False]) + _bench("b", 0, [True, True]) \
        + _bench("b", 1, [True, True]) + _bench("b", 2, [True, False]) + _bench("b", 3, [False, False])
    rows = R.table({"standard prompt": std, "other": other}, lambda s: s.group, average="groups")
    s, o = rows
    # a: (0.5 + 0) / 2 = 0.25; b: (1 + 1 + 0.5 + 0) / 4 = 0.625; average 0.4375 (the mean over samples would be 0.5)
    assert (s["groups"]["a"]["accuracy"], s["groups"]["b"]["accuracy"], s["accuracy"]) == (0.25, 0.625, 0.4375)
    # pass@2 with 2 samples: solved at all?  a: 1/2, b: 3/4 -> 0.625; pass@1 is the accuracy
    assert s["pass_at_k"] == {"1": 0.4375, "2": 0.625}
    lo, hi = s["accuracy_ci"]
    assert lo <= s["accuracy"] <= hi
    d = o["vs_baseline"]
    assert d["difference"] == pytest.approx(0.125) and d["inside_noise"]  # +0.5 on one of a's two problems, /2 benchmarks
    assert o["groups"]["b"]["vs_baseline"] == {"difference": 0.0, "ci": [0.0, 0.0], "inside_noise": True}
    md = R.markdown({"rows": rows, "average": "groups", "paper_reference": __import__("autothink.eval_stats").eval_stats.paper_reference_rows()})
    assert "| average acc [95% CI] |" in md and "pass@2" in md and "~ (noise)" in md and "| 39.6 |" in md
