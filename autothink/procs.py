"""Child processes that cannot outlive their service.

vLLM runs its engine in spawned processes (``VLLM::EngineCore``, ``VLLM::Worker``).  When the
service that started them is killed with SIGKILL nothing runs in it to stop them: they are
re-parented to init and keep their memory -- on a GPU, the GPU's memory, so the restarted replica
cannot even start.  Linux's parent-death signal closes that hole: a process that asks for it
receives SIGKILL the moment its parent thread exits, however it exits.

vLLM loads its *general plugins* (the ``vllm.general_plugins`` entry point group) in every
process it starts -- the engine core and each worker -- before any work; this package registers
:func:`vllm_plugin` there (pyproject.toml), which arms the signal in each of them: the engine core
dies with its service, the workers with their engine core.  The parent-death signal follows the
*thread* that started the child, so the engine must be started from a thread that lives as long
as the service (the rollout service starts it on its main thread; the gateway on its event
loop's executor, which lives as long as the server).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux); False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def die_with_parent_if_spawned() -> None:
    """In a child started by multiprocessing: die with the parent, and at once if it is already gone."""
    parent = multiprocessing.parent_process()
    if parent is None or os.environ.get("AUTOTHINK_KEEP_ORPHANS") == "1":
        return
    if set_parent_death_signal() and parent.pid is not None and os.getppid() != parent.pid:
        os._exit(1)  # the parent died before the signal was armed


def vllm_plugin() -> None:
    """vLLM general plugin (entry point ``autothink-die-with-parent``): runs in every vLLM process."""
    die_with_parent_if_spawned()
