"""Watching the think/no-think split while training: the mode-collapse alarm.

Why: the paper's stage 1 exists because plain GRPO on the ellipsis prompt collapses into one mode
within a few dozen steps — the no-think reward (+2 correct) pulls the whole policy to never
think, or the accuracy of thinking pulls it to always think — and once a mode is gone the group
baseline can never bring it back (no samples, no advantage).  Batch balance (gamma = 0.5) keeps
both alive; later stages remove it and can drift into the same hole.  This module says, from the
per-step rows the learner logs, when the split has gone: the think rate of the batch (or of one
difficulty level) stayed above 1 - epsilon or below epsilon for ``patience`` consecutive steps.

Pure: plain dicts in, plain dicts out; no torch, no I/O.

>>> m = CollapseMonitor(epsilon=0.05, patience=3)
>>> [m.update({"step": k, "think_rate": 0.0}).active for k in range(4)]
[False, False, True, True]
>>> m.status().alarms[0].describe()
'batch: all no-think (think rate 0.00 < 0.05) for 4 steps since step 0'
>>> m.update({"step": 4, "think_rate": 0.4}).active   # one mixed batch resets the count
False
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Mode = Literal["think", "no_think"]
BATCH = "batch"


@dataclass(frozen=True)
class Alarm:
    """One series (the batch, or ``level N``) stuck in one mode."""

    scope: str  # "batch" or "level 3"
    mode: Mode  # the mode everything went to
    think_rate: float  # in the latest step
    steps: int  # consecutive steps in that mode
    since_step: int
    epsilon: float

    def describe(self) -> str:
        """
        >>> Alarm("level 8", "think", 1.0, 5, 12, 0.05).describe()
        'level 8: all think (think rate 1.00 > 0.95) for 5 steps since step 12'
        """
        bound = f"> {1 - self.epsilon:.2f}" if self.mode == "think" else f"< {self.epsilon:.2f}"
        what = "all think" if self.mode == "think" else "all no-think"
        return f"{self.scope}: {what} (think rate {self.think_rate:.2f} {bound}) for {self.steps} steps since step {self.since_step}"


@dataclass
class Status:
    alarms: list[Alarm] = field(default_factory=list)
    raised: list[Alarm] = field(default_factory=list)  # alarms that started at this step (for a one-time warning)
    cleared: list[str] = field(default_factory=list)  # scopes whose alarm ended at this step

    @property
    def active(self) -> bool:
        return bool(self.alarms)

    def to_json(self) -> dict[str, Any]:
        return {"active": self.active, "alarms": [{**asdict(a), "message": a.describe()} for a in self.alarms]}


@dataclass
class _Run:
    mode: Mode
    since_step: int
    steps: int = 0


def think_rates(row: Mapping[str, Any], min_level_samples: int = 1) -> dict[str, float]:
    """The series one metrics row contributes: the batch's think rate and, per level, 1 - the
    level's no-think rate.  A level with fewer than ``min_level_samples`` samples in the batch
    (``samples_by_level``, where the row has it) says too little to count either way.

    >>> think_rates({"think_rate": 0.5, "no_think_rate_by_level": {"1": 0.75, "8": 0.0},
    ...              "samples_by_level": {"1": 4, "8": 1}}, min_level_samples=2)
    {'batch': 0.5, 'level 1': 0.25}
    """
    out = {BATCH: float(row["think_rate"])}
    counts = row.get("samples_by_level") or {}
    for level, no_think in (row.get("no_think_rate_by_level") or {}).items():
        if counts and counts.get(level, 0) < min_level_samples:
            continue
        out[f"level {level}"] = round(1.0 - float(no_think), 6)
    return out


class CollapseMonitor:
    """A small state machine per series: how many steps in a row its think rate sat in one mode.

    ``epsilon``: a think rate above 1 - epsilon counts as all-think, below epsilon as all-no-think.
    ``patience``: the alarm rises when a series stays there this many consecutive steps, and
    clears at the first step back inside.  ``levels=False`` watches the batch only.
    """

    def __init__(self, epsilon: float = 0.05, patience: int = 5, levels: bool = True, min_level_samples: int = 1):
        if not 0 < epsilon < 0.5:
            raise ValueError(f"epsilon must be in (0, 0.5), got {epsilon}")
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        self.epsilon, self.patience, self.levels, self.min_level_samples = epsilon, patience, levels, min_level_samples
        self._runs: dict[str, _Run] = {}
        self._last: dict[str, float] = {}

    def _mode(self, rate: float) -> Mode | None:
        if rate > 1 - self.epsilon:
            return "think"
        if rate < self.epsilon:
            return "no_think"
        return None

    def update(self, row: Mapping[str, Any]) -> Status:
        """Feed one step's metrics row (needs ``step`` and ``think_rate``)."""
        before = {s for s, r in self._runs.items() if r.steps >= self.patience}
        rates = think_rates(row, self.min_level_samples)
        if not self.levels:
            rates = {BATCH: rates[BATCH]}
        step = int(row["step"])
        for scope, rate in rates.items():
            mode = self._mode(rate)
            run = self._runs.get(scope)
            if mode is None:
                self._runs.pop(scope, None)
            elif run is None or run.mode != mode:
                self._runs[scope] = _Run(mode, step, 1)
            else:
                run.steps += 1
            self._last[scope] = rate
        status = self.status()
        status.raised = [a for a in status.alarms if a.scope not in before]
        status.cleared = sorted(before - {a.scope for a in status.alarms})
        return status

    def status(self) -> Status:
        alarms = [Alarm(scope, r.mode, self._last[scope], r.steps, r.since_step, self.epsilon)
                  for scope, r in self._runs.items() if r.steps >= self.patience]
        alarms.sort(key=lambda a: (a.scope != BATCH, a.scope))
        return Status(alarms)

    def replay(self, rows: Iterable[Mapping[str, Any]]) -> Status:
        """Feed rows already logged (a resumed run) and return the state after the last."""
        status = self.status()
        for row in rows:
            status = self.update(row)
        return status


def mode_stats(samples: Iterable[Any]) -> dict[str, Any]:
    """Accuracy by mode and samples per level of a training batch (objects with ``think``,
    ``correct`` and ``level``) — what the dashboard plots beside the think rate.

    ``accuracy_think_by_level`` lets think accuracy be compared at equal difficulty: the batch's
    think accuracy also falls when the policy stops thinking on easy problems.

    >>> from types import SimpleNamespace as S

    >>> mode_stats([S(think=True, correct=True, level=1), S(think=True, correct=False, level=2),
    ...             S(think=False, correct=True, level=2)])
    {'accuracy_think': 0.5, 'accuracy_no_think': 1.0, 'samples_by_level': {'1': 1, '2': 2}, 'accuracy_think_by_level': {'1': 1.0, '2': 0.0}, 'think_samples_by_level': {'1': 1, '2': 1}}
    """
    think, direct, levels = [], [], {}
    think_by: dict[str, list[bool]] = {}
    for s in samples:
        (think if s.think else direct).append(bool(s.correct))
        levels[str(s.level)] = levels.get(str(s.level), 0) + 1
        if s.think:
            think_by.setdefault(str(s.level), []).append(bool(s.correct))
    return {
        "accuracy_think": sum(think) / len(think) if think else None,
        "accuracy_no_think": sum(direct) / len(direct) if direct else None,
        "samples_by_level": dict(sorted(levels.items())),
        "accuracy_think_by_level": {k: round(sum(v) / len(v), 4) for k, v in sorted(think_by.items())},
        "think_samples_by_level": {k: len(v) for k, v in sorted(think_by.items())},
    }


def think_accuracy_at_fixed_difficulty(rows: Sequence[Mapping[str, Any]], min_samples: int = 4) -> list[float | None]:
    """Per row, the mean over levels of think accuracy at that level, each level weighted by its
    think samples over *all* the rows (so a level's weight does not move as the policy shifts
    where it thinks); levels with fewer than ``min_samples`` think samples in a row are left out
    of that row and the weights renormalised.  Rows without per-level figures give None.

    >>> rows = [{"accuracy_think_by_level": {"1": 1.0, "8": 0.5}, "think_samples_by_level": {"1": 8, "8": 8}},
    ...         {"accuracy_think_by_level": {"8": 0.5}, "think_samples_by_level": {"8": 16}}]
    >>> think_accuracy_at_fixed_difficulty(rows)   # level 1 weighs 8 of 32: (8 x 1 + 24 x 0.5) / 32; then level 8 alone
    [0.625, 0.5]
    """
    total: dict[str, int] = {}
    for r in rows:
        for k, n in (r.get("think_samples_by_level") or {}).items():
            total[k] = total.get(k, 0) + int(n)
    out: list[float | None] = []
    for r in rows:
        acc, n = r.get("accuracy_think_by_level") or {}, r.get("think_samples_by_level") or {}
        keep = [k for k in acc if n.get(k, 0) >= min_samples]
        weight = sum(total[k] for k in keep)
        out.append(round(sum(acc[k] * total[k] for k in keep) / weight, 4) if weight else None)
    return out


# ------------------------------------------------------------------------------ degeneration
# The second way a run fails, which the collapse alarm cannot see: both modes stay alive but the
# *quality* of thinking falls.  Seen on the toy (issue #31, a weak warm start): batch think
# accuracy 0.88 at step 0, 0.46 at step 20, 0.13 at step 45, while think answers grew from 67 to
# 195 tokens (cap 256).  The mechanism is the reference reward under GRPO: a wrong think answer
# (0) or a truncated one (format error, 0) beats a wrong direct answer (-1), so in a group whose
# direct answers fail, wrong and runaway traces get a positive advantage and grow.


@dataclass(frozen=True)
class Degeneration:
    """Think-mode accuracy well below its running best while think answers grow or get cut."""

    step: int  # the step the alarm rose (or the latest step while it is up)
    since_step: int  # first step of the run of degenerate steps
    steps: int  # consecutive degenerate steps
    accuracy: float  # smoothed think accuracy now
    best_accuracy: float  # its running best
    best_step: int
    length: float  # smoothed mean think length now
    best_length: float  # ... when the accuracy was at its best
    truncation: float  # smoothed share of think answers cut at the length cap now
    best_truncation: float

    def describe(self) -> str:
        """
        >>> Degeneration(24, 20, 5, 0.41, 0.87, 2, 96.0, 68.0, 0.02, 0.0).describe()
        'think accuracy 0.41, 0.47x its best (0.87 at step 2) for 5 steps since step 20, while think answers grew 68 -> 96 tokens (truncated 0.00 -> 0.02)'
        """
        return (f"think accuracy {self.accuracy:.2f}, {self.accuracy / self.best_accuracy:.2f}x its best "
                f"({self.best_accuracy:.2f} at step {self.best_step}) for {self.steps} steps since step {self.since_step}, "
                f"while think answers grew {self.best_length:.0f} -> {self.length:.0f} tokens "
                f"(truncated {self.best_truncation:.2f} -> {self.truncation:.2f})")

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "message": self.describe()}


class DegenerationMonitor:
    """Watches think-mode accuracy, mean think length and the think truncation rate of each step.

    Each series is smoothed over the last ``window`` steps (a batch of 16 prompts x 8 samples has
    ~64 think samples: its accuracy alone is +-0.06).  A step is degenerate when the smoothed
    think accuracy is below ``(1 - drop)`` x its running best *and* think answers got longer
    (smoothed length >= ``length_rise`` x the length at the best) or are cut more often (smoothed
    truncation rate >= the rate at the best + ``truncation_rise``).  The alarm rises after
    ``patience`` consecutive degenerate steps and clears at the first healthy one.  A step with
    fewer than ``min_think_samples`` think samples (``think_samples``, where the row has it) says
    too little and is skipped.

    Both conditions, because each alone happens in a healthy run: once the policy thinks only on
    hard problems the batch's think accuracy falls (harder problems) and its think answers grow
    (longer problems), by ~15 % and ~20 % on the toy; a run that degenerates loses half its think
    accuracy within 20 steps.  A fall below ``(1 - severe_drop)`` x the best is enough on its own
    (a toy run lost think accuracy 0.93 -> 0.16 within 20 steps before its traces grew).

    >>> m = DegenerationMonitor(window=1, patience=2)
    >>> rows = [{"step": k, "accuracy_think": a, "mean_length_think": n, "truncation_rate_think": 0.0}
    ...         for k, (a, n) in enumerate([(0.9, 60), (0.9, 60), (0.5, 80), (0.4, 90), (0.4, 95)])]
    >>> [m.update(r) is not None for r in rows]
    [False, False, False, True, True]
    >>> m.alarm.since_step, m.alarm.steps
    (2, 3)
    """

    def __init__(self, window: int = 5, drop: float = 0.35, length_rise: float = 1.15, truncation_rise: float = 0.05,
                 patience: int = 3, min_think_samples: int = 8, severe_drop: float = 0.5):
        if window < 1 or patience < 1:
            raise ValueError(f"window and patience must be >= 1, got {window}, {patience}")
        if not 0 < drop <= severe_drop < 1:
            raise ValueError(f"need 0 < drop <= severe_drop < 1, got {drop}, {severe_drop}")
        self.window, self.drop, self.length_rise, self.truncation_rise = window, drop, length_rise, truncation_rise
        self.severe_drop = severe_drop
        self.patience, self.min_think_samples = patience, min_think_samples
        self._recent: list[tuple[float, float, float]] = []
        self._best: tuple[float, int, float, float] | None = None  # accuracy, step, length, truncation
        self._run: tuple[int, int] | None = None  # since_step, steps
        self.alarm: Degeneration | None = None

    def update(self, row: Mapping[str, Any]) -> Degeneration | None:
        """Feed one step's metrics row; returns the alarm while it is up, else None."""
        acc = row.get("accuracy_think")
        if acc is None or row.get("think_samples", self.min_think_samples) < self.min_think_samples:
            return self.alarm
        step = int(row["step"])
        self._recent = [*self._recent, (float(acc), float(row.get("mean_length_think") or 0.0),
                                        float(row.get("truncation_rate_think") or 0.0))][-self.window:]
        n = len(self._recent)
        a, length, trunc = (sum(x[i] for x in self._recent) / n for i in range(3))
        if n < self.window and self._best is None:
            return self.alarm  # the first full window sets the baseline
        if self._best is None or a > self._best[0]:
            self._best = (a, step, length, trunc)
        best_a, best_step, best_len, best_trunc = self._best
        bad = a < (1 - self.severe_drop) * best_a or (
            a < (1 - self.drop) * best_a and (length >= self.length_rise * best_len or trunc >= best_trunc + self.truncation_rise))
        if not bad:
            self._run, self.alarm = None, None
            return None
        since, steps = self._run if self._run is not None else (step, 0)
        self._run = (since, steps + 1)
        if steps + 1 >= self.patience:
            self.alarm = Degeneration(step, since, steps + 1, round(a, 4), round(best_a, 4), best_step, round(length, 1),
                                      round(best_len, 1), round(trunc, 4), round(best_trunc, 4))
        return self.alarm

    def replay(self, rows: Iterable[Mapping[str, Any]]) -> Degeneration | None:
        """Feed rows already logged (a resumed run) and return the state after the last."""
        for row in rows:
            self.update(row)
        return self.alarm
