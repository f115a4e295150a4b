"""Fixtures that start real processes and stop exactly those (never anything by name)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


from entrypoints.launcher import free_port  # noqa: E402  (one helper for the product and the tests)


def _proc_stat(pid: int | str) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state first, then the parent pid)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    """Running, and not a zombie (a zombie is gone for our purposes)."""
    fields = _proc_stat(pid)
    return fields is not None and fields[0] != "Z"


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` in the process tree."""
    children: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        fields = _proc_stat(entry)
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def kill_and_survivors(popen: subprocess.Popen, timeout: float = 10.0) -> tuple[set[int], list[int]]:
    """kill -9 ``popen``; return its descendants before the kill (its engine processes) and those
    still alive ``timeout`` seconds later (there should be none: autothink/procs.py)."""
    import signal

    kids = descendants(popen.pid)
    os.kill(popen.pid, signal.SIGKILL)
    popen.wait()
    deadline = time.time() + timeout
    while any(alive(p) for p in kids) and time.time() < deadline:
        time.sleep(0.1)
    return kids, [p for p in kids if alive(p)]


def short_experiment(model_dir: Path, out: Path, steps: int = 2, prompts: int = 4, max_tokens: int = 96,
                     micro_batch: int = 16, zero_stage: int = 0, **extra: object) -> dict:
    """Three short AutoThink stages on the toy model (4 samples a prompt), as an experiment dict."""
    stage = {"steps": steps, "prompts_per_batch": prompts, "samples_per_prompt": 4, "max_response_tokens": max_tokens, "temperature": 0.6}
    return {
        "name": "short", "model": {"path": str(model_dir)},
        "stages": [{"name": "stage1", "batch_balance_rate": 0.5, **stage}, {"name": "stage2", **stage},
                   {"name": "stage3", "alpha": 0.05, "beta": 0.05, **stage}],
        "optim": {"lr": 5e-5, "epochs": 1, "mini_batch_prompts": prompts, "micro_batch_samples": micro_batch, "gradient_checkpointing": False},
        "deepspeed": {"zero_stage": zero_stage, "dtype": "float32"},
        "output_dir": str(out),
        **extra,
    }


class RedisServer:
    """A private redis-server on a free port, in a temp dir, stopped by the fixture."""

    def __init__(self, workdir: Path, appendonly: bool = False, password: str = ""):
        self.port = free_port()
        self.workdir = workdir
        self.appendonly = appendonly
        self.password = password
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (apt-get install redis-server)")
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir", str(self.workdir),
                "--appendonly", "yes" if self.appendonly else "no", "--logfile", str(self.workdir / "redis.log")]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        deadline = time.time() + 15
        while time.time() < deadline:
            try:
                if redis.Redis(port=self.port, password=self.password or None).ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class ServiceProcess:
    """``python -m services.X`` with its environment; output goes to a log file for failures."""

    def __init__(self, module: str, env: dict[str, str], log_path: Path):
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module], cwd=ROOT, env={**os.environ, **env}, stdout=self.log, stderr=subprocess.STDOUT
        )

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self, sig_kill: bool = False) -> None:
        if self.proc.poll() is None:
            self.proc.kill() if sig_kill else self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def wait_healthy(url: str, proc: "ServiceProcess | subprocess.Popen | None" = None, timeout: float = 300.0) -> None:
    """Poll ``url`` (a /health endpoint) until it answers 200; fail early if ``proc`` exits."""
    import httpx

    popen = getattr(proc, "proc", proc)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if popen is not None and popen.poll() is not None:
            raise AssertionError(f"process exited before {url} was healthy:\n{proc.output() if hasattr(proc, 'output') else ''}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} never became healthy:\n{proc.output() if hasattr(proc, 'output') else ''}")


@pytest.fixture
def services(tmp_path: Path) -> Iterator[list[ServiceProcess]]:
    """Collects the service processes a test starts and stops every one of them."""
    started: list[ServiceProcess] = []
    try:
        yield started
    finally:
        for s in started:
            s.stop()


@pytest.fixture(scope="session")
def toy_model() -> tuple[Path, dict, list[str]]:
    """The embedded toy model (autothink/toy/model/, committed with its manifest): what `make demo`
    and the benchmarks use, the same weights on every machine.  Returns (folder, the build's
    summary from its manifest, the command that rebuilds it).  Tests must not write into it."""
    import json

    from autothink.config import embedded_toy_path
    from autothink.toy.build import MANIFEST

    out = Path(embedded_toy_path())
    assert (out / "model.safetensors").is_file(), f"the embedded toy model is missing from {out}"
    autothink = str(Path(sys.executable).with_name("autothink"))
    cmd = [autothink, "toy", "build", "--out", str(out), "--quiet"]
    return out, json.loads((out / MANIFEST).read_text())["summary"], cmd


# ---------------------------------------------------------------------------- nothing left behind
# Every process a test starts inherits this marker; after the whole run, none may still be alive.
# That catches what a descendant check cannot: an engine process re-parented to init when its
# service was killed with SIGKILL.
SESSION_MARK = f"{os.getpid()}-{time.time_ns()}"
os.environ["AUTOTHINK_TEST_SESSION"] = SESSION_MARK


def _start_ticks(pid: int | str) -> int:
    fields = _proc_stat(pid)
    return int(fields[19]) if fields else 0  # starttime: field 22 of /proc/PID/stat, counted after the name


SESSION_START = _start_ticks(os.getpid())


def _marked_processes() -> dict[int, str]:
    """Processes this test session started that are still alive: those carrying the session's
    marker, and orphaned vLLM engines started since the session began (vLLM renames its processes,
    which overwrites what /proc shows of their environment, so the marker cannot be read there)."""
    found = {}
    needle = f"AUTOTHINK_TEST_SESSION={SESSION_MARK}".encode()
    for entry in filter(str.isdigit, os.listdir("/proc")):
        pid = int(entry)
        if pid == os.getpid() or not alive(pid):
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:200]
            with open(f"/proc/{pid}/environ", "rb") as f:
                marked = needle in f.read().split(b"\0")
            fields = _proc_stat(pid)
            orphan_engine = (cmd.startswith("VLLM::") and fields is not None and fields[1] == "1"
                             and _start_ticks(pid) >= SESSION_START)
        except OSError:
            continue
        own_tracker = fields is not None and fields[1] == str(os.getpid()) and "multiprocessing.resource_tracker" in cmd
        if (marked or orphan_engine) and not own_tracker:  # pytest's own resource tracker ends with pytest itself
            found[pid] = cmd
    return found


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not sys.platform.startswith("linux") or hasattr(session.config, "workerinput"):
        return
    import autothink.grading as grading

    if grading._default_pool is not None:  # grade()'s shared pool is closed at exit; close it now
        grading._default_pool.close()
    deadline = time.time() + 15  # a stopped service's engine takes a moment to go
    left = _marked_processes()
    while left and time.time() < deadline:
        time.sleep(0.5)
        left = _marked_processes()
    if left:
        import signal

        lines = "\n".join(f"  {pid}: {cmd}" for pid, cmd in sorted(left.items()))
        session.config.get_terminal_writer().line(f"\nprocesses started by the tests outlived them:\n{lines}", red=True)
        for pid in left:  # leave the machine clean all the same
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# ------------------------------------------------------------------ no quiet skips in CI
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The container stack is a target of its own (`make compose-test`): `make test` does not
    collect it, so it is neither run nor counted as a skip.  AUTOTHINK_COMPOSE_TEST=1 keeps it."""
    if os.environ.get("AUTOTHINK_COMPOSE_TEST") == "1":
        return
    compose = [it for it in items if it.get_closest_marker("compose")]
    if compose:
        config.hook.pytest_deselected(items=compose)
        items[:] = [it for it in items if not it.get_closest_marker("compose")]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """With CI=true (what CI sets) a test that would skip fails instead, with the skip's reason (the
    dependency it names): a skip a fresh machine always takes is a test that never runs."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail") and os.environ.get("CI", "").lower() == "true":
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"CI=true: this test would have been skipped, and CI does not skip: {reason}"
