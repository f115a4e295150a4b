"""The rollout replica's leases, renewed by a process of their own.

A renewal thread inside the replica shares the replica's GIL with the event loop, vLLM's output
processing and the tokenising threads; each renewal needs the GIL several times (send, receive,
parse), and with four busy threads CPython's 5 ms switch interval stretched the gap between
renewals to 417 ms on this 2-core machine (BENCHMARKS.md, "Leases that fence") -- a 400 ms lease
lapsed with its owner alive.  A separate interpreter has its own GIL: nothing the replica does
in Python can delay it, only the OS scheduler can, and a process that sleeps between ticks is
woken promptly by it.

The keeper (``python -m services.rollout.lease_keeper``) renews what the replica holds every
``interval_ms`` with one atomic Lua step (:meth:`autothink.bus.streams.RedisBus.renew_owned`) on
its own Redis connection, and keeps its rhythm.  It speaks lines over pipes:

* replica -> keeper (stdin): ``H stream id...`` hold, ``D stream id...`` drop; EOF: exit.
* keeper -> replica (stdout): ``L stream id...`` lost (another consumer owns them; no longer
  renewed), ``R t gap n`` renewed ``n`` entries at CLOCK_MONOTONIC ``t`` (the same clock in
  both processes), ``gap`` seconds after the previous renewal, ``E message`` renewals failing (once per outage),
  ``X stream id`` an adopted entry never held (left to lapse).

An entry is held from the moment Redis hands it out: the keeper also renews fresh deliveries to
this consumer that the replica has not named yet (``--adopt``; see ``_keep``), because naming them
takes the replica's GIL, which a batch being tokenised and submitted can keep for longer than a
lease (the issue's trace: rep1 reclaimed 9 of rep2's prompts 1.5 s after rep2 read them).

Liveness stays the replica's: the keeper renews only while its parent is running.  A parent that
is stopped (SIGSTOP, a debugger) gets no renewals, so its leases lapse and another replica takes
its prompts -- its fencing then drops what it finishes after waking; a parent that dies takes
the keeper with it (parent-death signal), as does a closed pipe.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable

log = logging.getLogger("autothink.rollout")


# ------------------------------------------------------------------------------ the keeper process
def _parent_stopped(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("T", "t")
    except (OSError, IndexError):
        return False


def _keep(url: str, group: str, consumer: str, interval_s: float, claim_idle_ms: int, parent: int, adopt: str = "") -> int:
    import redis

    from autothink.bus.streams import RedisBus

    timeout = max(0.05, 2 * interval_s)  # give up well before the lease lapses; the next tick tries again
    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout, single_connection_client=True)
    bus = RedisBus(url, "lease-keeper", claim_idle_ms=claim_idle_ms, retries=0, client=client)
    held: dict[str, set[str]] = {}
    # Adoption: entries of ``adopt`` delivered to this consumer moments ago that the replica has not
    # named yet.  Its reading thread names them as soon as the read returns, but that thread needs
    # this replica's GIL, and with a batch being tokenised and submitted it was seen to wait over
    # 400 ms for it -- so the keeper renews a fresh delivery (idle under 3/4 of the lease) from the
    # first tick that sees it, for up to ``grace_s`` until the replica holds it.  Entries it drops
    # (released for a retry: their idle is set past the lease) are never adopted again.
    adopted: dict[str, float] = {}  # id -> when first seen
    ignore: set[str] = set()  # dropped, or adopted and never held: pruned once out of our pending list
    fresh_ms, grace_s = 0.75 * claim_idle_ms, max(10.0, 2 * claim_idle_ms / 1000)
    inp, out = sys.stdin.fileno(), sys.stdout
    buf = b""
    last_ok = time.monotonic()
    next_tick = last_ok + interval_s
    failing = False

    def say(line: str) -> None:
        out.write(line + "\n")
        out.flush()

    while True:
        wait = max(0.0, next_tick - time.monotonic())
        if select.select([inp], [], [], wait)[0]:
            data = os.read(inp, 1 << 16)
            if not data:
                return 0  # the replica closed the pipe: stopping
            buf += data
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                op, stream, *ids = raw.decode().split()
                if op == "H":
                    held.setdefault(stream, set()).update(ids)
                    if stream == adopt:
                        for i in ids:
                            adopted.pop(i, None)
                            ignore.discard(i)
                elif op == "D":
                    held.get(stream, set()).difference_update(ids)
                    if stream == adopt:
                        for i in ids:
                            adopted.pop(i, None)
                        ignore.update(ids)
        now = time.monotonic()
        if now < next_tick:
            continue
        next_tick = max(next_tick + interval_s, now)  # keep the rhythm; after a stall, no burst
        if os.getppid() != parent:
            return 0
        if _parent_stopped(parent):
            continue  # a frozen replica must lose its leases: that is what lets another one take over
        try:
            if adopt:
                rows = client.xpending_range(adopt, group, min="-", max="+", count=1000, consumername=consumer)
                mine = {_text(r["message_id"]): int(r["time_since_delivered"]) for r in rows}
                ignore.intersection_update(mine)
                known = held.get(adopt, set())
                for i, idle in mine.items():
                    if idle < fresh_ms and i not in known and i not in adopted and i not in ignore:
                        adopted[i] = now
                expired = [i for i, t in adopted.items() if now - t > grace_s or i not in mine]
                for i in expired:
                    del adopted[i]
                    if i in mine:
                        ignore.add(i)
                        say(f"X {adopt} {i}")
            for stream in set(held) | ({adopt} if adopted else set()):
                ids = held.get(stream, set())
                extra = list(adopted) if stream == adopt else []
                if not ids and not extra:
                    continue
                owned = set(bus.renew_owned(stream, group, consumer, [*ids, *extra]))
                lost = [i for i in ids if i not in owned]
                for i in extra:
                    if i not in owned:
                        adopted.pop(i, None)
                if lost:
                    ids.difference_update(lost)
                    say(f"L {stream} {' '.join(lost)}")
        except Exception as e:  # noqa: BLE001 - a passing Redis failure: the next tick tries again
            if not failing:
                say(f"E {type(e).__name__}: {e}".replace("\n", " "))
            failing = True
            continue
        failing = False
        now = time.monotonic()
        say(f"R {now:.6f} {now - last_ok:.6f} {sum(len(v) for v in held.values()) + len(adopted)}")
        last_ok = now


def _text(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Renew a rollout replica's prompt leases (started by the replica).")
    p.add_argument("--url", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--consumer", required=True)
    p.add_argument("--interval-ms", type=float, required=True)
    p.add_argument("--claim-idle-ms", type=int, required=True)
    p.add_argument("--parent", type=int, required=True)
    p.add_argument("--adopt", default="", help="stream whose fresh deliveries to this consumer are renewed before the replica names them")
    a = p.parse_args(argv)
    from autothink.procs import set_parent_death_signal

    if set_parent_death_signal() and os.getppid() != a.parent:
        return 1  # the replica died before the signal was armed
    try:
        return _keep(a.url, a.group, a.consumer, a.interval_ms / 1000, a.claim_idle_ms, a.parent, a.adopt)
    except (KeyboardInterrupt, BrokenPipeError):
        return 0


# ------------------------------------------------------------------------------ the replica's side
class KeeperLeases:
    """:class:`autothink.bus.base.Leases`' interface, with the renewals done by a keeper process.

    ``hold``/``drop`` update a local mirror (for ``held``, ``count`` and the release at shutdown)
    and tell the keeper; a thread reads the keeper's reports and calls ``on_lost(stream, ids)`` and
    ``on_renewal(gap_s)`` -- neither is time-critical: the renewals themselves never wait for it.
    ``start`` must run on a thread that lives as long as the service (the keeper's parent-death
    signal follows it): the rollout service's main thread."""

    def __init__(self, url: str, group: str, consumer: str, claim_idle_ms: int, interval_s: float | None = None,
                 on_lost: Callable[[str, list[str]], None] | None = None,
                 on_renewal: Callable[[float], None] | None = None, adopt: str = ""):
        self.url, self.group, self.consumer, self.claim_idle_ms, self.adopt = url, group, consumer, claim_idle_ms, adopt
        self.interval_s = interval_s if interval_s is not None else claim_idle_ms / 4000
        self.on_lost, self.on_renewal = on_lost, on_renewal
        self._held: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._stopping = False
        self.lost = 0
        self.renewals = 0
        self.last_renewed = time.monotonic()
        self.max_gap_s = 0.0
        self.keeper_alive = False

    # -- the Leases interface
    def hold(self, stream: str, *ids: str) -> None:
        if ids:
            with self._lock:
                self._held.setdefault(stream, set()).update(ids)
                self._send(f"H {stream} {' '.join(ids)}")

    def drop(self, stream: str, *ids: str) -> None:
        if ids:
            with self._lock:
                self._held.get(stream, set()).difference_update(ids)
                self._send(f"D {stream} {' '.join(ids)}")

    def held(self, stream: str) -> set[str]:
        with self._lock:
            return set(self._held.get(stream, ()))

    def count(self) -> int:
        with self._lock:
            return sum(len(ids) for ids in self._held.values())

    def since_renewed(self) -> float:
        return time.monotonic() - self.last_renewed

    def start(self) -> KeeperLeases:
        self.last_renewed = time.monotonic()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "services.rollout.lease_keeper", "--url", self.url, "--group", self.group,
             "--consumer", self.consumer, "--interval-ms", str(self.interval_s * 1000), "--claim-idle-ms",
             str(self.claim_idle_ms), "--parent", str(os.getpid()), "--adopt", self.adopt],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        self.keeper_alive = True
        self._reader = threading.Thread(target=self._read_reports, name="lease-keeper-reports", daemon=True)
        self._reader.start()
        with self._lock:  # what was held before the keeper started
            for stream, ids in self._held.items():
                if ids:
                    self._send(f"H {stream} {' '.join(ids)}")
        return self

    def wait_started(self, timeout_s: float = 120.0) -> None:
        """Until the keeper has renewed once (its interpreter and Redis connection are up): a
        replica must not read before, or what it reads goes unrenewed while the keeper starts."""
        deadline = time.monotonic() + timeout_s
        while self.renewals == 0:
            if not self.keeper_alive:
                raise RuntimeError(f"the lease keeper exited at start (code {self._proc.wait() if self._proc else None})")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the lease keeper did not renew within {timeout_s:.0f} s of its start")
            time.sleep(0.02)

    def stop(self) -> None:
        self._stopping = True
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()  # EOF: the keeper exits
            proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()

    # -- plumbing
    def _send(self, line: str) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None:
            return  # not started yet: start() sends what is held
        try:
            proc.stdin.write((line + "\n").encode())
        except (OSError, ValueError):  # the keeper is gone: _read_reports says so
            pass

    def _read_reports(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for raw in self._proc.stdout:
            op, _, rest = raw.decode(errors="replace").strip().partition(" ")
            if op == "R":
                t, gap, holding = (float(x) for x in rest.split())
                self.last_renewed, self.renewals = t, self.renewals + 1
                if holding:  # a gap matters when something could lapse in it
                    self.max_gap_s = max(self.max_gap_s, gap)
                if self.on_renewal is not None:
                    self.on_renewal(gap)
            elif op == "L":
                stream, *ids = rest.split()
                with self._lock:
                    held = self._held.get(stream, set())
                    lost = [i for i in ids if i in held]  # dropped meanwhile (written by us) is not a loss
                    held.difference_update(lost)
                if lost:
                    self.lost += len(lost)
                    if self.on_lost is not None:
                        self.on_lost(stream, lost)
            elif op == "X":
                log.warning("%s: entry %s was delivered to us but never held within the grace period; left to lapse",
                            self.consumer, rest)
            elif op == "E":
                log.warning("%s: renewing leases failed (%s); the keeper retries every %.0f ms", self.consumer, rest,
                            self.interval_s * 1000)
        self.keeper_alive = False
        if not self._stopping:
            log.error("%s: the lease keeper process exited (code %s); prompts held now lapse and are taken over",
                      self.consumer, self._proc.wait())


if __name__ == "__main__":
    sys.exit(main())
