"""The degeneration alarm on the metric series of issue #31's failed runs and on a healthy run's
series, and the rule that lets the reasoning learn from correctness while the mode decision learns
from the AutoThink reward (hand-computed numbers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autothink.batching import batch_stats, build_batch
from autothink.bus.messages import PromptMsg, Sample, Score, ScoredGroup
from autothink.config import MonitorConfig, StageConfig
from autothink.monitor import DegenerationMonitor
from autothink.rewards import trace_rewards

HEALTHY = Path(__file__).resolve().parents[1] / "data" / "healthy_demo_metrics.jsonl"


def _interp(points: list[tuple[int, float]], step: int) -> float:
    """Piecewise-linear through the (step, value) points the issue quotes; flat past the ends."""
    if step <= points[0][0]:
        return points[0][1]
    for (s0, v0), (s1, v1) in zip(points, points[1:]):
        if s0 <= step <= s1:
            return v0 + (v1 - v0) * (step - s0) / (s1 - s0)
    return points[-1][1]


def _series(acc: list[tuple[int, float]], length: list[tuple[int, float]], steps: int = 120) -> list[dict]:
    return [{"step": k, "accuracy_think": _interp(acc, k), "mean_length_think": _interp(length, k),
             "truncation_rate_think": 0.0, "think_samples": 64} for k in range(steps)]


# issue #31, the first clone's run: batch think accuracy 0.88 (step 0) -> 0.46 (step 20) -> 0.13
# (step 45) -> 0.04-0.12 through stage 3 (steps 80-119); mean think length 67 -> 195 over the run
FIRST_CLONE = _series([(0, 0.88), (20, 0.46), (45, 0.13), (80, 0.08), (119, 0.08)], [(0, 67), (119, 195)])
# the third run (clone 2's toy, RL seed 1): 0.93 -> 0.43 -> 0.16 within the first 20 steps of
# stage 1, think length flat (84) until it grew in stage 3 (162)
THIRD_RUN = _series([(0, 0.93), (10, 0.43), (20, 0.16), (119, 0.16)], [(0, 84), (80, 84), (119, 162)])


def _first_alarm(rows: list[dict], monitor: DegenerationMonitor | None = None) -> int | None:
    m = monitor or DegenerationMonitor()
    for row in rows:
        if m.update(row) is not None:
            return row["step"]
    return None


def test_the_first_clones_collapse_raises_the_alarm_by_step_25():
    step = _first_alarm(FIRST_CLONE)
    assert step is not None and step <= 25, step


def test_the_third_runs_collapse_raises_the_alarm_before_its_traces_grow():
    step = _first_alarm(THIRD_RUN)
    assert step is not None and step <= 20, step


def test_a_healthy_demo_run_stays_silent():
    """The metrics of `make demo` on the embedded toy (seed 0, 120 steps): think accuracy falls
    ~15 % as the policy stops thinking on easy problems, think answers grow and then shrink in
    stage 3 -- none of it is degeneration."""
    rows = [json.loads(line) for line in HEALTHY.read_text().splitlines() if line.strip()]
    assert len(rows) >= 100
    m = DegenerationMonitor()
    assert [r["step"] for r in rows if m.update(r) is not None] == []


def test_the_defaults_of_the_setting_are_the_monitors():
    cfg, m = MonitorConfig(), DegenerationMonitor()
    assert (cfg.degeneration_window, cfg.degeneration_drop, cfg.degeneration_length_rise, cfg.degeneration_truncation_rise,
            cfg.degeneration_steps, cfg.degeneration_severe_drop) == (m.window, m.drop, m.length_rise, m.truncation_rise,
                                                                      m.patience, m.severe_drop)
    assert cfg.on_degeneration == "warn"
    with pytest.raises(ValueError, match="must not exceed"):
        MonitorConfig(degeneration_drop=0.6, degeneration_severe_drop=0.5)


def test_the_alarm_needs_the_length_or_truncation_for_a_mild_drop_and_clears_on_recovery():
    m = DegenerationMonitor(window=1, patience=1)
    def row(k, a, n=60.0, t=0.0):
        return {"step": k, "accuracy_think": a, "mean_length_think": n, "truncation_rate_think": t}
    assert m.update(row(0, 0.9)) is None
    assert m.update(row(1, 0.55)) is None  # 0.61x the best, answers no longer: a healthy shift to harder problems
    assert m.update(row(2, 0.55, 70.0)) is not None  # 70 >= 1.15 x 60
    assert m.update(row(3, 0.85)) is None  # recovered
    assert m.update(row(4, 0.55, 60.0, 0.06)) is not None  # truncation 0 -> 0.06
    assert m.update(row(5, 0.40)) is not None  # below half the best: enough alone
    alarm = m.alarm
    assert (alarm.best_accuracy, alarm.best_step, alarm.accuracy) == (0.9, 0, 0.4)


def test_a_step_with_few_think_samples_is_skipped():
    m = DegenerationMonitor(window=1, patience=1)
    m.update({"step": 0, "accuracy_think": 0.9, "mean_length_think": 60, "think_samples": 64})
    assert m.update({"step": 1, "accuracy_think": 0.0, "mean_length_think": 200, "think_samples": 3}) is None
    assert m.update({"step": 2, "accuracy_think": None}) is None


# ------------------------------------------------------------------ the trace learns from correctness
def test_trace_rewards_by_hand():
    """Correctness alone, then stage 3's length shaping among the correct and among the wrong."""
    from types import SimpleNamespace as S

    xs = [S(group_id="g", think=True, correct=True, length=10, reward=1.0), S(group_id="g", think=False, correct=True, length=30, reward=2.0),
          S(group_id="g", think=True, correct=False, length=50, reward=0.0), S(group_id="g", think=False, correct=False, length=50, reward=-1.0)]
    stage1 = StageConfig(name="s", steps=1, prompts_per_batch=1, samples_per_prompt=4, max_response_tokens=8, batch_balance_rate=0.5)
    assert trace_rewards(xs, stage1) == [1.0, 1.0, 0.0, 0.0]  # no mode bet, no batch balance
    stage3 = stage1.model_copy(update={"batch_balance_rate": 1.0, "alpha": 0.05, "beta": 0.05})
    # correct lengths 10, 30: z = -/+0.7071, exp(0.05 * 0.7071) - 1 = +0.0360, exp(-0.0354) - 1 = -0.0347;
    # wrong lengths 50, 50: std 0 -> floored, z = 0, no change
    assert [round(r, 4) for r in trace_rewards(xs, stage3)] == [1.036, 0.9653, 0.0, 0.0]


def _group(gid: str, rows: list[tuple[str, bool | None, float, str]]) -> ScoredGroup:
    samples = [Sample("x", [1, 2, 3], [-0.1] * 3, finish) for _, _, _, finish in rows]
    scores = [Score(mode, mode != "think" or reward != 0.0 or ok is not None, ok, "ok", reward, 3) for mode, ok, reward, _ in rows]
    return ScoredGroup(PromptMsg(group_id=gid, problem="p", level=5), 0, samples, scores, [7, 8])


def test_the_mode_token_learns_the_reward_and_the_trace_correctness_and_the_batch_reports_truncation():
    # a level where direct answers are right: a right think answer (+1) below two right direct
    # ones (+2), and a truncated think trace (format error, 0)
    g = _group("g", [("think", True, 1.0, "stop"), ("think", False, 0.0, "length"),
                     ("no_think", True, 2.0, "stop"), ("no_think", True, 2.0, "stop")])
    base = dict(name="s", steps=1, prompts_per_batch=1, samples_per_prompt=4, max_response_tokens=8)
    reference = build_batch([g], StageConfig(**base, trace_advantage="reward"))
    default = build_batch([g], StageConfig(**base))
    # rewards 1, 0, 2, 2: mean 1.25, unbiased std sqrt((0.0625 + 1.5625 + 2 * 0.5625) / 3) = 0.9574
    assert [round(a, 4) for a in reference.advantages] == [-0.2611, -1.3056, 0.7833, 0.7833]
    assert reference.first_token_advantages is None and reference.token_advantages(0, 2) == [reference.advantages[0]] * 2
    # the choice: the reference's advantages on the first token
    assert [round(a, 4) for a in default.first_token_advantages] == [-0.2611, -1.3056, 0.7833, 0.7833]
    # the trace: correctness 1, 0, 1, 1 (mean 0.75, std 0.5): the right think trace is no longer pushed down
    assert [round(a, 4) for a in default.advantages] == [0.5, -1.5, 0.5, 0.5]
    assert [round(a, 4) for a in default.token_advantages(0, 3)] == [-0.2611, 0.5, 0.5]
    st = batch_stats(default)
    assert st["think_samples"] == 2 and st["truncation_rate_think"] == 0.5 and st["truncation_rate"] == 0.25


def test_the_learners_watch_raises_the_alarm_on_metrics_dashboard_and_stop(tmp_path):
    """RunWatch (what the learner runs on each row) on batches whose think accuracy follows the
    first clone's collapse: the row says so, the gauge is 1 on /metrics, the dashboard data
    carries the message, and with on_degeneration: stop the learner is told to stop."""
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry, generate_latest

    from autothink.config import RunConfig
    from services.learner.dashboard import snapshot
    from services.learner.tracking import RunWatch

    run = RunConfig.model_validate({"model": {"path": "m"}, "output_dir": str(tmp_path), "monitor": {"on_degeneration": "stop"},
                                    "stages": [{"name": "s", "steps": 40, "prompts_per_batch": 16, "samples_per_prompt": 8,
                                                "max_response_tokens": 8}]})
    registry = CollectorRegistry()
    watch = RunWatch(run, registry, tmp_path / "metrics.jsonl", total_steps=40)
    fired = None
    for row in FIRST_CLONE[:40]:
        right = round(row["accuracy_think"] * 64)
        batch = SimpleNamespace(samples=[SimpleNamespace(think=True, correct=i < right, level=5) for i in range(64)]
                                + [SimpleNamespace(think=False, correct=False, level=5) for _ in range(64)])
        out = {"step": row["step"], "policy_version": row["step"] + 1, "think_rate": 0.5, "mean_length_think": row["mean_length_think"],
               "truncation_rate_think": 0.0, "think_samples": 64, "no_think_rate_by_level": {"5": 0.5}}
        watch.record(out, batch)
        if out["degeneration"] and fired is None:
            fired = row["step"]
            assert watch.should_stop
            assert b"autothink_learner_degeneration 1.0" in generate_latest(registry)
            data = snapshot([out], degeneration=watch.degenerate.to_json(), on_degeneration=watch.on_degeneration)
            assert "think accuracy" in data["degeneration"]["message"] and data["rows"][0]["degeneration"] is True
    assert fired is not None and fired <= 25, fired
