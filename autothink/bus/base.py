"""The trajectory bus contract, and the two habits every consumer shares: leases and per-entry failure.

A consumer ``read``s entries through its group, writes its output, then ``ack``s.  Three rules
make that safe at the paper's lengths, where one prompt can take minutes to generate:

* **Leases, not guesses.**  An entry a consumer holds is pending; once idle for ``claim_idle_ms``
  anyone may take it over.  A live consumer therefore ``renew``s what it holds on a timer well
  under that (:class:`Leases`), so only entries whose owner died are ever reclaimed -- never
  work in progress.
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
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from autothink.bus.messages import PromptMsg, RolloutGroup, ScoredGroup

log = logging.getLogger(__name__)


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

    def release(self, stream: str, group: str, consumer: str, ids: Iterable[str]) -> None:
        """Make entries ``consumer`` holds reclaimable at once (after a failure), by anyone."""
        ...

    def dead_letter(self, entry: Entry, reason: str, consumer: str) -> None: ...


class Leases:
    """The entries one consumer holds, renewed every ``interval_s`` by a daemon thread.

    ``hold`` when an entry is read, ``drop`` when it is acknowledged, dead-lettered or released.
    The default interval is a quarter of ``claim_idle_ms``: three renewals can be missed (a long
    GC pause, a slow Redis) before anyone may take the entry over.
    """

    def __init__(self, bus: Bus, group: str, consumer: str, interval_s: float | None = None):
        self.bus, self.group, self.consumer = bus, group, consumer
        self.interval_s = interval_s if interval_s is not None else bus.claim_idle_ms / 4000
        self._held: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.renewals = 0
        self.lost = 0  # entries we held that someone else owns now (our lease had lapsed)

    def hold(self, stream: str, *ids: str) -> None:
        with self._lock:
            self._held.setdefault(stream, set()).update(ids)

    def drop(self, stream: str, *ids: str) -> None:
        with self._lock:
            self._held.get(stream, set()).difference_update(ids)

    def held(self, stream: str) -> set[str]:
        with self._lock:
            return set(self._held.get(stream, ()))

    def renew_now(self) -> None:
        with self._lock:
            snapshot = {s: list(ids) for s, ids in self._held.items() if ids}
        for stream, ids in snapshot.items():
            owned = self.bus.renew(stream, self.group, self.consumer, ids)
            self.renewals += 1
            if owned < len(ids):
                self.lost += len(ids) - owned
                log.warning("%s: %d of %d held entries of %s are owned by another consumer now",
                            self.consumer, len(ids) - owned, len(ids), stream)

    def start(self) -> Leases:
        self._thread = threading.Thread(target=self._run, name=f"leases-{self.group}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.renew_now()
            except Exception:  # a passing Redis failure: the next tick tries again, well before the lease lapses
                log.exception("renewing leases failed")

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
