"""Redis streams with consumer groups: the at-least-once trajectory bus (DESIGN.md §4).

A consumer reads entries through its group, writes its output, and only then acknowledges
(XACK), so a crash loses nothing: the entry stays pending and, once idle for ``claim_idle_ms``,
another consumer takes it over with XAUTOCLAIM.  Outputs can therefore be written twice; the
final consumer de-duplicates by group id.  Live owners renew their entries (XCLAIM with JUSTID
resets the idle time without counting a delivery), so only a dead owner's work is taken over,
and XPENDING's delivery counter bounds the retries (the rules are in :mod:`autothink.bus.base`).
Streams are trimmed (approximate MAXLEN) so Redis memory stays bounded, every call retries lost
connections with exponential backoff, and consumer groups lost with a Redis restart are re-created."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import redis

from autothink.bus import base
from autothink.bus.base import BusAuthError, Entry, StreamNames
from autothink.bus.messages import PromptMsg, RolloutGroup, ScoredGroup, encode

__all__ = ["BusAuthError", "Entry", "RedisBus", "StreamNames"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class RedisBus:
    """The :class:`autothink.bus.base.Bus` operations on one Redis connection pool."""

    def __init__(
        self,
        url: str,
        run_id: str,
        max_stream_len: int = 100_000,
        claim_idle_ms: int = 60_000,
        retries: int = 8,
        client: redis.Redis | None = None,
        max_deliveries: int = 5,
    ):
        self.client = client or redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=5, health_check_interval=30)
        self.names = StreamNames(run_id)
        self.max_stream_len = max_stream_len
        self.claim_idle_ms = claim_idle_ms
        self.max_deliveries = max_deliveries
        self.retries = retries
        self._groups: set[tuple[str, str]] = set()  # re-created if Redis loses them (a restart without its data)

    # -- resilience
    def _call(self, fn: Callable[[], T]) -> T:
        delay = 0.1
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except redis.AuthenticationError as e:  # a wrong or missing password: waiting will not fix it
                raise BusAuthError(f"redis refused the credentials ({e}); check the password in the Redis URL") from None
            except redis.ResponseError as e:
                # NOGROUP: Redis restarted without its data; the streams and groups are gone.  Re-create
                # the groups this process uses (empty: the lost entries are regenerated upstream) and go on.
                if "NOGROUP" not in str(e) or attempt == self.retries or not self._groups:
                    raise
                log.warning("redis lost the consumer groups (%s); re-creating %d of them", e, len(self._groups))
                for stream, group in list(self._groups):
                    self._create_group(stream, group)
            except (redis.ConnectionError, redis.TimeoutError) as e:
                if attempt == self.retries:
                    raise
                log.warning("redis unavailable (%s); retrying in %.1fs", e, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    # -- primitives
    def _create_group(self, stream: str, group: str) -> None:
        try:
            self.client.xgroup_create(stream, group, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    def ensure_group(self, stream: str, group: str) -> None:
        self._groups.add((stream, group))
        self._call(lambda: self._create_group(stream, group))

    def add(self, stream: str, fields: dict[str, Any]) -> str:
        entry_id = self._call(lambda: self.client.xadd(stream, fields, maxlen=self.max_stream_len, approximate=True))
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    def read(self, stream: str, group: str, consumer: str, count: int = 16, block_ms: int = 1000) -> list[Entry]:
        """Entries for ``consumer``: first ones whose owner stopped renewing them, then new ones.

        A taken-over entry already delivered more than ``max_deliveries`` times is dead-lettered
        here instead of being handed out again."""
        claimed = self._call(
            lambda: self.client.xautoclaim(stream, group, consumer, min_idle_time=self.claim_idle_ms, start_id="0-0", count=count)
        )
        entries = [Entry(stream, _id(i), f) for i, f in claimed[1] if f is not None]
        if entries:
            log.info("%s reclaimed %d pending entries from %s", consumer, len(entries), stream)
            live = []
            for e in entries:
                e.deliveries = self.deliveries(stream, group, e.id)
                if e.deliveries > self.max_deliveries:
                    log.error("dead-lettering %s %s: delivered %d times", stream, e.id, e.deliveries)
                    self.dead_letter(e, f"delivered {e.deliveries} times (max_deliveries {self.max_deliveries}) and never "
                                        "acknowledged: its consumers died or failed on it each time", consumer)
                    self.ack(stream, group, e.id)
                else:
                    live.append(e)
            if live:
                return live
        # XREADGROUP's BLOCK 0 waits for ever; here 0 means "do not wait"
        resp = self._call(lambda: self.client.xreadgroup(group, consumer, {stream: ">"}, count=count, block=block_ms if block_ms > 0 else None))
        return [Entry(stream, _id(i), f) for _, items in (resp or []) for i, f in items]

    def deliveries(self, stream: str, group: str, entry_id: str) -> int:
        """How many times the group handed ``entry_id`` out (XPENDING's counter); 0 if not pending."""
        rows = self._call(lambda: self.client.xpending_range(stream, group, min=entry_id, max=entry_id, count=1))
        return int(rows[0]["times_delivered"]) if rows else 0

    def renew(self, stream: str, group: str, consumer: str, ids: Iterable[str]) -> int:
        """Reset the idle time of those of ``ids`` that ``consumer`` still owns (XCLAIM JUSTID: no
        delivery is counted).  Entries another consumer took over are left alone."""
        want = set(ids)
        if not want:
            return 0
        mine = self._call(lambda: self.client.xpending_range(stream, group, min="-", max="+", count=max(len(want) * 4, 1000), consumername=consumer))
        owned = [r["message_id"] for r in mine if _id(r["message_id"]) in want]
        if owned:
            self._call(lambda: self.client.xclaim(stream, group, consumer, min_idle_time=0, message_ids=owned, justid=True))
        return len(owned)

    def release(self, stream: str, group: str, consumer: str, ids: Iterable[str]) -> None:
        """Mark entries as idle for ``claim_idle_ms`` already, so the next read (anyone's) retries them."""
        ids = list(ids)
        if ids:
            self._call(lambda: self.client.xclaim(stream, group, consumer, min_idle_time=0, message_ids=ids,
                                                  idle=self.claim_idle_ms + 1, justid=True))

    def read_batch(self, stream: str, group: str, consumer: str, count: int, block_ms: int = 1000, window_ms: int = 50) -> list[Entry]:
        """Like :meth:`read`, but once the first entries arrive keep collecting for up to
        ``window_ms`` until ``count`` are in hand: a producer that adds its entries one by one
        (the learner feeding a step's prompts) still makes one batch, not many small ones."""
        entries = self.read(stream, group, consumer, count, block_ms)
        deadline = time.monotonic() + window_ms / 1000
        while entries and len(entries) < count:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                break
            more = self.read(stream, group, consumer, count - len(entries), left_ms)
            if not more:
                break
            entries += more
        return entries

    def ack(self, stream: str, group: str, *ids: str) -> None:
        if ids:
            self._call(lambda: self.client.xack(stream, group, *ids))

    def dead_letter(self, entry: Entry, reason: str, consumer: str) -> None:
        """Keep a bad entry, with why and who, on the run's dead-letter stream."""
        fields = {k if isinstance(k, str) else k.decode(errors="replace"): v for k, v in entry.fields.items()}
        fields.update({"dead_reason": reason, "dead_from": entry.stream, "dead_id": entry.id, "dead_by": consumer})
        self.add(self.names.dead, fields)

    def pending(self, stream: str, group: str) -> int:
        info = self._call(lambda: self.client.xpending(stream, group))
        return int(info["pending"]) if isinstance(info, dict) else int(info[0])

    def length(self, stream: str) -> int:
        return int(self._call(lambda: self.client.xlen(stream)))

    def backlog(self, stream: str, group: str) -> int:
        """Entries of ``stream`` that ``group`` has not finished: never delivered (lag) plus pending."""
        for g in self._call(lambda: self.client.xinfo_groups(stream)):
            if g.get("name") in (group, group.encode()):
                return int(g.get("lag") or 0) + int(g.get("pending") or 0)
        return 0

    # -- run-wide markers (one small value per run, beside the streams)
    def set_published_version(self, version: int) -> None:
        """Record the newest policy version the learner published (a resumed learner reads it back)."""
        self._call(lambda: self.client.set(self.names.published_version, version))

    def published_version(self) -> int:
        """The newest policy version recorded by :meth:`set_published_version`, 0 if none."""
        return int(self._call(lambda: self.client.get(self.names.published_version)) or 0)

    # -- typed helpers
    def publish(self, stream: str, msg: PromptMsg | RolloutGroup | ScoredGroup) -> str:
        return self.add(stream, encode(msg))

    def decode_or_dead_letter(self, entry: Entry, expect: str, group: str, consumer: str) -> Any | None:
        """The decoded message, or None after moving an undecodable entry to the dead-letter stream."""
        return base.decode_or_dead_letter(self, entry, expect, group, consumer)


def _id(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
