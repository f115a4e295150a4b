"""Giving a service cores of its own on a CPU-only machine.

With ``max_staleness`` ≥ 1 the rollout engine generates step k+1 while the learner trains step k.
On GPUs each has its own device; on one CPU machine both default to every core, their OpenMP
pools oversubscribe the cores and staleness 1 even ran slower than on-policy (0.69-0.96× on 2
cores, BENCHMARKS.md).
``AUTOTHINK_CPUS="0-3,8"`` pins a service process -- and what it starts: the vLLM engine
process, DeepSpeed ranks, their threads -- to those cores and sizes its thread pools to them.
Every service reads it at start, through its command-line skeleton; ``autothink up`` sets it for the rollout service
and the learner when they should overlap (:func:`plan_cpus`).
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import MutableMapping, Sequence

ENV = "AUTOTHINK_CPUS"


def parse_cpu_list(text: str) -> list[int]:
    """ "0-3,8" → [0, 1, 2, 3, 8] (sorted, no repeats); ValueError on anything else.

    >>> parse_cpu_list("0-3,8")
    [0, 1, 2, 3, 8]
    >>> parse_cpu_list(" 2 , 1,1 ")
    [1, 2]
    """
    cpus: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        lo, dash, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi if dash else lo)
        except ValueError:
            raise ValueError(f"{ENV}={text!r}: expected core ids and ranges such as '0-3,8'") from None
        if a < 0 or b < a:
            raise ValueError(f"{ENV}={text!r}: bad range {part!r}")
        cpus.update(range(a, b + 1))
    return sorted(cpus)


def format_cpu_list(cpus: Sequence[int]) -> str:
    """[0, 1, 2, 3, 8] → "0-3,8" (the form taskset, OpenMP and vLLM read).

    >>> format_cpu_list([8, 0, 1, 2, 3])
    '0-3,8'
    """
    out = []
    for _, run in itertools.groupby(enumerate(sorted(set(cpus))), key=lambda ic: ic[1] - ic[0]):  # consecutive ids
        ids = [c for _, c in run]
        out.append(f"{ids[0]}-{ids[-1]}" if len(ids) > 1 else str(ids[0]))
    return ",".join(out)


def plan_cpus(available: Sequence[int], max_staleness: int, on_gpu: bool, split: bool | None = None) -> dict[str, str]:
    """Which cores the rollout service and the learner get (``AUTOTHINK_CPUS`` values by service).

    ``split`` None decides by itself: split when generation and training overlap
    (max_staleness ≥ 1) on a CPU-only machine with ≥ 2 cores.  On-policy runs alternate the two
    phases, so each should have every core in turn: no split.  The rollout service takes the
    first half (the larger one when odd), the learner the rest.

    >>> plan_cpus([0, 1], max_staleness=1, on_gpu=False)
    {'rollout': '0', 'learner': '1'}
    >>> plan_cpus([0, 1, 2, 3, 4], max_staleness=1, on_gpu=False)
    {'rollout': '0-2', 'learner': '3-4'}
    >>> plan_cpus([0, 1], max_staleness=0, on_gpu=False), plan_cpus([0, 1], 1, on_gpu=True)
    ({}, {})
    >>> plan_cpus([0, 1], max_staleness=0, on_gpu=False, split=True)
    {'rollout': '0', 'learner': '1'}
    """
    cores = sorted(available)
    if split is None:
        split = max_staleness >= 1 and not on_gpu
    if not split or len(cores) < 2:
        return {}
    half = (len(cores) + 1) // 2
    return {"rollout": format_cpu_list(cores[:half]), "learner": format_cpu_list(cores[half:])}


def pin_from_env(environ: MutableMapping[str, str] | None = None) -> list[int] | None:
    """Apply ``AUTOTHINK_CPUS`` to this process, before it starts engines or threads.

    Sets the affinity (inherited by every process and thread started later), OMP_NUM_THREADS (the
    cores divided among the local ranks under torchrun), torch's intra-op threads when torch is
    loaded already, and VLLM_CPU_OMP_THREADS_BIND so vLLM's engine binds its OpenMP threads
    inside the set rather than to the machine's first core.  Returns the cores, or None when the
    variable is unset.  ValueError when it names cores this process may not use.
    """
    env = os.environ if environ is None else environ
    spec = env.get(ENV, "").strip()
    if not spec:
        return None
    cpus = parse_cpu_list(spec)
    allowed = os.sched_getaffinity(0)
    if not set(cpus) <= allowed:
        raise ValueError(f"{ENV}={spec!r}: cores {format_cpu_list(sorted(set(cpus) - allowed))} are not available "
                         f"to this process (it may use {format_cpu_list(sorted(allowed))})")
    os.sched_setaffinity(0, cpus)
    threads = max(1, len(cpus) // max(1, int(env.get("LOCAL_WORLD_SIZE", "1"))))
    env["OMP_NUM_THREADS"] = str(threads)
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", format_cpu_list(cpus))
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    return cpus
