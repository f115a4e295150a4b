"""Experiment trackers and the mode-collapse alarm, fed one metrics row per step (rank 0 only).

``logging.trackers`` picks any of TensorBoard, Weights & Biases (offline unless WANDB_MODE says
otherwise: no account needed, ``wandb sync`` later) and MLflow (a local file store by default).
Each is an optional extra; a missing one fails at start naming the extra to install.  Every
numeric field of the row is sent, nested dicts flattened with ``/``; the step axis is the policy
version, so curves line up with what the rollout and gateway services report.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Gauge

from autothink.config import RunConfig
from autothink.monitor import BATCH, CollapseMonitor, Degeneration, DegenerationMonitor, Status, mode_stats

log = logging.getLogger("autothink.learner")


class TrackerUnavailable(RuntimeError):
    """A tracker named in ``logging.trackers`` whose package is not installed."""


def _need(tracker: str, module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise TrackerUnavailable(
            f"logging.trackers names {tracker!r} but {module!r} cannot be imported ({e}); "
            f"install it with: pip install 'autothink-services[{tracker}]'"
        ) from e


def flatten(row: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The scalars of a metrics row, nested keys joined with ``/``; lists, strings and None dropped.
    The think rate by level (what the paper's Fig. 2 plots) is added beside the no-think rate, and
    the staleness of the batch from its policy versions.

    >>> flatten({"step": 3, "stage": "stage1", "policy_version": 4, "think_rate": 0.5,
    ...          "no_think_rate_by_level": {"1": 0.75}, "policy_versions": [2, 3], "ok": True})
    {'step': 3.0, 'policy_version': 4.0, 'think_rate': 0.5, 'no_think_rate_by_level/1': 0.75, 'ok': 1.0, 'think_rate_by_level/1': 0.25, 'staleness_max': 1.0, 'staleness_min': 0.0}
    """
    out: dict[str, float] = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "/"))
        elif isinstance(value, bool):
            out[name] = float(value)
        elif isinstance(value, (int, float)):
            out[name] = float(value)
    if not prefix:
        for level, rate in (row.get("no_think_rate_by_level") or {}).items():
            out[f"think_rate_by_level/{level}"] = round(1.0 - float(rate), 6)
        versions = row.get("policy_versions") or []
        if versions and "policy_version" in row:  # the update made version v from rollouts of versions <= v - 1
            trained_on = int(row["policy_version"]) - 1
            out["staleness_max"] = float(trained_on - min(versions))
            out["staleness_min"] = float(trained_on - max(versions))
    return out


def _flat_config(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1e-5}, "stages": [{...}]}`` → ``{"optim.lr": 1e-5, "stages.0.name": ...}``."""
    out: dict[str, Any] = {}
    items = data.items() if isinstance(data, Mapping) else enumerate(data)
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, (Mapping, list, tuple)) and value:
            out.update(_flat_config(value, name + "."))
        else:
            out[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out


class Tracker(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class TensorBoardTracker:
    """Event files in ``output_dir/tensorboard`` (``tensorboard --logdir``); the config as hparams and YAML text."""

    def __init__(self, run: RunConfig, config: dict[str, Any]):
        _need("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        import yaml

        self.dir = Path(run.output_dir) / "tensorboard"
        self.writer = SummaryWriter(str(self.dir))
        self.writer.add_text("experiment", "```yaml\n" + yaml.safe_dump(config, sort_keys=False) + "```", 0)
        for summary in hparams({k: v for k, v in _flat_config(config).items()}, {"think_rate": 0.0}):
            self.writer.file_writer.add_summary(summary)  # the HPARAMS tab of this same run

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """A W&B run under ``output_dir/wandb``; offline (no account) unless WANDB_MODE is set."""

    def __init__(self, run: RunConfig, config: dict[str, Any]):
        wandb = _need("wandb", "wandb")
        mode = os.environ.get("WANDB_MODE", "offline")
        self.dir = Path(run.output_dir)
        self.run = wandb.init(project=run.logging.project, name=run.name, config=config, dir=str(self.dir), mode=mode,
                              reinit="create_new")
        log.info("W&B %s run in %s%s", mode, self.run.dir, " (upload later with `wandb sync`)" if mode == "offline" else "")

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    """An MLflow run; by default a local file store in ``output_dir/mlruns`` (``mlflow ui --backend-store-uri``)."""

    def __init__(self, run: RunConfig, config: dict[str, Any]):
        _need("mlflow", "mlflow")
        uri = run.logging.mlflow_tracking_uri or (Path(run.output_dir).resolve() / "mlruns").as_uri()
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 only warns off the file store
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        self._metric = Metric
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(run.logging.project)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(run.logging.project)
        self.run_id = self.client.create_run(exp_id, run_name=run.name).info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in _flat_config(config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])
        log.info("MLflow run %s in %s", self.run_id, uri)

    def log(self, metrics: dict[str, float], step: int) -> None:
        import time

        now = int(time.time() * 1000)
        batch = [self._metric(k.replace("/", "."), v, now, step) for k, v in metrics.items()]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i : i + 1000])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


TRACKERS: dict[str, type] = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "mlflow": MlflowTracker}


def open_trackers(run: RunConfig) -> list[Tracker]:
    """The trackers ``run.logging.trackers`` names, each started with the experiment config."""
    config = run.model_dump(mode="json")
    return [TRACKERS[name](run, config) for name in run.logging.trackers]


class RunWatch:
    """What the learner does with each step's row on rank 0: add accuracy by mode, feed the
    collapse monitor (a warning in the log, a Prometheus gauge, the dashboard banner) and send
    the row to the trackers.  A tracker that fails mid-run is logged and dropped, never fatal."""

    def __init__(self, run: RunConfig, registry: CollectorRegistry, metrics_path: Path, total_steps: int):
        cfg = run.logging
        self.metrics_path = metrics_path
        self.total_steps = total_steps
        self.stages = [{"name": s.name, "steps": s.steps} for s in run.stages]
        self.monitor = CollapseMonitor(cfg.collapse_epsilon, cfg.collapse_steps, cfg.collapse_levels, cfg.collapse_min_level_samples)
        self.gauge = Gauge("autothink_learner_mode_collapse",
                           f"1 while the think rate of the batch or of a level has stayed above 1-{cfg.collapse_epsilon} or below "
                           f"{cfg.collapse_epsilon} for {cfg.collapse_steps}+ steps (mode collapse)", ["scope"], registry=registry)
        self.gauge.labels(scope=BATCH).set(0)
        mon = run.monitor
        self.on_degeneration = mon.on_degeneration
        self.degeneration = DegenerationMonitor(mon.degeneration_window, mon.degeneration_drop, mon.degeneration_length_rise,
                                                mon.degeneration_truncation_rise, mon.degeneration_steps,
                                                severe_drop=mon.degeneration_severe_drop)
        self.g_degenerate = Gauge("autothink_learner_degeneration",
                                  "1 while think-mode accuracy is well below its running best and think answers grow or get "
                                  "cut at the length cap (monitor.degeneration_*)", registry=registry)
        self.trackers = open_trackers(run)
        rows = read_rows(metrics_path)
        self.status: Status = self.monitor.replay(rows)  # a resumed run carries on counting
        self.degenerate: Degeneration | None = self.degeneration.replay(rows)
        self.g_degenerate.set(int(self.degenerate is not None))

    def record(self, row: dict[str, Any], batch: Any) -> None:
        """Before ``row`` is written: add what only the batch knows, then judge and forward it."""
        row.update(mode_stats(batch.samples))
        self.status = status = self.monitor.update(row)
        # The failure is the *batch* in one mode.  A level in one mode is a note: in stages 2-3 the
        # easiest levels answering directly and the hardest always thinking is the intended outcome
        # (a real toy run had levels 1 and 3-8 "collapsed" for most of stages 2-3 while learning well).
        row["mode_collapse"] = any(a.scope == BATCH for a in status.alarms)
        row["levels_in_one_mode"] = {a.scope.removeprefix("level "): a.mode for a in status.alarms if a.scope != BATCH}
        for alarm in status.raised:
            if alarm.scope == BATCH:
                log.warning("mode collapse: %s (logging.collapse_epsilon / collapse_steps)", alarm.describe())
            else:
                log.info("one mode at a level (a note; the intended outcome on the easiest and hardest levels): %s", alarm.describe())
        for scope in status.cleared:
            log.info("%s is mixed again at step %s", scope, row["step"])
        for scope in status.cleared:
            self.gauge.labels(scope=scope).set(0)
        for alarm in status.alarms:
            self.gauge.labels(scope=alarm.scope).set(1)
        was = self.degenerate
        self.degenerate = self.degeneration.update(row)
        row["degeneration"] = self.degenerate is not None
        if self.degenerate is not None and was is None:
            log.warning("DEGENERATION: %s (monitor.degeneration_*; on_degeneration: %s)", self.degenerate.describe(),
                        self.on_degeneration)
        elif self.degenerate is None and was is not None:
            log.info("think accuracy recovered at step %s: the degeneration alarm is down", row["step"])
        self.g_degenerate.set(int(self.degenerate is not None))
        metrics = flatten(row)
        for tracker in list(self.trackers):
            try:
                tracker.log(metrics, int(row["policy_version"]))
            except Exception:
                log.exception("tracker %s failed; no longer logging to it", type(tracker).__name__)
                self.trackers.remove(tracker)

    @property
    def should_stop(self) -> bool:
        """The degeneration alarm is up and the run was told to stop on it."""
        return self.degenerate is not None and self.on_degeneration == "stop"

    def close(self) -> None:
        for tracker in self.trackers:
            try:
                tracker.close()
            except Exception:
                log.exception("closing tracker %s", type(tracker).__name__)
        self.trackers = []


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl (a torn last line, mid-write, is left for the next read)."""
    rows = []
    try:
        text = path.read_text()
    except OSError:
        return rows
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows
