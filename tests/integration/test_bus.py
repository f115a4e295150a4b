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
