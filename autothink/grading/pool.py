"""Worker processes that make the grader's time limit hard.

Each worker is a separate ``python -m autothink.grading.worker`` process (see
:mod:`autothink.grading.worker` for why not ``multiprocessing``) that talks JSON lines over its
stdin/stdout.  A grade is sent to an idle worker; if no answer comes within the limit the worker
is killed (SIGKILL: sympy holds no lock we need) and replaced by a fresh one, and the grade is
reported as ``timeout``.  A worker that dies while grading gives status ``error``.  Neither is a
verdict: both carry ``correct=None``, so no caller can mistake a broken grader for a wrong answer.
A stuck grade costs one worker for a moment, never the caller.  Workers run with an
address-space limit, so a memory bomb fails inside the worker.
"""

from __future__ import annotations

import json
import os
import queue
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from autothink.grading import DEFAULT_TIMEOUT_S, GradeResult

_MEMORY_LIMIT_BYTES = 4 << 30
_START_TIMEOUT_S = 120.0  # importing sympy on a loaded 2-core machine can take tens of seconds
#: The folder that holds the ``autothink`` package, so the worker imports the same code as its
#: parent even when the parent found it through its own ``sys.path`` (a script run from the repo).
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class WorkerDied(Exception):
    """The worker's pipe closed: it crashed, was killed, or exited."""


class _Worker:
    """One worker process and a line reader over its stdout that honours a deadline."""

    def __init__(self, memory_limit: int):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH", "")) if p)
        # one hash seed for every worker: the operation budget counts calls, and set iteration
        # order inside sympy (hence the count) follows the seed -- the same answer must cost the
        # same in every worker (issue #39, M2)
        env["PYTHONHASHSEED"] = "0"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "autothink.grading.worker", str(memory_limit)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True,
        )
        self._fd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        self._buf = b""
        self.ready = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def read_line(self, timeout: float) -> bytes | None:
        """The next line, None when ``timeout`` passes first; raises :class:`WorkerDied` on EOF."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self._fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(self._fd, 1 << 16)
            if not chunk:
                raise WorkerDied(f"worker exited (code {self.proc.poll()})")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def wait_ready(self, timeout: float) -> None:
        if not self.ready:
            line = self.read_line(timeout)
            if line is None:
                raise WorkerDied(f"worker did not start within {timeout:.0f} s")
            if json.loads(line) != "ready":
                raise WorkerDied(f"worker said {line[:80]!r} instead of ready")
            self.ready = True

    def send(self, response: Any, ground_truth: Any) -> None:
        if self.proc.poll() is not None:
            raise WorkerDied(f"worker exited (code {self.proc.returncode})")
        try:
            self.proc.stdin.write(json.dumps([response, ground_truth]).encode() + b"\n")  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
        except (BrokenPipeError, OSError, ValueError) as e:
            raise WorkerDied(f"worker pipe closed: {type(e).__name__}") from None

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()  # type: ignore[union-attr]
            except OSError:
                pass

    def close(self) -> None:
        """Ask the worker to exit (EOF on its stdin), then make sure it did."""
        try:
            self.proc.stdin.close()  # type: ignore[union-attr]
            self.proc.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()


def _jsonable(ground_truth: Any) -> Any:
    """Ground truths cross the pipe as JSON: tuples become lists, other objects their text."""
    if isinstance(ground_truth, (list, tuple)):
        return [_jsonable(t) for t in ground_truth]
    if ground_truth is None or isinstance(ground_truth, (str, int, float, bool)):
        return ground_truth
    return str(ground_truth)


class GraderPool:
    """``workers`` grading processes with a hard per-grade time limit.

    Thread-safe: each grade takes an idle worker from a queue, so up to ``workers`` threads
    grade at once and the rest wait.
    """

    def __init__(self, workers: int = 2, timeout_s: float = DEFAULT_TIMEOUT_S, memory_limit: int = _MEMORY_LIMIT_BYTES):
        self.timeout_s = timeout_s
        self.memory_limit = memory_limit
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self.replaced = 0  # workers killed and replaced after a timeout or crash
        for _ in range(workers):
            self._idle.put(_Worker(memory_limit))
        self.size = workers

    def grade(self, response: str, ground_truth: Any, timeout_s: float | None = None) -> GradeResult:
        """Grade in a worker.  ``timeout`` and ``error`` results have ``correct=None``."""
        limit = self.timeout_s if timeout_s is None else timeout_s
        if self._closed:
            raise RuntimeError("GraderPool is closed")
        worker = self._idle.get()
        try:
            try:
                worker.wait_ready(_START_TIMEOUT_S)
                worker.send(response if isinstance(response, str) else None, _jsonable(ground_truth))
            except WorkerDied:
                # died before it saw this grade (killed while idle, failed to start): the grade
                # itself is innocent, so it gets one fresh worker
                worker = self._replace(worker, fresh_for_caller=True)
                worker.wait_ready(_START_TIMEOUT_S)
                worker.send(response if isinstance(response, str) else None, _jsonable(ground_truth))
            t0 = time.perf_counter()
            line = worker.read_line(limit)
            if line is None:
                elapsed = time.perf_counter() - t0
                self._replace(worker)
                return GradeResult(None, "timeout", None, f"no result within {limit:.1f} s ({elapsed:.1f} s)")
            correct, status, extracted, detail = json.loads(line)
            self._idle.put(worker)
            return GradeResult(correct, status, extracted, detail)
        except WorkerDied as e:
            self._replace(worker)
            return GradeResult(None, "error", None, f"grader worker died: {e}")
        except BaseException:
            self._replace(worker)
            raise

    def grade_many(self, items: Iterable[tuple[str, Any]], timeout_s: float | None = None) -> list[GradeResult]:
        items = list(items)
        if not items:
            return []
        with ThreadPoolExecutor(max_workers=self.size) as ex:
            return list(ex.map(lambda it: self.grade(it[0], it[1], timeout_s), items))

    def _replace(self, worker: _Worker, fresh_for_caller: bool = False) -> _Worker:
        """Kill ``worker`` and start another: handed back to the caller, or put in the idle queue."""
        worker.kill()
        with self._lock:
            self.replaced += 1
            new = _Worker(self.memory_limit) if not self._closed or fresh_for_caller else None
        if new is not None and not fresh_for_caller:
            self._idle.put(new)
        return new  # type: ignore[return-value]

    def pids(self) -> Sequence[int]:
        """Process ids of the idle workers (for tests and metrics)."""
        with self._idle.mutex:
            return [w.pid for w in list(self._idle.queue)]

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                w = self._idle.get_nowait()
            except queue.Empty:
                break
            w.close()

    def __enter__(self) -> GraderPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
