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
    return {"standard prompt": standard, "AutoThink stage 3": trained, "worse": worse}


def test_rows_by_hand() -> None:
    rows = R.table(_results(), lambda s: R.toy_group(s.level))
    std, trained, worse = rows
    assert (std["accuracy"], std["mean_tokens"], std["think_rate"], std["e_f1"]) == (0.75, 100.0, 1.0, 0.0)
    assert (trained["accuracy"], trained["mean_tokens"], trained["think_rate"]) == (1.0, 50.0, 0.5)
    # gain = (1 - 0.75) / 0.75 = 1/3, cut = 0.5 -> 2 * (1/3) * 0.5 / (1/3 + 0.5) = 0.4
    assert trained["e_f1"] == pytest.approx(0.4)
    assert worse["e_f1"] == 0.0  # accuracy fell: 0 whatever the savings
    assert trained["groups"]["easy (L1-2)"] == {"accuracy": 1.0, "mean_tokens": 10.0, "think_rate": 0.0, "count": 2}
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


def test_write_report_files(tmp_path) -> None:
    rows = R.table(_results(), lambda s: R.toy_group(s.level))
    report = {"title": "t", "rows": rows, "think_rate_by_level": {"before": R.think_by_level(rows[0]), "after": R.think_by_level(rows[1])},
              "targets": R.check_targets(rows, "AutoThink stage 3")}
    metrics = [{"step": i, "stage": "stage1" if i < 2 else "stage2", "reward_shaped": 0.1 * i, "accuracy": 0.5, "think_rate": 0.5,
                "mean_length_think": 40, "mean_length_no_think": 10} for i in range(4)]
    R.write(report, tmp_path, metrics)
    data = json.loads((tmp_path / "report.json").read_text())
    assert [r["method"] for r in data["rows"]] == ["standard prompt", "AutoThink stage 3", "worse"]
    assert {"method", "accuracy", "mean_tokens", "think_rate", "e_f1"} <= set(data["rows"][0])
    assert data["think_rate_by_level"] == {"before": {"1": 1.0, "8": 1.0}, "after": {"1": 0.0, "8": 1.0}}
    md = (tmp_path / "report.md").read_text()
    assert "| AutoThink stage 3 |" in md and "**100.0**" in md and "[x] no-think rate >= 0.8 at level 1" in md
    for png in ("think_rate_by_level.png", "training_curves.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
