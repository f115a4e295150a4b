"""An in-process :class:`autothink.bus.base.Bus` with Redis streams' semantics, for unit tests.

Entries, consumer groups, pending entries with an owner, an idle clock and a delivery counter,
take-over of entries idle for ``claim_idle_ms`` -- the rules the services rely on, without a
server.  Integration tests use :class:`autothink.bus.streams.RedisBus` against a real redis-server.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from autothink.bus import base
from autothink.bus.base import Entry, StreamNames
from autothink.bus.messages import PromptMsg, RolloutGroup, ScoredGroup, encode


@dataclass
class _Pending:
    consumer: str
    delivered_at: float
    deliveries: int


@dataclass
class _Group:
    next_index: int = 0  # first entry never delivered
    pending: dict[str, _Pending] = field(default_factory=dict)


class MemoryBus:
    def __init__(self, run_id: str = "test", claim_idle_ms: int = 60_000, max_deliveries: int = 5,
                 clock: Callable[[], float] = time.monotonic):
        self.names = StreamNames(run_id)
        self.claim_idle_ms = claim_idle_ms
        self.max_deliveries = max_deliveries
        self.clock = clock
        self.streams: dict[str, list[tuple[str, dict[Any, Any]]]] = {}
        self.groups: dict[tuple[str, str], _Group] = {}
        self.published = 0
        self._ids = itertools.count(1)
        self._cond = threading.Condition()

    # -- the Bus contract
    def ensure_group(self, stream: str, group: str) -> None:
        with self._cond:
            self.streams.setdefault(stream, [])
            self.groups.setdefault((stream, group), _Group())

    def add(self, stream: str, fields: dict[Any, Any]) -> str:
        with self._cond:
            entry_id = f"{next(self._ids)}-0"
            self.streams.setdefault(stream, []).append((entry_id, dict(fields)))
            self._cond.notify_all()
            return entry_id

    def publish(self, stream: str, msg: PromptMsg | RolloutGroup | ScoredGroup) -> str:
        return self.add(stream, encode(msg))

    def read(self, stream: str, group: str, consumer: str, count: int = 16, block_ms: int = 1000) -> list[Entry]:
        deadline = self.clock() + block_ms / 1000
        with self._cond:
            g = self.groups[(stream, group)]
            now = self.clock()
            fields = dict(self.streams[stream])
            stale = [i for i, p in g.pending.items() if (now - p.delivered_at) * 1000 >= self.claim_idle_ms][:count]
            live = []
            for i in stale:
                p = g.pending[i]
                p.consumer, p.delivered_at, p.deliveries = consumer, now, p.deliveries + 1
                e = Entry(stream, i, fields[i], p.deliveries)
                if e.deliveries > self.max_deliveries:
                    del g.pending[i]
                    self._dead(e, f"delivered {e.deliveries} times (max_deliveries {self.max_deliveries}) and never acknowledged",
                               consumer)
                else:
                    live.append(e)
            if live:
                return live
            while True:
                entries = self.streams[stream][g.next_index : g.next_index + count]
                if entries or self.clock() >= deadline:
                    break
                self._cond.wait(timeout=max(0.0, deadline - self.clock()))
            g.next_index += len(entries)
            for i, _ in entries:
                g.pending[i] = _Pending(consumer, self.clock(), 1)
            return [Entry(stream, i, f, 1) for i, f in entries]

    def ack(self, stream: str, group: str, *ids: str) -> None:
        with self._cond:
            for i in ids:
                self.groups[(stream, group)].pending.pop(i, None)

    def renew(self, stream: str, group: str, consumer: str, ids: Iterable[str]) -> int:
        return len(self.renew_owned(stream, group, consumer, ids))

    def renew_owned(self, stream: str, group: str, consumer: str, ids: Iterable[str]) -> list[str]:
        with self._cond:
            g, owned = self.groups[(stream, group)], []
            for i in ids:
                p = g.pending.get(i)
                if p is not None and p.consumer == consumer:
                    p.delivered_at = self.clock()
                    owned.append(i)
            return owned

    def publish_and_ack(self, stream: str, msg: PromptMsg | RolloutGroup | ScoredGroup, entry: Entry, group: str,
                        consumer: str) -> str | None:
        """Write and acknowledge under one lock, only while ``consumer`` owns ``entry`` (as the
        Redis bus does in one Lua step)."""
        with self._cond:
            g = self.groups[(entry.stream, group)]
            p = g.pending.get(entry.id)
            if p is None or p.consumer != consumer:
                return None
            new_id = self.add(stream, encode(msg))  # the condition's lock is re-entrant
            del g.pending[entry.id]
            return new_id

    def release(self, stream: str, group: str, consumer: str, ids: Iterable[str]) -> None:
        with self._cond:
            g = self.groups[(stream, group)]
            for i in ids:
                if i in g.pending:
                    g.pending[i].delivered_at = self.clock() - self.claim_idle_ms / 1000 - 1

    def dead_letter(self, entry: Entry, reason: str, consumer: str) -> None:
        with self._cond:
            self._dead(entry, reason, consumer)

    def _dead(self, entry: Entry, reason: str, consumer: str) -> None:
        fields = {k if isinstance(k, str) else k.decode(errors="replace"): v for k, v in entry.fields.items()}
        fields.update({"dead_reason": reason, "dead_from": entry.stream, "dead_id": entry.id, "dead_by": consumer})
        entry_id = f"{next(self._ids)}-0"
        self.streams.setdefault(self.names.dead, []).append((entry_id, fields))

    # -- what tests look at
    def pending(self, stream: str, group: str) -> int:
        with self._cond:
            return len(self.groups[(stream, group)].pending)

    def length(self, stream: str) -> int:
        with self._cond:
            return len(self.streams.get(stream, []))

    def entries(self, stream: str) -> list[tuple[str, dict[Any, Any]]]:
        with self._cond:
            return list(self.streams.get(stream, []))

    def decode_or_dead_letter(self, entry: Entry, expect: str, group: str, consumer: str) -> Any | None:
        return base.decode_or_dead_letter(self, entry, expect, group, consumer)
