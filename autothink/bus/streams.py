"""Redis streams with consumer groups: the at-least-once trajectory bus (docs/design.md §4).

A consumer reads entries through its group, writes its output, and only then acknowledges
(XACK), so a crash loses nothing: the entry stays pending and, once idle for ``claim_idle_ms``,
another consumer takes it over with XAUTOCLAIM.  Outputs can therefore be written twice; the
final consumer de-duplicates by group id.  Live owners renew their entries (XCLAIM with JUSTID
resets the idle time without counting a delivery), so only a dead owner's work is taken over,
and XPENDING's delivery counter bounds the retries (the rules are in :mod:`autothink.bus.base`).
Ownership is checked on the server, in Lua, so no other client's command can come between the
check and the action: a renewal renews only what the consumer still owns, and a consumer's output
is written (XADD) and its input acknowledged (XACK) only while it owns the input -- the fencing
that keeps an entry whose lease lapsed from being written twice.
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

# KEYS[1] stream; ARGV: group, consumer, ids...  Renews (XCLAIM JUSTID: no delivery counted) the
# ids the consumer owns, checked in the same step, and returns them.  A separate XPENDING and
# XCLAIM would let another consumer's take-over fall between the two and be stolen back.
_RENEW_OWNED = """
local claim = {KEYS[1], ARGV[1], ARGV[2], 0}
local owned = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    owned[#owned + 1] = ARGV[i]
    claim[#claim + 1] = ARGV[i]
  end
end
if #owned > 0 then
  claim[#claim + 1] = 'JUSTID'
  redis.call('XCLAIM', unpack(claim))
end
return owned
"""

# KEYS[1] input stream, KEYS[2] output stream; ARGV: group, consumer, input id, maxlen, field, value, ...
# Writes the output and acknowledges the input only if the consumer still owns the input: once
# another consumer has taken it over (our lease lapsed), nothing is written -- and once written,
# the input is acknowledged in the same step, so no later take-over can write it again.
_PUBLISH_AND_ACK = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if not p[1] or p[1][2] ~= ARGV[2] then return false end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', unpack(ARGV, 5))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
return id
"""


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
        self.url = url
        self.client = client or redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=5, health_check_interval=30)
        self.names = StreamNames(run_id)
        self.max_stream_len = max_stream_len
        self.claim_idle_ms = claim_idle_ms
        self.max_deliveries = max_deliveries
        self.retries = retries
        self._groups: set[tuple[str, str]] = set()  # re-created if Redis loses them (a restart without its data)
        self._renew_owned = self.client.register_script(_RENEW_OWNED)
        self._publish_and_ack = self.client.register_script(_PUBLISH_AND_ACK)

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
        return len(self.renew_owned(stream, group, consumer, ids))

    def renew_owned(self, stream: str, group: str, consumer: str, ids: Iterable[str]) -> list[str]:
        """:meth:`renew`, returning the ids still owned, checked and renewed in one step on the server."""
        ids, owned = list(ids), []
        for k in range(0, len(ids), 1000):  # Lua's unpack() is bounded by its C stack (8000)
            chunk = ids[k:k + 1000]
            owned += self._call(lambda chunk=chunk: self._renew_owned(keys=[stream], args=[group, consumer, *chunk])) or []
        return [_id(i) for i in owned]

    def publish_and_ack(self, stream: str, msg: PromptMsg | RolloutGroup | ScoredGroup, entry: Entry, group: str,
                        consumer: str) -> str | None:
        """Write ``msg`` to ``stream`` and XACK ``entry`` in one step, only while ``consumer`` owns
        ``entry``; None when it does not (its lease lapsed and another consumer took it, or it is
        already acknowledged): then nothing was written."""
        flat: list[Any] = []
        for k, v in encode(msg).items():
            flat += [k, v]
        new_id = self._call(lambda: self._publish_and_ack(
            keys=[entry.stream, stream], args=[group, consumer, entry.id, self.max_stream_len, *flat]))
        return None if new_id is None else _id(new_id)

    def lease_bus(self, timeout_s: float = 1.0) -> RedisBus:
        """A bus on a Redis connection of its own, for a lease-renewal thread: a renewal must not
        wait for a pool connection, behind a blocking XREADGROUP or a large XADD, and must give up
        (and try again on the next tick) well before the lease lapses, rather than retry with
        back-off for seconds.  Falls back to this bus's client when it was built from one."""
        if not self.url:
            return self
        client = redis.Redis.from_url(self.url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                      single_connection_client=True)
        bus = RedisBus(self.url, self.names.run_id, self.max_stream_len, self.claim_idle_ms, retries=0, client=client,
                       max_deliveries=self.max_deliveries)
        return bus

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
