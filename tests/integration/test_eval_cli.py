"""`autothink eval` on the tiny model: the harness (loading, prompting, sampling through vLLM, safe
grading, report), resuming after a kill, and the endpoint mode against this project's gateway.

The resume and endpoint tests evaluate toy problems written as a MATH500 file (their levels as its
difficulty), so that accuracy and think rate mean something on the toy model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autothink.eval_stats import paired_difference_ci
from tests.conftest import ROOT, ServiceProcess, descendants, free_port, wait_healthy

pytestmark = pytest.mark.slow
DATA = ROOT.parent / "shared" / "data" / "benchmarks"
AUTOTHINK = str(Path(sys.executable).with_name("autothink"))
PER_LEVEL, SAMPLES, MAX_TOKENS = 3, 4, 64
TOY_ARGS = ["--benchmarks", "math500", "--prompts", "standard,ellipsis", "--samples", str(SAMPLES), "--max-tokens", str(MAX_TOKENS),
            "--concurrency", "8", "--bootstrap", "500", "--no-progress"]


@pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data/benchmarks is not here")
def test_eval_writes_the_report(toy_model, tmp_path):
    r = subprocess.run(
        [AUTOTHINK, "eval", "--model", str(toy_model[0]), "--data-dir", str(DATA), "--benchmarks", "math500,amc23",
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
        assert row["accuracy_ci"][0] <= row["accuracy"] <= row["accuracy_ci"][1] and set(row["pass_at_k"]) == {"1", "2"}
    assert rows["no-thinking prompt"]["think_rate"] == 0.0
    assert set(rows["ellipsis prompt"]["by_level"]) <= {"1", "2", "3", "4", "5"}  # MATH500's levels; AMC has none
    assert "paper_reference" not in report  # the toy is not R1-Distill-1.5B
    assert (tmp_path / "rep" / "report.md").read_text().startswith("# Evaluation of")
    files = sorted(p.name for p in (tmp_path / "rep" / "samples").iterdir())
    assert files == [f"{b}.{p}.jsonl" for b in ("amc23", "math500") for p in ("ellipsis", "no_think", "standard")]


def test_eval_refuses_bad_arguments(toy_model, tmp_path):
    for args, msg in (
        (["--benchmarks", "gsm8k"], "unknown benchmark"),
        (["--prompts", "maybe"], "unknown prompt"),
        (["--data-dir", str(tmp_path)], "not found"),
        (["--tensor-parallel-size", "2"], "needs GPUs"),
        (["--max-tokens", "100000"], "leaves no room"),  # the last --max-tokens wins
        (["--endpoint", "http://127.0.0.1:9", "--data-parallel-size", "2"], "apply to a local model"),
        (["--top-p", "0"], "--top-p"),
    ):
        base = ["--model", str(toy_model[0]), "--data-dir", str(DATA), "--max-tokens", "32"]
        r = subprocess.run([AUTOTHINK, "eval", *base, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and msg in r.stderr, (args, r.stderr[-500:])


@pytest.fixture(scope="module")
def toy_bench(toy_model, tmp_path_factory) -> Path:
    """PER_LEVEL toy eval problems per level 1..8, as a MATH500 file."""
    rows = [json.loads(x) for x in (toy_model[0] / "data" / "eval.jsonl").read_text().splitlines() if x.strip()]
    picked, seen = [], {}
    for r in rows:
        if seen.get(r["level"], 0) < PER_LEVEL:
            seen[r["level"]] = seen.get(r["level"], 0) + 1
            picked.append({"problem": r["problem"], "answer": r["answer"], "difficulty": float(r["level"])})
    d = tmp_path_factory.mktemp("toybench")
    (d / "math.json").write_text(json.dumps(picked))
    return d


def _eval(model: str, data: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([AUTOTHINK, "eval", "--model", model, "--data-dir", str(data), "--out", str(out), *TOY_ARGS, *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _finish(p: subprocess.Popen, timeout: float = 600) -> str:
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, err[-3000:]
    return err


def _numbers(out: Path) -> list[dict]:
    """The report's rows without what may differ between runs of the same samples (nothing should)."""
    return json.loads((out / "report.json").read_text())["rows"]


@pytest.fixture(scope="module")
def local_run(toy_model, toy_bench, tmp_path_factory) -> Path:
    """One uninterrupted local-engine evaluation of the toy benchmark."""
    out = tmp_path_factory.mktemp("local") / "rep"
    _finish(_eval(str(toy_model[0]), toy_bench, out))
    return out


def _per_problem(out: Path, prompt: str) -> list[float]:
    """Mean correctness of each problem, in problem order, from a run's sample file."""
    by: dict[int, list[bool]] = {}
    for line in (out / "samples" / f"math500.{prompt}.jsonl").read_text().splitlines()[1:]:
        rec = json.loads(line)
        by.setdefault(rec["problem"], []).append(rec["correct"])
    return [sum(v) / len(v) for _, v in sorted(by.items())]


def _lines(out: Path) -> int:
    return sum(max(0, len(p.read_text().splitlines()) - 1) for p in (out / "samples").glob("*.jsonl")) if (out / "samples").is_dir() else 0


def test_killed_evaluation_resumes_to_the_same_report(toy_model, toy_bench, local_run, tmp_path):
    total = 8 * PER_LEVEL * SAMPLES * 2
    out = tmp_path / "rep"
    p = _eval(str(toy_model[0]), toy_bench, out)
    deadline = time.time() + 300
    while _lines(out) < total // 4 and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert p.poll() is None, "the evaluation finished before it could be killed"
    tree = [p.pid, *descendants(p.pid)]  # the CLI, its vLLM engine process and the grader workers
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    p.wait()
    done = _lines(out)
    assert 0 < done < total, done
    # different settings refuse to mix with what is there (before any engine starts)
    r = subprocess.run([AUTOTHINK, "eval", "--model", str(toy_model[0]), "--data-dir", str(toy_bench), "--out", str(out), *TOY_ARGS,
                        "--temperature", "1.0"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "other settings" in r.stderr and "temperature: 0.6 -> 1.0" in r.stderr
    err = _finish(_eval(str(toy_model[0]), toy_bench, out))
    assert f"resuming: {done} of {total} samples" in err
    assert _lines(out) == total
    assert _numbers(out) == _numbers(local_run)
    assert (out / "report.md").read_text() == (local_run / "report.md").read_text()


def test_endpoint_mode_against_the_gateway_matches_the_local_engine(toy_model, toy_bench, local_run, tmp_path):
    port = free_port()
    gw = ServiceProcess.__new__(ServiceProcess)
    gw.log_path = tmp_path / "gateway.log"
    gw.log = open(gw.log_path, "wb")
    gw.proc = subprocess.Popen([AUTOTHINK, "gateway", "--model", str(toy_model[0]), "--port", str(port), "--api-key", "k3y",
                                "--max-model-len", "512"], cwd=ROOT, stdout=gw.log, stderr=subprocess.STDOUT)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/ready", gw, timeout=240)
        out = tmp_path / "rep"
        r = subprocess.run([AUTOTHINK, "eval", "--endpoint", f"http://127.0.0.1:{port}/v1", "--api-key", "k3y", "--data-dir", str(toy_bench),
                            "--out", str(out), *TOY_ARGS], cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:] + gw.output()
        assert "through chat (chat_template_kwargs.thinking)" in r.stderr
    finally:
        gw.stop()
    remote = {row["method"]: row for row in _numbers(out)}
    local = {row["method"]: row for row in _numbers(local_run)}
    assert list(remote) == list(local) == ["standard prompt", "ellipsis prompt"]
    for method, prompt in (("standard prompt", "standard"), ("ellipsis prompt", "ellipsis")):
        # within the local run's bootstrap interval (give or take one sample: an interval of a prompt
        # that got every sample right, or none, has no width)
        lo, hi = local[method]["accuracy_ci"]
        one = 1 / (8 * PER_LEVEL * SAMPLES)
        assert lo - one <= remote[method]["accuracy"] <= hi + one, (method, remote[method]["accuracy"], local[method]["accuracy_ci"])
        # the same problems under both: the paired interval of the difference holds 0 (the report's
        # "inside the noise").  The two runs sample independently, so a 95 % interval would miss 0
        # one time in 20 on a machine whose floats pick other samples; 99.9 % (~3.3 sd) for the test
        a, b = _per_problem(out, prompt), _per_problem(local_run, prompt)
        d, dlo, dhi = paired_difference_ci([a], [b], rounds=5000, level=0.999)
        assert dlo <= 0 <= dhi, (method, d, dlo, dhi)
    assert remote["standard prompt"]["think_rate"] > 0.5 and local["standard prompt"]["think_rate"] > 0.5
    assert 0 < remote["ellipsis prompt"]["think_rate"] < 1  # the untrained toy model answers in both modes, here too
    settings = json.loads((out / "samples" / "math500.ellipsis.jsonl").read_text().splitlines()[0])["settings"]
    assert settings["model"].startswith(f"http://127.0.0.1:{port} model=autothink api=chat")
