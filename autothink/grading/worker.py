"""The grading worker process: ``python -m autothink.grading.worker [memory_limit_bytes]``.

Why a dedicated entry point rather than ``multiprocessing``: a ``spawn`` (or ``forkserver``)
child re-imports the caller's ``__main__`` to rebuild its state, so a caller that is a script
without an ``if __name__ == "__main__"`` guard, a heredoc on stdin or a notebook either crashed
the child or re-ran the caller — and the grade came back as a wrong verdict.  This module imports
nothing of the caller: the parent starts it with ``sys.executable -m``, talks to it over its
stdin/stdout, and kills it when a grade runs past the limit.

Protocol (one JSON document per line, UTF-8):

* worker → parent, once started and warm:  ``"ready"``
* parent → worker:  ``[response, ground_truth]``
* worker → parent:  ``[correct, status, extracted, detail]``; an exception inside the comparison
  is reported as status ``error`` with ``correct`` null (could not grade, never "wrong")

JSON, not pickle: nothing the worker sends can run code in the parent.  The address-space limit
is set before sympy is imported, so a memory bomb fails as a ``MemoryError`` inside the worker.
"""

from __future__ import annotations

import json
import sys

DEFAULT_MEMORY_LIMIT = 4 << 30


def _limit_memory(limit: int) -> None:
    """Cap the address space (Linux/macOS); a platform without ``resource`` runs unlimited."""
    if limit <= 0:
        return
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):
        pass


def _answer(item: object) -> list:
    """The reply to one request line, never raising."""
    from autothink.grading import grade_in_process

    try:
        response, truth = item  # type: ignore[misc]
        r = grade_in_process(response, truth)
        return [r.correct, r.status, r.extracted, r.detail]
    except MemoryError:
        return [None, "error", None, "grader error: MemoryError (the answer needs more memory than the limit)"]
    except Exception as e:  # reported as "could not grade", with the reason; never as wrong
        return [None, "error", None, f"grader error: {type(e).__name__}: {e}"[:300]]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    _limit_memory(int(argv[0]) if argv else DEFAULT_MEMORY_LIMIT)
    stdin = sys.stdin.buffer
    stdout = sys.stdout.buffer
    sys.stdout = sys.stderr  # stray prints (sympy warnings, debugging) must not corrupt the protocol
    from autothink.grading import grade_in_process

    grade_in_process("\\boxed{1}", "1")  # import sympy and warm the caches before saying ready
    stdout.write(b'"ready"\n')
    stdout.flush()
    for line in stdin:
        try:
            item = json.loads(line)
        except ValueError as e:
            reply = [None, "error", None, f"grader error: bad request line: {e}"[:300]]
        else:
            reply = _answer(item)
        stdout.write(json.dumps(reply).encode() + b"\n")
        stdout.flush()
    return 0  # stdin closed: the parent is gone or closed the pool


if __name__ == "__main__":
    raise SystemExit(main())
