"""Worker processes that make the grader's time limit hard.

Each worker owns one pipe.  A grade is sent to an idle worker; if no answer comes within the
limit the worker is killed (SIGKILL: sympy holds no lock we need) and replaced by a fresh one,
and the grade is reported as ``timeout``.  A stuck grade costs one worker for a moment, never
the caller.  Workers run with an address-space limit, so a memory bomb fails inside the worker.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from autothink.grading import GradeResult

_MEMORY_LIMIT_BYTES = 4 << 30


def _worker_main(conn: Any, memory_limit: int) -> None:
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    except (ImportError, ValueError, OSError):
        pass
    from autothink.grading import grade_in_process

    grade_in_process("\\boxed{1}", "1")  # import sympy and warm the caches before saying ready
    conn.send("ready")
    while True:
        try:
            item = conn.recv()
        except EOFError:
            return
        if item is None:
            return
        response, truth = item
        try:
            r = grade_in_process(response, truth)
            conn.send((r.correct, r.status, r.extracted, r.detail))
        except Exception as e:  # reported as "could not grade", with the reason; never as wrong
            conn.send((False, "unparseable", None, f"grader error: {type(e).__name__}: {e}"[:300]))


class _Worker:
    def __init__(self, ctx: Any, memory_limit: int):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, memory_limit), daemon=True)
        self.proc.start()
        child.close()
        self.ready = False

    def wait_ready(self, timeout: float) -> None:
        if not self.ready:
            if not self.conn.poll(timeout):
                raise RuntimeError("grader worker did not start")
            assert self.conn.recv() == "ready"
            self.ready = True

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.join(timeout=5)
        finally:
            self.conn.close()


class GraderPool:
    """``workers`` grading processes with a hard per-grade time limit."""

    def __init__(self, workers: int = 2, timeout_s: float = 2.0, memory_limit: int = _MEMORY_LIMIT_BYTES):
        self.timeout_s = timeout_s
        self.memory_limit = memory_limit
        self._ctx = mp.get_context("spawn")
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self.replaced = 0  # workers killed and replaced after a timeout or crash
        for _ in range(workers):
            self._idle.put(_Worker(self._ctx, memory_limit))
        self.size = workers

    def grade(self, response: str, ground_truth: Any, timeout_s: float | None = None) -> GradeResult:
        limit = self.timeout_s if timeout_s is None else timeout_s
        worker = self._idle.get()
        try:
            worker.wait_ready(timeout=60.0)
            t0 = time.perf_counter()
            worker.conn.send((response, ground_truth))
            if worker.conn.poll(limit):
                correct, status, extracted, detail = worker.conn.recv()
                self._idle.put(worker)
                return GradeResult(correct, status, extracted, detail)
            elapsed = time.perf_counter() - t0
            self._replace(worker)
            return GradeResult(False, "timeout", None, f"no result within {limit:.1f} s ({elapsed:.1f} s)")
        except (EOFError, OSError, BrokenPipeError) as e:
            self._replace(worker)
            return GradeResult(False, "unparseable", None, f"grader worker died: {type(e).__name__}")
        except BaseException:
            self._replace(worker)
            raise

    def grade_many(self, items: Iterable[tuple[str, Any]], timeout_s: float | None = None) -> list[GradeResult]:
        items = list(items)
        if not items:
            return []
        with ThreadPoolExecutor(max_workers=self.size) as ex:
            return list(ex.map(lambda it: self.grade(it[0], it[1], timeout_s), items))

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        with self._lock:
            self.replaced += 1
            if not self._closed:
                self._idle.put(_Worker(self._ctx, self.memory_limit))

    def pids(self) -> Sequence[int]:
        """Process ids of the idle workers (for tests and metrics)."""
        with self._idle.mutex:
            return [w.proc.pid for w in list(self._idle.queue)]

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                w = self._idle.get_nowait()
            except queue.Empty:
                break
            try:
                w.conn.send(None)
            except OSError:
                pass
            w.kill()

    def __enter__(self) -> GraderPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
