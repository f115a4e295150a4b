"""The learner's live page: ``GET /dashboard`` (one self-contained HTML file, no CDN) polls
``GET /dashboard/data`` (the rows of metrics.jsonl plus where the run stands and the alarm).

The page draws the think rate by difficulty level over the steps (the paper's Fig. 2 forming
while it trains), accuracy and mean length by mode, reward, staleness and the current stage, with
a banner while the mode-collapse alarm is up and another while the degeneration alarm is.  Every chart line carries its points in a
``data-points`` attribute, so a test (or a curious reader) can check the picture against the log.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

# the row fields the page uses (group ids and timings stay in metrics.jsonl)
FIELDS = ("step", "stage", "policy_version", "policy_versions", "samples", "think_rate", "no_think_rate_by_level",
          "accuracy", "accuracy_think", "accuracy_no_think", "mean_length_think", "mean_length_no_think",
          "reward_base", "reward_shaped", "mode_collapse", "truncation_rate_think", "degeneration")


def page() -> str:
    return resources.files("services.learner").joinpath("dashboard.html").read_text()


def snapshot(rows: list[dict[str, Any]], **info: Any) -> dict[str, Any]:
    """What ``/dashboard/data`` answers: the rows cut to :data:`FIELDS`, plus ``info``.

    >>> snapshot([{"step": 0, "think_rate": 0.5, "group_ids": ["a"]}], finished=False)
    {'rows': [{'step': 0, 'think_rate': 0.5}], 'finished': False}
    """
    return {"rows": [{k: r[k] for k in FIELDS if k in r} for r in rows], **info}


def add_dashboard(app: FastAPI, data: Callable[[], dict[str, Any]]) -> None:
    """Mount the page and its data endpoint on the learner's ops app."""
    html = page()

    @app.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
    def _dashboard() -> HTMLResponse:
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    @app.get("/dashboard/data")
    def _data() -> dict[str, Any]:
        return data()


def learner_data(learner: Any, finished: bool) -> dict[str, Any]:
    """The snapshot of a running :class:`services.learner.worker.Learner` (rank 0)."""
    from services.learner.tracking import read_rows

    watch, step = learner.watch, learner.state["step"]
    cfg = learner.run_cfg.logging
    current = learner.steps[min(step, len(learner.steps) - 1)].stage.name if learner.steps else ""
    return snapshot(
        read_rows(watch.metrics_path), run=learner.run_cfg.name, stages=watch.stages, total_steps=watch.total_steps,
        step=step, policy_version=learner.state["policy_version"], stage=current, finished=finished,
        alarm=watch.status.to_json(), collapse_epsilon=cfg.collapse_epsilon, collapse_steps=cfg.collapse_steps,
        degeneration=watch.degenerate.to_json() if watch.degenerate is not None else None,
        on_degeneration=watch.on_degeneration,
    )
