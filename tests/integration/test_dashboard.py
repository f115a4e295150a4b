"""The learner's live page, loaded in headless Chromium while a real `autothink up` run trains:
its charts' data (each line carries its points) must match metrics.jsonl, and a screenshot shows
the think rate by level with at least two steps plotted.

Needs Chromium (Debian: apt-get install -y chromium); skipped with that reason where it is absent.
AUTOTHINK_DASHBOARD_SHOT=path also copies the screenshot there (how docs/dashboard.png was made).
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
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, free_port, short_experiment

pytestmark = pytest.mark.slow


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    pytest.skip("Chromium is not installed (Debian/Ubuntu: apt-get install -y chromium)")


def headless(browser: str, url: str, *args: str, timeout: float = 120) -> str:
    """Run headless Chromium on ``url`` with the page's own polling given 6 s of virtual time."""
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
           "--virtual-time-budget=6000", *args, url]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def chart_lines(dom: str) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{chart: {series: [(step, value), ...]}} from the dumped DOM's polylines."""
    charts: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for fig in re.finditer(r'<figure[^>]*data-chart="([^"]+)"(.*?)</figure>', dom, re.S):
        lines = charts.setdefault(fig.group(1), {})
        for tag in re.findall(r"<polyline[^>]*>", fig.group(2)):
            series = html.unescape(re.search(r'data-series="([^"]*)"', tag).group(1))
            points = re.search(r'data-points="([^"]*)"', tag).group(1).split()
            lines[series] = [(int(s), float(v)) for s, v in (p.split(":") for p in points)]
    return charts


def test_dashboard_in_headless_chromium_during_a_real_run(toy_model, tmp_path):
    browser = chromium()
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
        dom = headless(browser, url, "--dump-dom")
        headless(browser, url, f"--screenshot={shot}", "--window-size=1280,1100")
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

    # the header and the (absent) alarm of a healthy run
    assert re.search(r'id="stage">stage[123]<', dom) and 'id="total">12<' in dom
    assert 'id="banner" role="alert" class="on"' not in dom and "no mode collapse" in dom

    # the screenshot: the think-rate chart is drawn (level 1's green and the batch's dark line are on it)
    from PIL import Image

    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 1100)
    colors = {c for _, c in img.getcolors(maxcolors=1 << 20)}
    assert (0x1A, 0x98, 0x50) in colors, "no level-1 line in the screenshot"
    if os.environ.get("AUTOTHINK_DASHBOARD_SHOT"):
        shutil.copy(shot, os.environ["AUTOTHINK_DASHBOARD_SHOT"])
