"""`autothink eval` on the tiny model and a small subset of the real benchmark files: the harness
(loading, prompting, sampling through vLLM, safe grading, report), not the score."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow
DATA = ROOT.parent / "shared" / "data" / "benchmarks"


@pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data/benchmarks is not here")
def test_eval_writes_the_report(toy_model, tmp_path):
    autothink = str(Path(sys.executable).with_name("autothink"))
    r = subprocess.run(
        [autothink, "eval", "--model", str(toy_model[0]), "--data-dir", str(DATA), "--benchmarks", "math500,amc23",
         "--prompts", "standard,no_think,ellipsis", "--samples", "2", "--max-tokens", "32", "--limit", "3", "--out", str(tmp_path / "rep")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    rows = {row["method"]: row for row in report["rows"]}
    assert list(rows) == ["standard prompt", "no-thinking prompt", "ellipsis prompt"]
    for row in rows.values():
        assert set(row["groups"]) <= {"math500", "amc23"} and row["samples"] <= 12
        assert 0 <= row["accuracy"] <= 1 and row["mean_tokens"] <= 32 and 0 <= row["think_rate"] <= 1
    assert rows["no-thinking prompt"]["think_rate"] == 0.0
    assert (tmp_path / "rep" / "report.md").read_text().startswith("# Evaluation of")


def test_eval_refuses_bad_arguments(toy_model, tmp_path):
    autothink = str(Path(sys.executable).with_name("autothink"))
    for args, msg in (
        (["--benchmarks", "gsm8k"], "unknown benchmark"),
        (["--prompts", "maybe"], "unknown prompt"),
        (["--data-dir", str(tmp_path)], "not found"),
    ):
        base = ["--model", str(toy_model[0]), "--data-dir", str(DATA)]
        r = subprocess.run([autothink, "eval", *base, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and msg in r.stderr, (args, r.stderr[-500:])
