"""The trajectory bus contract, and the two habits every consumer shares: leases and per-entry failure.

A consumer ``read``s entries through its group, writes its output, then ``ack``s.  Three rules
make that safe at the paper's lengths, where one prompt can take minutes to generate:

* **Leases, not guesses.**  An entry a consumer holds is pending; once idle for ``claim_idle_ms``
  anyone may take it over.  A live consumer therefore ``renew``s what it holds on a timer well
  under that (:class:`Leases`), so only entries whose owner died are ever reclaimed -- never
  work in progress.
* **Leases fence.**  A lease can still lapse (a process frozen or starved of CPU for longer than
  ``claim_idle_ms``).  Then the old owner must stop: a renewal that finds an entry owned by someone
  else reports it (``on_lost``) so the work is aborted, and the output is written with
  ``publish_and_ack``, which checks ownership, writes and acknowledges in one atomic step -- a
  result whose lease lapsed after the last renewal is dropped, never written.  So each entry is
  written at most once by a live owner, whatever the timing; leases only decide how much work a
  lapse wastes.
* **Deliveries are counted.**  Each take-over counts a delivery; an entry delivered more than
  ``max_deliveries`` times (its consumers crash or fail on it every time) goes to the run's
  dead-letter stream with the reason, instead of being retried for ever.
* **One entry fails alone.**  An exception while decoding or handling one entry concerns that
  entry: a malformed one is dead-lettered at once (decoding it again cannot help), any other
  failure ``release``s it for a prompt retry and dead-letters it once it is out of deliveries
  (:func:`settle_failure`); the rest of the batch proceeds.

:class:`autothink.bus.streams.RedisBus` is the real implementation; :class:`autothink.bus.memory.MemoryBus`
is an in-process one for unit tests.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from autothink.bus.messages import PromptMsg, RolloutGroup, ScoredGroup

log = logging.getLogger(__name__)

MIN_CLAIM_IDLE_MS = 200
"""The smallest ``claim_idle_ms`` the rollout service supports (its config refuses less).

Renewals come every quarter of the lease, from a process that does nothing else
(the rollout service's lease keeper), so what can still delay one is the OS scheduler alone.
Measured on this 2-core machine with two replicas generating 48 prompts and other engineers'
builds beside them (load 8-16, the tests at nice 10; BENCHMARKS.md, "Leases that fence"): the
longest gap between two renewals with prompts held was 59-68 ms at a 50 ms interval (200 ms) and
106-140 ms at 100 ms (400 ms), against 247-471 ms for a renewal thread beside four GIL-busy threads.
So the OS added up to ~40 ms to a tick while prompts were held, and up to ~1 s while a second
replica's engine warmed up beside a running one.  At 200 ms a lease survives a 150 ms stall past
its tick, over 3x what was seen with prompts held; at 100 ms only 75 ms, under 2x, with no room
for the start-up stalls.  Fencing keeps every
prompt written once at any lease; below the minimum lapses would be routine, and each one
throws a generation away, counts a delivery, and after ``max_deliveries`` of them dead-letters
a good prompt."""


@dataclass(frozen=True)
class StreamNames:
    """Key names of one run: ``autothink:{run_id}:{prompts|rollouts|scored|dead|published_version}``."""

    run_id: str

    def _name(self, part: str) -> str:
        return f"autothink:{self.run_id}:{part}"

    @property
    def prompts(self) -> str:
        return self._name("prompts")

    @property
    def rollouts(self) -> str:
        return self._name("rollouts")

    @property
    def scored(self) -> str:
        return self._name("scored")

    @property
    def dead(self) -> str:
        return self._name("dead")

    @property
    def published_version(self) -> str:
        return self._name("published_version")


@dataclass
class Entry:
    stream: str
    id: str
    fields: dict[Any, Any]
    deliveries: int = 1  # how many times the group has handed this entry out, this time included


class BusAuthError(RuntimeError):
    """The broker refused the credentials: waiting will not fix it."""


class Bus(Protocol):
    """What the services need of a trajectory bus."""

    names: StreamNames
    claim_idle_ms: int
    max_deliveries: int

    def ensure_group(self, stream: str, group: str) -> None: ...

    def publish(self, stream: str, msg: PromptMsg | RolloutGroup | ScoredGroup) -> str: ...

    def read(self, stream: str, group: str, consumer: str, count: int = 16, block_ms: int = 1000) -> list[Entry]:
        """Entries for ``consumer``: first those whose owner stopped renewing them, then new ones."""
        ...

    def ack(self, stream: str, group: str, *ids: str) -> None: ...

    def renew(self, stream: str, group: str, consumer: str, ids: Iterable[str]) -> int:
        """Reset the idle time of the entries ``consumer`` still owns; returns how many it owns."""
        ...

    def renew_owned(self, stream: str, group: str, consumer: str, ids: Iterable[str]) -> list[str]:
        """Like :meth:`renew`, in one atomic step, returning the ids ``consumer`` still owns
        (and has just renewed); the others were taken over, or finished, by someone else."""
        ...

    def publish_and_ack(self, stream: str, msg: PromptMsg | RolloutGroup | ScoredGroup, entry: Entry, group: str,
                        consumer: str) -> str | None:
        """Write ``msg`` to ``stream`` and acknowledge ``entry``, in one atomic step, if ``consumer``
        still owns ``entry``; returns the new entry's id, or None (nothing written: the lease was lost)."""
        ...

    def release(self, stream: str, group: str, consumer: str, ids: Iterable[str]) -> None:
        """Make entries ``consumer`` holds reclaimable at once (after a failure), by anyone."""
        ...

    def dead_letter(self, entry: Entry, reason: str, consumer: str) -> None: ...


class Leases:
    """The entries one consumer holds, renewed every ``interval_s`` by a thread that does nothing else.

    (The rollout service, whose process is busy with Python work that holds the GIL, renews from a
    process of its own instead, behind the same interface: its lease keeper.)

    ``hold`` an entry as soon as it is read (in the thread that read it, not after the batch has
    been decoded and submitted), ``drop`` it when it is acknowledged, dead-lettered or released.
    The default interval is a quarter of ``claim_idle_ms``: three renewals can be missed (a long
    GC pause, a slow Redis) before anyone may take the entry over.  The thread keeps its rhythm
    (each tick is scheduled from the previous one, not from when the last renewal ended) and
    uses ``bus.lease_bus()`` when the bus has one: a Redis connection of its own with a timeout
    under the lease, so a renewal never queues behind a blocking read or a large write.

    Each renewal is one atomic step (``renew_owned``).  Entries found owned by someone else are
    *lost*: they leave the held set at once (reported once, not on every tick) and go to
    ``on_lost(stream, ids)``, called on this thread -- the consumer aborts that work there.
    Without ``on_lost`` one warning is logged per loss.  ``last_renewed`` (monotonic seconds) and
    ``on_renewal(gap_s)`` tell how long the leases actually went between renewals.
    """

    def __init__(self, bus: Bus, group: str, consumer: str, interval_s: float | None = None,
                 on_lost: Callable[[str, list[str]], None] | None = None,
                 on_renewal: Callable[[float], None] | None = None):
        self.bus, self.group, self.consumer = bus, group, consumer
        self.interval_s = interval_s if interval_s is not None else bus.claim_idle_ms / 4000
        self.on_lost, self.on_renewal = on_lost, on_renewal
        self._held: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._renewer: Bus | None = None
        self.renewals = 0
        self.lost = 0  # entries we held that someone else owns now (our lease had lapsed)
        self.last_renewed = time.monotonic()  # the last renewal that reached the bus (or had nothing to renew)
        self.max_gap_s = 0.0  # the longest time between two such renewals with entries held, since start
        self._failing = False

    def hold(self, stream: str, *ids: str) -> None:
        with self._lock:
            self._held.setdefault(stream, set()).update(ids)

    def drop(self, stream: str, *ids: str) -> None:
        with self._lock:
            self._held.get(stream, set()).difference_update(ids)

    def held(self, stream: str) -> set[str]:
        with self._lock:
            return set(self._held.get(stream, ()))

    def count(self) -> int:
        with self._lock:
            return sum(len(ids) for ids in self._held.values())

    def since_renewed(self) -> float:
        return time.monotonic() - self.last_renewed

    def _bus_for_renewals(self) -> Bus:
        if self._renewer is None:
            make = getattr(self.bus, "lease_bus", None)
            self._renewer = make(timeout_s=max(0.05, self.interval_s * 2)) if make is not None else self.bus
        return self._renewer

    def renew_now(self) -> None:
        """Renew every held entry once; report those another consumer owns now."""
        with self._lock:
            snapshot = {s: list(ids) for s, ids in self._held.items() if ids}
        bus = self._bus_for_renewals()
        for stream, ids in snapshot.items():
            owned = set(bus.renew_owned(stream, self.group, self.consumer, ids))
            self.renewals += 1
            gone = [i for i in ids if i not in owned]
            if not gone:
                continue
            with self._lock:  # dropped meanwhile (acknowledged by us) is not a loss
                held = self._held.get(stream, set())
                lost = [i for i in gone if i in held]
                held.difference_update(lost)
            if not lost:
                continue
            self.lost += len(lost)
            if self.on_lost is not None:
                self.on_lost(stream, lost)
            else:
                log.warning("%s lost the lease on %d of %d held entries of %s (another consumer owns them now): %s",
                            self.consumer, len(lost), len(ids), stream, " ".join(lost[:8]) + (" ..." if len(lost) > 8 else ""))
        now = time.monotonic()
        gap, self.last_renewed = now - self.last_renewed, now
        if snapshot:  # a gap matters when something could lapse in it
            self.max_gap_s = max(self.max_gap_s, gap)
        if self.on_renewal is not None:
            self.on_renewal(gap)

    def start(self) -> Leases:
        self.last_renewed = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"leases-{self.group}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        next_tick = time.monotonic() + self.interval_s
        while not self._stop.wait(max(0.0, next_tick - time.monotonic())):
            try:
                self.renew_now()
                if self._failing:
                    log.info("%s: renewing leases works again", self.consumer)
                self._failing = False
            except Exception:  # a passing Redis failure: the next tick tries again, well before the lease lapses
                if not self._failing:  # once per outage, not every tick
                    log.exception("%s: renewing leases failed; retrying every %.0f ms", self.consumer, self.interval_s * 1000)
                self._failing = True
            # keep the rhythm; after a stall renew at once, then every interval from now (no burst)
            next_tick = max(next_tick + self.interval_s, time.monotonic())

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def settle_failure(bus: Bus, entry: Entry, group: str, consumer: str, error: BaseException) -> bool:
    """After handling ``entry`` raised ``error``: retry it, or dead-letter it when out of deliveries.

    Returns True when the entry went to the dead-letter stream.  The caller must not ``ack`` it.
    """
    reason = f"{type(error).__name__}: {error}"[:2000]
    if entry.deliveries >= bus.max_deliveries:
        log.error("dead-lettering %s %s after %d deliveries: %s", entry.stream, entry.id, entry.deliveries, reason)
        bus.dead_letter(entry, f"failed on each of {entry.deliveries} deliveries; last error: {reason}", consumer)
        bus.ack(entry.stream, group, entry.id)
        return True
    log.warning("%s %s failed (delivery %d of at most %d), released for a retry: %s",
                entry.stream, entry.id, entry.deliveries, bus.max_deliveries, reason)
    bus.release(entry.stream, group, consumer, [entry.id])
    return False


def decode_or_dead_letter(bus: Bus, entry: Entry, expect: str, group: str, consumer: str) -> Any | None:
    """The decoded message, or None after moving an entry that cannot be decoded to the dead-letter
    stream.  Decoding is deterministic, so *any* exception (a malformed field, a number out of
    range, nesting too deep) dead-letters at once: retrying cannot help."""
    from autothink.bus.messages import MessageError, decode

    try:
        return decode(entry.fields, expect)
    except Exception as e:  # noqa: BLE001 - whatever the bytes did to the decoder, it is this entry's fault
        reason = (str(e) if isinstance(e, MessageError) else f"{type(e).__name__}: {e}")[:2000]
        log.warning("dead-lettering %s %s: %s", entry.stream, entry.id, reason)
        bus.dead_letter(entry, reason, consumer)
        bus.ack(entry.stream, group, entry.id)
        return None
