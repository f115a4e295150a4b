"""``grade()`` gives the right verdict whoever calls it, and a broken worker is never a verdict.

Issue #20: with ``multiprocessing`` "spawn" workers, a script without a main guard and a heredoc
on stdin got ``correct=False, status='unparseable'`` for a correct answer (the child re-imported
the caller's ``__main__``).  Each caller form runs here as a real subprocess.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from autothink.grading import grade
from autothink.grading.pool import GraderPool
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

TWO_LINES = 'from autothink.grading import grade\nprint(grade("The answer is \\\\boxed{\\\\dfrac{1}{2}}", "0.5"))\n'
RIGHT = "GradeResult(correct=True, status='ok', extracted='\\\\dfrac{1}{2}', detail='')"


def _run(args: list[str], stdin: str | None = None, cwd=None) -> str:
    out = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=180, cwd=cwd or ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_script_without_main_guard(tmp_path):
    script = tmp_path / "no_guard.py"
    script.write_text(TWO_LINES)
    assert _run([sys.executable, str(script)], cwd=tmp_path) == RIGHT


def test_stdin_heredoc(tmp_path):
    assert _run([sys.executable, "-"], stdin=TWO_LINES, cwd=tmp_path) == RIGHT


def test_dash_c(tmp_path):
    assert _run([sys.executable, "-c", TWO_LINES], cwd=tmp_path) == RIGHT


def test_threads_share_the_default_pool():
    results: list = [None] * 8

    def work(i: int) -> None:
        results[i] = grade(f"\\boxed{{\\frac{{{2 * i}}}{{2}}}}", str(i if i % 2 else i + 1))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [r.correct for r in results] == [i % 2 == 1 for i in range(8)]
    assert all(r.status == "ok" for r in results)


def test_killed_worker_is_an_error_not_a_wrong_answer():
    with GraderPool(workers=1, timeout_s=30.0) as pool:
        assert pool.grade("\\boxed{1}", "1").correct
        (pid,) = pool.pids()
        # sympy needs over a second to refute this identity; the worker is killed while on it
        threading.Timer(0.3, os.kill, args=(pid, signal.SIGKILL)).start()
        r = pool.grade("\\boxed{(x+y+z)^{12}}", "\\cos(2x)")
        assert (r.correct, r.status) == (None, "error"), r
        assert "died" in r.detail
        # a worker killed while idle costs nothing: the grade goes to a fresh one
        (pid,) = pool.pids()
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        r = pool.grade("\\boxed{0.5}", "\\frac12")
        assert (r.correct, r.status) == (True, "ok")
        assert pool.replaced == 2


def test_timeout_is_not_a_wrong_answer():
    with GraderPool(workers=1, timeout_s=5.0) as pool:
        r = pool.grade("\\boxed{(x+y+z)^{12}}", "\\cos(2x)", timeout_s=0.2)
        assert (r.correct, r.status) == (None, "timeout")


def test_no_worker_outlives_its_pool():
    pool = GraderPool(workers=2, timeout_s=5.0)
    assert pool.grade("\\boxed{2}", "2").correct
    pids = list(pool.pids())
    pool.close()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
