"""The supervisor of `autothink up` with plain child processes: prefixed logs, death noticed and
named, and a stop that leaves no process behind (grandchildren included)."""

from __future__ import annotations

import sys
import time

import pytest

from entrypoints.launcher import Service, ServiceDied, Supervisor
from tests.conftest import alive


def test_prefixed_logs_and_death_named(tmp_path) -> None:
    lines: list[str] = []
    sup = Supervisor(tmp_path, echo=True, write=lines.append)
    sup._color = False
    sup.start(Service("reward", [sys.executable, "-c", "print('hello'); import sys; sys.exit(3)"]))
    deadline = time.time() + 10
    with pytest.raises(ServiceDied) as e:
        while time.time() < deadline:
            sup.check()
            time.sleep(0.05)
    assert e.value.name == "reward" and e.value.code == 3 and "reward" in str(e.value)
    time.sleep(0.2)
    assert "[reward]   hello" in lines
    assert "hello" in (tmp_path / "reward.log").read_text()
    sup.stop_all()


def test_stop_takes_the_whole_process_group(tmp_path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    # the service starts a grandchild (as vLLM starts its engine process) and ignores nothing
    code = (
        "import subprocess, sys, time; "
        f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); open({str(pid_file)!r}, 'w').write(str(p.pid)); "
        "time.sleep(300)"
    )
    sup = Supervisor(tmp_path, echo=False)
    svc = sup.start(Service("rollout", [sys.executable, "-c", code]))
    deadline = time.time() + 10
    while not pid_file.exists() or not pid_file.read_text():
        assert time.time() < deadline
        time.sleep(0.05)
    grandchild = int(pid_file.read_text())
    assert alive(svc.proc.pid) and alive(grandchild)
    sup.stop_all()
    time.sleep(0.3)
    assert not alive(svc.proc.pid)
    assert not alive(grandchild)
    sup.check()  # a service we stopped is not reported as dead


def test_wait_ready_fails_fast_when_a_service_dies(tmp_path) -> None:
    sup = Supervisor(tmp_path, echo=False)
    svc = sup.start(Service("learner", [sys.executable, "-c", "raise SystemExit('bad config')"], ready=lambda: False))
    t0 = time.time()
    with pytest.raises(ServiceDied) as e:
        sup.wait_ready([svc], timeout=60)
    assert time.time() - t0 < 10 and "bad config" in e.value.tail
    sup.stop_all()


def test_a_dead_service_reports_its_last_lines_even_when_the_log_is_behind(tmp_path) -> None:
    """The error is in the pipe when the process has exited; the tail waits for the log to catch up
    (a busy machine once lost it: ServiceDied with an empty tail)."""

    class SlowLog(Supervisor):
        def _pump(self, svc, stream, log):  # type: ignore[no-untyped-def]
            time.sleep(1.0)  # the copying thread is late
            super()._pump(svc, stream, log)

    sup = SlowLog(tmp_path, echo=False)
    svc = sup.start(Service("learner", [sys.executable, "-c", "raise SystemExit('bad config')"], ready=lambda: False))
    svc.proc.wait()
    with pytest.raises(ServiceDied) as e:
        sup.wait_ready([svc], timeout=60)
    assert "bad config" in e.value.tail
    sup.stop_all()
