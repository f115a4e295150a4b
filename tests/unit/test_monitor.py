"""The mode-collapse alarm on hand-made metrics rows, the tracker row flattening, and the
dashboard's data endpoint (no processes: the real run is in tests/integration/test_dashboard.py)."""

from __future__ import annotations

import json
import random

import pytest

from autothink.config import RunConfig
from autothink.monitor import CollapseMonitor, think_rates


def _row(step: int, think: float, levels: dict[str, float] | None = None, per_level: int = 16) -> dict:
    """A metrics row as the learner writes it: batch think rate, no-think rate by level."""
    levels = levels if levels is not None else {str(lv): 1 - think for lv in range(1, 9)}
    return {"step": step, "think_rate": think, "no_think_rate_by_level": levels,
            "samples_by_level": {lv: per_level for lv in levels}}


def _healthy_rows(n: int, seed: int = 0) -> list[dict]:
    """A run like the toy demo: no-think rate falling with difficulty, sampled noise per batch of 128."""
    rng = random.Random(seed)
    rows = []
    for k in range(n):
        target = {lv: 0.5 + (0.45 - 0.1 * (lv - 1)) * min(1, k / n) for lv in range(1, 9)}  # 0.5 -> 0.95 .. 0.25
        levels = {str(lv): sum(rng.random() < p for _ in range(16)) / 16 for lv, p in target.items()}
        rows.append(_row(k, 1 - sum(levels.values()) / 8, levels))
    return rows


def test_an_injected_collapse_to_no_think_raises_the_alarm_after_k_steps():
    m = CollapseMonitor(epsilon=0.05, patience=5, levels=False)
    statuses = [m.update(r) for r in _healthy_rows(10)]
    assert not any(s.active for s in statuses)
    collapsed = [m.update(_row(10 + k, 0.0)) for k in range(6)]  # every sample of every batch: no-think
    assert [s.active for s in collapsed] == [False, False, False, False, True, True]
    assert [a.scope for a in collapsed[4].raised] == ["batch"] and collapsed[5].raised == []  # warned once
    alarm = collapsed[-1].alarms[0]
    assert (alarm.mode, alarm.steps, alarm.since_step) == ("no_think", 6, 10)
    assert "all no-think" in alarm.describe()
    back = m.update(_row(16, 0.3))
    assert not back.active and back.cleared == ["batch"]


def test_an_all_think_stream_raises_the_think_alarm_and_a_near_miss_does_not():
    m = CollapseMonitor(epsilon=0.05, patience=3, levels=False)
    assert not any(m.update(_row(k, 0.94)).active for k in range(10))  # 0.94 < 0.95: both modes still sampled
    s = [m.update(_row(10 + k, 1.0)) for k in range(3)][-1]
    assert s.active and s.alarms[0].mode == "think"


def test_a_mode_switch_restarts_the_count():
    m = CollapseMonitor(epsilon=0.05, patience=3, levels=False)
    rates = [1.0, 1.0, 0.0, 0.0, 1.0, 1.0]  # never 3 in a row in one mode
    assert not any(m.update(_row(k, r)).active for k, r in enumerate(rates))


def test_a_healthy_run_never_raises_the_alarm_at_the_default_thresholds():
    cfg = RunConfig.model_validate({"model": {"path": "m"}, "stages": [{"name": "s", "steps": 1, "prompts_per_batch": 64,
                                                                        "samples_per_prompt": 8, "max_response_tokens": 8}]}).logging
    for seed in range(5):
        m = CollapseMonitor(cfg.collapse_epsilon, cfg.collapse_steps, cfg.collapse_levels, cfg.collapse_min_level_samples)
        assert not any(m.update(r).active for r in _healthy_rows(110, seed)), seed


def test_one_level_collapsing_is_named_while_the_batch_stays_mixed():
    m = CollapseMonitor(epsilon=0.05, patience=2)
    levels = {"1": 1.0, "2": 0.5, "8": 0.5}  # level 1 answers directly every time
    statuses = [m.update(_row(k, 0.33, levels)) for k in range(2)]
    assert [a.scope for a in statuses[-1].alarms] == ["level 1"]
    assert statuses[-1].alarms[0].mode == "no_think"


def test_levels_with_too_few_samples_are_not_judged():
    levels = {"1": 1.0, "2": 0.5}
    row = _row(0, 0.25, levels, per_level=2)
    assert think_rates(row, min_level_samples=8) == {"batch": 0.25}
    m = CollapseMonitor(epsilon=0.05, patience=1, min_level_samples=8)
    assert not m.update(row).active


def test_replay_carries_the_count_across_a_resume():
    rows = [_row(k, 0.0) for k in range(4)]
    m = CollapseMonitor(epsilon=0.05, patience=5, levels=False)
    assert not m.replay(rows).active
    assert m.update(_row(4, 0.0)).active


@pytest.mark.parametrize("bad", [{"epsilon": 0}, {"epsilon": 0.5}, {"patience": 0}])
def test_thresholds_are_checked(bad):
    with pytest.raises(ValueError):
        CollapseMonitor(**bad)


def test_the_logging_section_names_the_trackers_it_accepts():
    from autothink.config import ConfigError, load_config

    cfg = load_config("toy", ["logging.trackers=[tensorboard, mlflow]", "logging.collapse_steps=3"], environ={})
    assert cfg.logging.trackers == ["tensorboard", "mlflow"] and cfg.logging.collapse_steps == 3
    assert load_config("toy", environ={}).logging.trackers == []  # none by default beyond metrics.jsonl
    with pytest.raises(ConfigError, match="logging.trackers.0"):
        load_config("toy", ["logging.trackers=[neptune]"], environ={})
    with pytest.raises(ConfigError, match="collapse_epsilon"):
        load_config("toy", ["logging.collapse_epsilon=0.7"], environ={})


def test_a_missing_tracker_package_names_the_extra_to_install(monkeypatch, tmp_path):
    import sys

    from services.learner.tracking import TrackerUnavailable, open_trackers

    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    run = RunConfig.model_validate({"model": {"path": "m"}, "output_dir": str(tmp_path), "logging": {"trackers": ["wandb"]},
                                    "stages": [{"name": "s", "steps": 1, "prompts_per_batch": 64, "samples_per_prompt": 8,
                                                "max_response_tokens": 8}]})
    with pytest.raises(TrackerUnavailable, match=r"pip install 'autothink-services\[wandb\]'"):
        open_trackers(run)


def test_the_dashboard_serves_a_page_with_no_outside_resources_and_the_rows(tmp_path):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from services.learner.dashboard import add_dashboard, snapshot

    rows = [{"step": k, "stage": "stage1", "think_rate": 0.5, "group_ids": ["x"]} for k in range(3)]
    app = FastAPI()
    add_dashboard(app, lambda: snapshot(rows, total_steps=9, alarm={"active": False, "alarms": []}))
    client = TestClient(app)
    html = client.get("/dashboard").text
    assert 'data-chart="think_rate_by_level"' in html and "/dashboard/data" in html
    for outside in ("http://", "https://", "//cdn"):  # offline: nothing fetched from elsewhere
        assert outside not in html.replace("http://www.w3.org/2000/svg", "")
    data = client.get("/dashboard/data").json()
    assert [r["step"] for r in data["rows"]] == [0, 1, 2] and "group_ids" not in data["rows"][0]
    assert json.dumps(data)  # plain JSON


def test_levels_settled_as_intended_are_a_note_and_the_batch_alone_is_the_alarm(tmp_path):
    """What a real toy run looks like in stages 2-3: level 1 always answers directly, levels 3-8
    always think, the batch stays mixed.  That is the goal, not a collapse: the row's
    ``mode_collapse`` stays false and names the settled levels; a whole batch in one mode is one."""
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry

    from services.learner.tracking import RunWatch

    run = RunConfig.model_validate({"model": {"path": "m"}, "output_dir": str(tmp_path), "stages": [
        {"name": "s", "steps": 20, "prompts_per_batch": 16, "samples_per_prompt": 8, "max_response_tokens": 8}]})
    watch = RunWatch(run, CollectorRegistry(), tmp_path / "metrics.jsonl", total_steps=20)
    batch = SimpleNamespace(samples=[SimpleNamespace(think=True, correct=True, level=lv) for lv in range(1, 9) for _ in range(16)])
    settled = {"1": 1.0, "2": 0.5, **{str(lv): 0.0 for lv in range(3, 9)}}
    rows = [{**_row(k, 0.8, settled), "policy_version": k + 1} for k in range(6)]
    for row in rows:
        watch.record(row, batch)
    assert rows[-1]["mode_collapse"] is False
    assert rows[-1]["levels_in_one_mode"] == {"1": "no_think", **{str(lv): "think" for lv in range(3, 9)}}
    gone = [{**_row(6 + k, 0.0, {str(lv): 1.0 for lv in range(1, 9)}), "policy_version": 7 + k} for k in range(5)]
    for row in gone:
        watch.record(row, batch)
    assert gone[-1]["mode_collapse"] is True and gone[-1]["levels_in_one_mode"]["3"] == "no_think"
