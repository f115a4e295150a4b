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
from typing import Any

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


def stale_extension_locks(root: str | os.PathLike[str] | None = None, proc: str = "/proc", min_age_s: float = 0.0) -> list[str]:
    """Lock files of torch C++ extension builds that nobody is building any more.

    torch's ``cpp_extension.load`` (DeepSpeed builds its CPU shared-memory comm op with it when the
    learner starts) takes ``BUILD_DIR/lock`` and waits *forever* while that file exists.  A
    learner killed while it held the lock (Ctrl-C during the start, ``kill -9``) leaves the file,
    and every later learner on the machine then hangs at start with nothing in its log (seen
    here).  A lock is stale when it is older than ``min_age_s`` and no process is compiling in its
    folder (no process runs in it or names it: ninja and the compilers it starts run there) -- a
    live holder that is not compiling holds the lock for well under a second.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()); (d / "op").mkdir(); (d / "op" / "lock").touch()
    >>> empty = pathlib.Path(tempfile.mkdtemp())   # a /proc with no process in it
    >>> [pathlib.Path(p).parent.name for p in stale_extension_locks(d, proc=str(empty))]
    ['op']
    """
    from pathlib import Path

    base = Path(root) if root is not None else Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions")
    import time

    locks = [p for p in base.glob("**/lock") if p.is_file()] if base.is_dir() else []
    now = time.time()
    locks = [p for p in locks if now - p.stat().st_mtime >= min_age_s]
    if not locks:
        return []
    busy = set()
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            with open(os.path.join(proc, entry, "cmdline"), "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        try:  # ninja and the compilers it starts run inside the build folder
            cmd += " " + os.readlink(os.path.join(proc, entry, "cwd")) + os.sep
        except OSError:
            pass
        busy.update(str(p.parent) for p in locks if str(p.parent) in cmd)
    return [str(p) for p in locks if str(p.parent) not in busy]


def clear_stale_extension_locks(log: Any = None, min_age_s: float = 120.0) -> list[str]:
    """Remove :func:`stale_extension_locks` (saying so through ``log.warning``) and return them."""
    removed = []
    for path in stale_extension_locks(min_age_s=min_age_s):
        try:
            os.unlink(path)
        except OSError:
            continue
        removed.append(path)
        if log is not None:
            log.warning("removed a stale torch extension build lock %s (left by a process killed while building or "
                        "loading it; torch would wait on it forever)", path)
    return removed


class ExtensionLockWatch:
    """While a block runs (the learner's DeepSpeed start), clear stale extension build locks every
    ``every_s`` seconds, so a lock left by a killed process cannot stall the start forever.

    >>> with ExtensionLockWatch(every_s=0.01):
    ...     pass
    """

    def __init__(self, log: Any = None, every_s: float = 5.0):
        import threading

        self.log, self.every_s = log, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="extension-lock-watch", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            clear_stale_extension_locks(self.log)

    def __enter__(self) -> "ExtensionLockWatch":
        clear_stale_extension_locks(self.log)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)
