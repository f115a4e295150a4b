"""The bus against a real redis-server: batching prompts that arrive one by one."""

from __future__ import annotations

import threading
import time

import pytest

from autothink.bus.messages import PromptMsg
from autothink.bus.streams import RedisBus

pytestmark = pytest.mark.slow


def test_read_batch_collects_entries_added_one_by_one(redis_server):
    bus = RedisBus(redis_server.url, "batch")
    stream = bus.names.prompts
    bus.ensure_group(stream, "g")

    def producer() -> None:
        for i in range(12):
            bus.publish(stream, PromptMsg(f"p{i}", "q"))
            time.sleep(0.005)

    threading.Thread(target=producer).start()
    got = bus.read_batch(stream, "g", "c", count=12, block_ms=2000, window_ms=1000)
    assert len(got) == 12  # one batch, although the entries arrived one at a time
    # the window is a bound, not a wait: with nothing more coming it returns what it has
    bus.publish(stream, PromptMsg("last", "q"))
    t0 = time.monotonic()
    got = bus.read_batch(stream, "g", "c", count=12, block_ms=2000, window_ms=300)
    assert len(got) == 1 and time.monotonic() - t0 < 1.0
    # no window: the first read decides
    for i in range(3):
        bus.publish(stream, PromptMsg(f"x{i}", "q"))
    assert len(bus.read_batch(stream, "g", "c", count=12, block_ms=100, window_ms=0)) == 3


def _rule_bus(redis_server, run: str) -> RedisBus:
    bus = RedisBus(redis_server.url, run, claim_idle_ms=300, max_deliveries=3)
    bus.ensure_group(bus.names.prompts, "g")
    return bus


def test_leases_keep_live_work_on_redis(redis_server):
    """The contract the in-process bus is unit-tested against (tests/unit/test_bus_rules.py) holds on Redis."""
    from tests.unit.test_bus_rules import check_leases_keep_live_work

    bus = _rule_bus(redis_server, "leases")
    check_leases_keep_live_work(bus, bus.names.prompts, lambda s: time.sleep(s * 0.3))  # unit time 1 s -> 300 ms


def test_failed_entry_is_retried_then_dead_lettered_on_redis(redis_server):
    from tests.unit.test_bus_rules import check_failed_entry_is_retried_then_dead_lettered

    bus = _rule_bus(redis_server, "poison")
    check_failed_entry_is_retried_then_dead_lettered(bus, bus.names.prompts)


def test_consumer_groups_come_back_after_redis_lost_its_data(redis_server):
    """A Redis restarted without its data answers NOGROUP; the bus re-creates its groups and goes on."""
    bus = RedisBus(redis_server.url, "nogroup", retries=2)
    stream = bus.names.prompts
    bus.ensure_group(stream, "g")
    bus.client.flushall()  # what a restart without persistence leaves
    assert bus.read(stream, "g", "c", block_ms=10) == []  # NOGROUP before the fix: raised for ever
    bus.publish(stream, PromptMsg("after", "q"))
    (e,) = bus.read(stream, "g", "c", block_ms=100)
    assert bus.decode_or_dead_letter(e, "prompt", "g", "c").group_id == "after"
