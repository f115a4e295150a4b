"""The learner's live page in a real browser (headless Chromium, driven by Playwright).

* During a real `autothink up` run: its charts' data (each line carries its points) must match
  metrics.jsonl, the header says where the run stands, and the screenshot shows the think rate by
  level with at least two steps plotted.
* On a replayed series served over real HTTP by the learner's own dashboard code (RunWatch's
  monitors on a metrics.jsonl the test writes): first a healthy start (no alarm), then, on the
  same open page, a run whose think accuracy falls and whose batch ends up all-think -- the
  degeneration banner and the mode-collapse banner appear, with the monitors' messages, and the
  accuracy / length / think-rate charts draw the rows.

Neither page may log a console error or throw.  Needs Chromium (`make test` installs Debian's when
it can: scripts/bootstrap.sh --test) and the Playwright package (the dev extra); without them the
tests skip, or fail with CI=true.  AUTOTHINK_DASHBOARD_SHOT=path also copies the live run's
screenshot there (how docs/dashboard.png was made).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, free_port, short_experiment

pytestmark = pytest.mark.slow
HEALTHY = ROOT / "tests" / "data" / "healthy_demo_metrics.jsonl"


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    pytest.skip("Chromium is not installed (Debian/Ubuntu: apt-get install -y chromium; `make test` does it as root)")


@contextmanager
def browser_page(width: int = 1280, height: int = 1100) -> Iterator[tuple[Any, list[str]]]:
    """A page in headless Chromium and the list of what went wrong on it (console errors and
    warnings, uncaught exceptions, failed requests), filled as it happens."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (in the dev extra)")
    problems: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.on("console", lambda m: problems.append(f"console.{m.type}: {m.text} ({m.location.get('url')})") if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(f"uncaught: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url} {r.failure}"))
            yield page, problems
        finally:
            browser.close()


def wait_rows(page: Any, n: int, timeout_s: float = 30) -> None:
    """Until the page has drawn ``n`` rows (it polls /dashboard/data every 2 s)."""
    page.wait_for_function(f"() => +(document.body.dataset.rows || 0) >= {n}", timeout=timeout_s * 1000)


def chart_lines(dom: str) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{chart: {series: [(step, value), ...]}} from the page's polylines."""
    charts: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for fig in re.finditer(r'<figure[^>]*data-chart="([^"]+)"(.*?)</figure>', dom, re.S):
        lines = charts.setdefault(fig.group(1), {})
        for tag in re.findall(r"<polyline[^>]*>", fig.group(2)):
            series = html.unescape(re.search(r'data-series="([^"]*)"', tag).group(1))
            points = re.search(r'data-points="([^"]*)"', tag).group(1).split()
            lines[series] = [(int(s), float(v)) for s, v in (p.split(":") for p in points)]
    return charts


def colors(shot: Path) -> set[tuple[int, int, int]]:
    from PIL import Image

    img = Image.open(shot).convert("RGB")
    return {c for _, c in img.getcolors(maxcolors=1 << 22)}


def test_dashboard_in_headless_chromium_during_a_real_run(toy_model, tmp_path):
    chromium()
    exp = short_experiment(toy_model[0], tmp_path / "run", steps=4)  # 12 steps: time to look while it trains
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    autothink = str(Path(sys.executable).with_name("autothink"))
    out = open(tmp_path / "up.log", "wb")
    proc = subprocess.Popen([autothink, "up", str(tmp_path / "exp.yaml"), "--port", str(free_port()), "--run-id", "dash", "--quiet"],
                            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    metrics = tmp_path / "run" / "metrics.jsonl"
    shot = tmp_path / "dashboard.png"
    try:
        deadline = time.time() + 900
        url = None
        while True:  # the address `up` prints, then two trained steps
            assert proc.poll() is None, (tmp_path / "up.log").read_text()[-5000:]
            assert time.time() < deadline, "no two steps in time"
            found = re.search(r"dashboard: (http://\S+/dashboard)", (tmp_path / "up.log").read_text(errors="replace"))
            url = found.group(1) if found else None
            if url and metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
                break
            time.sleep(0.5)
        with browser_page() as (page, problems):
            page.goto(url)
            wait_rows(page, 2)
            dom = page.content()
            page.screenshot(path=str(shot))
            assert not page.locator("#banner").is_visible() and not page.locator("#degeneration").is_visible()
            assert "no mode collapse" in page.locator("#ok").inner_text()
            assert page.locator("#state").inner_text() == "training"
        assert problems == [], problems
        rows_now = [json.loads(x) for x in metrics.read_text().splitlines()]
        assert len(rows_now) < 12, "the run finished before the page was loaded: not a live view"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # Ctrl-C stops the whole stack
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        out.close()

    rows = {r["step"]: r for r in (json.loads(x) for x in metrics.read_text().splitlines())}
    charts = chart_lines(dom)
    assert set(charts) == {"think_rate_by_level", "accuracy_by_mode", "length_by_mode", "reward", "staleness"}

    by_level = charts["think_rate_by_level"]
    steps = [s for s, _ in by_level["batch"]]
    assert len(steps) >= 2 and steps == sorted(steps) and steps[0] == 0
    assert by_level["batch"] == [(s, pytest.approx(round(rows[s]["think_rate"], 4), abs=1e-4)) for s in steps]
    levels = sorted({lv for s in steps for lv in rows[s]["no_think_rate_by_level"]}, key=int)
    assert sorted(k for k in by_level if k != "batch") == sorted(f"level {lv}" for lv in levels)
    for lv in levels:
        want = [(s, pytest.approx(1 - rows[s]["no_think_rate_by_level"][lv], abs=1e-4)) for s in steps if lv in rows[s]["no_think_rate_by_level"]]
        assert by_level[f"level {lv}"] == want, lv
    acc = charts["accuracy_by_mode"]
    assert acc["all"] == [(s, pytest.approx(rows[s]["accuracy"], abs=1e-4)) for s in steps]
    assert acc["think"] == [(s, pytest.approx(rows[s]["accuracy_think"], abs=1e-4)) for s in steps if rows[s]["accuracy_think"] is not None]
    reward = charts["reward"]
    assert reward["shaped"] == [(s, pytest.approx(rows[s]["reward_shaped"], abs=1e-4)) for s in steps]
    assert charts["staleness"]["oldest rollout"] == [(s, rows[s]["policy_version"] - 1 - min(rows[s]["policy_versions"])) for s in steps]

    # the header of a healthy run
    assert re.search(r'id="stage">stage[123]<', dom) and 'id="total">12<' in dom

    # the screenshot: the think-rate chart is drawn (level 1's green line is on it)
    from PIL import Image

    assert Image.open(shot).size == (1280, 1100)
    assert (0x1A, 0x98, 0x50) in colors(shot), "no level-1 line in the screenshot"
    if os.environ.get("AUTOTHINK_DASHBOARD_SHOT"):
        shutil.copy(shot, os.environ["AUTOTHINK_DASHBOARD_SHOT"])


# ------------------------------------------------------------------ the alarms, on a replayed series
def _interp(points: list[tuple[int, float]], step: int) -> float:
    for (s0, v0), (s1, v1) in zip(points, points[1:]):
        if s0 <= step <= s1:
            return v0 + (v1 - v0) * (step - s0) / (s1 - s0)
    return points[0][1] if step < points[0][0] else points[-1][1]


def degenerating_series(steps: int = 40, turn: int = 10) -> list[dict[str, Any]]:
    """The first ``turn`` steps of the healthy demo run (tests/data), then issue #31's failure:
    think accuracy falling to 0.46 ten steps later and 0.13 after that, think answers growing
    toward the length cap, and the whole batch going to think mode (think rate 0.98)."""
    rows = [json.loads(x) for x in HEALTHY.read_text().splitlines()[:steps]]
    start = rows[turn]["accuracy_think"]
    for k, r in enumerate(rows):
        r.update(policy_version=k + 1, policy_versions=[max(0, k - 1), k], reward_base=round(2 * r["accuracy"] - 1, 4),
                 reward_shaped=round(2 * r["accuracy"] - 1, 4))
        if k < turn:
            continue
        acc = _interp([(turn, start), (turn + 10, 0.46), (turn + 25, 0.13), (steps, 0.1)], k)
        r.update(think_rate=0.98, no_think_rate_by_level={lv: 0.0 if lv != "1" else 0.0625 for lv in r["no_think_rate_by_level"]},
                 accuracy_think=round(acc, 4), accuracy_no_think=0.6, accuracy=round(0.98 * acc + 0.02 * 0.6, 4),
                 mean_length_think=round(_interp([(turn, 90), (steps, 230)], k), 1),
                 truncation_rate_think=round(_interp([(turn, 0.0), (steps, 0.4)], k), 4), think_samples=125)
    return rows


@contextmanager
def served(app: Any) -> Iterator[str]:
    """``app`` on a real HTTP port (uvicorn in a thread), stopped on exit."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert thread.is_alive() and time.time() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def test_the_alarms_in_headless_chromium_on_a_replayed_series(tmp_path):
    """The learner's dashboard code and monitors, fed a metrics.jsonl the test writes: what a
    researcher sees when a run degenerates and collapses into one mode, on a page left open."""
    from fastapi import FastAPI
    from prometheus_client import CollectorRegistry

    from autothink.config import RunConfig
    from autothink.monitor import CollapseMonitor, DegenerationMonitor
    from services.learner.dashboard import add_dashboard, learner_data
    from services.learner.tracking import RunWatch

    rows = degenerating_series()
    run = RunConfig.model_validate({"name": "replay", "model": {"path": "m"}, "output_dir": str(tmp_path),
                                    "stages": [{"name": "stage1", "steps": 40, "prompts_per_batch": 16, "samples_per_prompt": 8,
                                                "max_response_tokens": 256, "batch_balance_rate": 0.5}]})
    metrics = tmp_path / "metrics.jsonl"
    shown = {"n": 8}

    def data() -> dict[str, Any]:  # what the learner's ops app serves, from the rows written so far
        n = shown["n"]
        metrics.write_text("".join(json.dumps(r) + "\n" for r in rows[:n]))
        watch = RunWatch(run, CollectorRegistry(), metrics, total_steps=len(rows))
        learner = SimpleNamespace(watch=watch, run_cfg=run, state={"step": n, "policy_version": n},
                                  steps=[SimpleNamespace(stage=SimpleNamespace(name="stage1"))] * len(rows))
        return learner_data(learner, finished=False)

    app = FastAPI()
    add_dashboard(app, data)
    healthy_shot, alarm_shot = tmp_path / "healthy.png", tmp_path / "alarms.png"
    with served(app) as base, browser_page() as (page, problems):
        page.goto(f"{base}/dashboard")
        wait_rows(page, 8)
        assert not page.locator("#banner").is_visible() and not page.locator("#degeneration").is_visible()
        assert "no mode collapse" in page.locator("#ok").inner_text()
        page.screenshot(path=str(healthy_shot))

        shown["n"] = len(rows)  # the run goes on; the open page picks it up on its next poll
        wait_rows(page, len(rows))
        page.screenshot(path=str(alarm_shot))
        degeneration, banner = page.locator("#degeneration"), page.locator("#banner")
        assert degeneration.is_visible() and banner.is_visible()
        deg_text, banner_text = degeneration.inner_text(), banner.inner_text()
        dom = page.content()
    assert problems == [], problems

    # the banners say what the learner's monitors say about these rows
    degenerate = DegenerationMonitor().replay(rows)
    collapse = CollapseMonitor(run.logging.collapse_epsilon, run.logging.collapse_steps, run.logging.collapse_levels,
                               run.logging.collapse_min_level_samples).replay(rows)
    assert degenerate is not None and collapse.active and any(a.scope == "batch" for a in collapse.alarms)
    assert degenerate.describe() in deg_text and "on_degeneration: warn" in deg_text, deg_text
    assert "the whole batch is stuck in one mode" in banner_text, banner_text
    for alarm in collapse.alarms:
        assert alarm.describe() in banner_text, (alarm, banner_text)
    assert page_class(dom, "banner") == "on", "the batch is all-think: the red banner, not the amber one of a level"

    # the charts draw the rows: accuracy and length by mode, truncation, think rate by level
    charts = chart_lines(dom)
    steps = [r["step"] for r in rows]
    def approx(xs):  # the page rounds to 4 digits
        return [(s, pytest.approx(v, abs=1e-4)) for s, v in xs]
    assert charts["accuracy_by_mode"]["think"] == approx((r["step"], r["accuracy_think"]) for r in rows)
    assert charts["accuracy_by_mode"]["no-think"] == approx((r["step"], r["accuracy_no_think"]) for r in rows)
    assert charts["length_by_mode"]["think"] == approx((r["step"], r["mean_length_think"]) for r in rows)
    longest = max(r["mean_length_think"] for r in rows)
    assert charts["length_by_mode"]["think truncated (x max length)"] == approx((r["step"], r["truncation_rate_think"] * longest) for r in rows)
    assert [s for s, _ in charts["think_rate_by_level"]["batch"]] == steps
    assert charts["think_rate_by_level"]["level 8"][-1] == (steps[-1], 1.0)

    # what the eye sees: the banners' colours appear only once the alarms are up
    before, after = colors(healthy_shot), colors(alarm_shot)
    for name, rgb in (("degeneration (purple)", (0x6A, 0x1B, 0x9A)), ("mode collapse (red)", (0xC6, 0x28, 0x28))):
        assert rgb in after and rgb not in before, name


def page_class(dom: str, element_id: str) -> str:
    """The class attribute of the element with ``element_id`` in the page's DOM ('' when none)."""
    tag = re.search(rf'<[^>]*\bid="{element_id}"[^>]*>', dom)
    assert tag, element_id
    found = re.search(r'\bclass="([^"]*)"', tag.group(0))
    return found.group(1) if found else ""
