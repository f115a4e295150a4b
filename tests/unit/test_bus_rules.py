"""The bus rules (autothink/bus/base.py) on the in-process bus: leases, delivery counts, one entry fails alone.

The same contract runs against a real redis-server in tests/integration/test_bus.py.
"""

from __future__ import annotations

import json

from autothink.bus.base import Leases, settle_failure
from autothink.bus.memory import MemoryBus
from autothink.bus.messages import PromptMsg, encode
from tests.fakes import Clock


def _bus(**kw) -> tuple[MemoryBus, Clock, str]:
    clock = Clock()
    bus = MemoryBus(claim_idle_ms=1000, max_deliveries=3, clock=clock, **kw)
    bus.ensure_group(bus.names.prompts, "g")
    return bus, clock, bus.names.prompts


def check_leases_keep_live_work(bus, stream: str, advance) -> None:  # noqa: ANN001 - shared with the Redis test
    """A renewed entry is never taken over; an abandoned one is, with its delivery counted."""
    bus.publish(stream, PromptMsg("a", "q"))
    bus.publish(stream, PromptMsg("b", "q"))
    held = bus.read(stream, "g", "alive", count=2, block_ms=0)
    assert [e.deliveries for e in held] == [1, 1]
    advance(0.6)
    assert bus.renew(stream, "g", "alive", [held[0].id]) == 1  # "alive" keeps a, abandons b
    advance(0.6)  # b idle 1.2 s, a 0.6 s
    taken = bus.read(stream, "g", "other", count=10, block_ms=0)
    assert [(e.id, e.deliveries) for e in taken] == [(held[1].id, 2)]
    assert bus.renew(stream, "g", "alive", [held[0].id, held[1].id]) == 1  # b is not ours any more: not stolen back


def check_failed_entry_is_retried_then_dead_lettered(bus, stream: str) -> None:  # noqa: ANN001
    bus.publish(stream, PromptMsg("poison", "q"))
    bus.publish(stream, PromptMsg("good", "q"))
    dead_before = bus.length(bus.names.dead)
    seen = []
    for _ in range(10):
        for e in bus.read(stream, "g", "c", count=10, block_ms=0):
            if bus.decode_or_dead_letter(e, "prompt", "g", "c").group_id == "good":
                bus.ack(stream, "g", e.id)
                seen.append("good")
            else:
                seen.append(e.deliveries)
                settle_failure(bus, e, "g", "c", RuntimeError("boom"))
    assert seen[:2] == [1, "good"]  # the good entry is not held up by the failing one
    assert [s for s in seen if s != "good"] == [1, 2, 3]  # three deliveries, then the dead-letter stream
    assert bus.length(bus.names.dead) == dead_before + 1
    assert bus.pending(stream, "g") == 0


def test_leases_keep_live_work():
    bus, clock, stream = _bus()
    check_leases_keep_live_work(bus, stream, lambda s: setattr(clock, "t", clock.t + s))


def test_failed_entry_is_retried_then_dead_lettered():
    bus, _, stream = _bus()
    check_failed_entry_is_retried_then_dead_lettered(bus, stream)


def test_an_entry_whose_owners_keep_dying_is_dead_lettered_on_take_over():
    bus, clock, stream = _bus()
    bus.publish(stream, PromptMsg("crashes-its-consumer", "q"))
    for n in range(3):
        got = bus.read(stream, "g", f"c{n}", block_ms=0)
        assert [e.deliveries for e in got] == [n + 1]
        clock.t += 2  # the consumer died: nobody renews
    assert bus.read(stream, "g", "c9", block_ms=0) == []
    ((_, fields),) = bus.entries(bus.names.dead)
    assert "delivered 4 times" in fields["dead_reason"]


def test_undecodable_entries_are_dead_lettered_at_once_whatever_the_exception():
    bus, _, stream = _bus()
    good = encode(PromptMsg("ok", "q"))
    meta = json.loads(good["meta"])
    bad_version = dict(good, meta=json.dumps({**meta, "min_policy_version": float("inf")}))
    deep = dict(good, meta="[" * 100_000 + "]" * 100_000)
    for fields in (bad_version, deep, {"nothing": "here"}):
        bus.add(stream, fields)
    bus.add(stream, good)
    decoded = [bus.decode_or_dead_letter(e, "prompt", "g", "c") for e in bus.read(stream, "g", "c", block_ms=0)]
    assert [m.group_id if m else None for m in decoded] == [None, None, None, "ok"]
    assert bus.length(bus.names.dead) == 3


def test_lease_keeper_renews_on_its_own_thread():
    bus = MemoryBus(claim_idle_ms=200)
    stream = bus.names.prompts
    bus.ensure_group(stream, "g")
    bus.publish(stream, PromptMsg("a", "q"))
    (e,) = bus.read(stream, "g", "owner", block_ms=0)
    leases = Leases(bus, "g", "owner").start()  # every 50 ms
    leases.hold(stream, e.id)
    try:
        import time

        time.sleep(0.5)
        assert bus.read(stream, "g", "thief", block_ms=0) == []
        assert leases.renewals >= 3
        leases.drop(stream, e.id)
        time.sleep(0.3)
        assert [x.id for x in bus.read(stream, "g", "thief", block_ms=0)] == [e.id]
    finally:
        leases.stop()


def test_the_red_team_inputs_are_dead_lettered_not_retried():
    """Issue 19, item 7: each of these failed the whole batch on every retry before."""
    from autothink.bus.messages import RolloutGroup, Sample

    bus, _, stream = _bus()
    prompt = json.loads(encode(PromptMsg("ok", "q"))["meta"])
    group = encode(RolloutGroup(PromptMsg("g", "q"), 0, [Sample("t", [1], [-0.1])]))
    meta = json.loads(group["meta"])
    bad = {
        "negative temperature": {"type": "prompt", "v": "1", "meta": json.dumps({**prompt, "temperature": -1})},
        "policy_version Infinity": dict(group, meta=json.dumps({**meta, "policy_version": float("inf")})),
        "texts [null]": dict(group, meta=json.dumps({**meta, "texts": [None]})),
        "deeply nested meta": dict(group, meta=json.dumps({**meta, "prompt": {**meta["prompt"], "metadata": {}}})[:-1]
                                   + ', "x": ' + "[" * 50_000 + "]" * 50_000 + "}"),
    }
    for fields in bad.values():
        bus.add(stream, fields)
    kinds = ["prompt", "rollout", "rollout", "rollout"]
    entries = bus.read(stream, "g", "c", block_ms=0)
    assert [bus.decode_or_dead_letter(e, k, "g", "c") for e, k in zip(entries, kinds)] == [None] * 4
    assert bus.length(bus.names.dead) == 4 and bus.pending(stream, "g") == 0
