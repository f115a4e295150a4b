"""Leases that fence (issue #32) on the in-process bus: a consumer whose lease lapsed stops working
on the entry and writes nothing for it.

The bus half (``renew_owned``, ``publish_and_ack``) runs against a real redis-server in
tests/integration/test_rollout_fencing.py, through two rollout replicas; here the decisions are
checked step by step with a hand-driven clock, and the rollout worker's reaction with an engine
stand-in that records what it was asked to abort.
"""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from autothink.bus.base import MIN_CLAIM_IDLE_MS, Leases
from autothink.bus.memory import MemoryBus
from autothink.bus.messages import PromptMsg, RolloutGroup, Sample, decode
from tests.fakes import Clock


def _bus() -> tuple[MemoryBus, Clock]:
    clock = Clock()
    bus = MemoryBus(claim_idle_ms=1000, clock=clock)
    bus.ensure_group(bus.names.prompts, "g")
    return bus, clock


def _group(msg: PromptMsg, worker: str) -> RolloutGroup:
    return RolloutGroup(msg, 0, [Sample("t", [1, 2], [-0.5, -0.25])], [5], worker)  # float32-exact log-probs


def check_lost_lease_is_reported_once_and_not_written(bus, stream: str, advance) -> None:  # noqa: ANN001 - shared with the Redis test
    """The fencing contract of a bus: a renewal reports a lease another consumer took, once, and
    the atomic write refuses the old owner's result; ``advance(s)`` lets s units of idle time pass
    (claim_idle_ms is 1 unit)."""
    msgs = [PromptMsg("a", "q"), PromptMsg("b", "q")]
    for m in msgs:
        bus.publish(stream, m)
    a, b = bus.read(stream, "g", "old", count=2, block_ms=0)
    lost: list[tuple[str, list[str]]] = []
    leases = Leases(bus, "g", "old", on_lost=lambda s, ids: lost.append((s, ids)))
    leases.hold(stream, a.id, b.id)
    leases.renew_now()
    assert lost == [] and leases.held(stream) == {a.id, b.id}

    advance(0.6)
    assert bus.renew_owned(stream, "g", "old", [b.id]) == [b.id]  # b renewed, a left to lapse (a frozen owner)
    advance(0.6)
    (taken,) = bus.read(stream, "g", "new", count=10, block_ms=0)
    assert (taken.id, taken.deliveries) == (a.id, 2)

    leases.renew_now()
    assert lost == [(stream, [a.id])] and leases.lost == 1
    assert leases.held(stream) == {b.id}  # no longer renewed: a renewal never takes it back
    leases.renew_now()
    leases.renew_now()
    assert lost == [(stream, [a.id])]  # one report per loss, not one per renewal tick
    assert bus.renew_owned(stream, "g", "old", [a.id, b.id]) == [b.id]

    # the write checks ownership itself: a result whose lease lapsed is dropped, whoever noticed first
    out = bus.names.rollouts
    assert bus.publish_and_ack(out, _group(msgs[0], "old"), a, "g", "old") is None
    assert bus.length(out) == 0
    assert bus.publish_and_ack(out, _group(msgs[0], "new"), taken, "g", "new") is not None
    assert bus.publish_and_ack(out, _group(msgs[0], "new"), taken, "g", "new") is None  # acknowledged: once
    assert bus.publish_and_ack(out, _group(msgs[1], "old"), b, "g", "old") is not None
    written = [decode(f, "rollout") for _, f in _entries(bus, out)]
    assert [(g.group_id, g.worker) for g in written] == [("a", "new"), ("b", "old")]
    assert written[0].samples == _group(msgs[0], "new").samples  # the Lua write carries every field
    assert bus.pending(stream, "g") == 0


def _entries(bus, stream: str) -> list:  # noqa: ANN001
    return bus.entries(stream) if hasattr(bus, "entries") else bus.client.xrange(stream)


def test_a_lost_lease_is_reported_once_and_its_result_is_not_written(caplog):
    bus, clock = _bus()
    stream = bus.names.prompts
    check_lost_lease_is_reported_once_and_not_written(bus, stream, lambda s: setattr(clock, "t", clock.t + s))

    # without a handler the loss is one warning
    bus.publish(stream, PromptMsg("c", "q"))
    (c,) = bus.read(stream, "g", "old", block_ms=0)
    plain = Leases(bus, "g", "old")
    plain.hold(stream, c.id)
    clock.t += 2
    bus.read(stream, "g", "new", block_ms=0)
    with caplog.at_level(logging.WARNING, logger="autothink.bus.base"):
        for _ in range(3):
            plain.renew_now()
    assert [r.getMessage() for r in caplog.records].count(
        f"old lost the lease on 1 of 1 held entries of {stream} (another consumer owns them now): {c.id}") == 1


def test_an_entry_acknowledged_between_snapshot_and_check_is_not_a_loss():
    """The renewal thread snapshots the held set, then the owner writes and drops an entry: the
    renewal finds it gone from the pending list, but it was ours -- no loss."""
    bus, _ = _bus()
    stream = bus.names.prompts
    bus.publish(stream, PromptMsg("a", "q"))
    (a,) = bus.read(stream, "g", "me", block_ms=0)
    lost: list = []
    leases = Leases(bus, "g", "me", on_lost=lambda s, ids: lost.append(ids))
    leases.hold(stream, a.id)
    real = bus.renew_owned

    def write_in_between(*args):  # what the owner's thread does while the renewal is on its way
        bus.publish_and_ack(bus.names.rollouts, _group(PromptMsg("a", "q"), "me"), a, "g", "me")
        leases.drop(stream, a.id)
        return real(*args)

    bus.renew_owned = write_in_between  # type: ignore[method-assign]
    leases.renew_now()
    assert lost == [] and leases.lost == 0


def test_renewals_use_the_bus_s_lease_connection_and_record_their_gaps():
    bus, clock = _bus()
    stream = bus.names.prompts
    bus.publish(stream, PromptMsg("a", "q"))
    (a,) = bus.read(stream, "g", "me", block_ms=0)
    calls: list[str] = []

    class LeaseConnection:  # stands in for RedisBus.lease_bus(): a connection that only renews
        def renew_owned(self, *args):
            calls.append(args[3][0])
            return bus.renew_owned(*args)

    bus.lease_bus = lambda timeout_s: LeaseConnection()  # type: ignore[attr-defined]
    gaps: list[float] = []
    leases = Leases(bus, "g", "me", on_renewal=gaps.append)
    leases.hold(stream, a.id)
    leases.renew_now()
    leases.renew_now()
    assert calls == [a.id, a.id] and len(gaps) == 2 and leases.max_gap_s >= max(gaps) >= 0
    assert leases.since_renewed() >= 0


def test_claim_idle_ms_below_the_supported_minimum_is_refused_with_the_reason():
    from services.rollout.config import RolloutServiceConfig

    assert RolloutServiceConfig(redis={"claim_idle_ms": MIN_CLAIM_IDLE_MS}).redis.claim_idle_ms == MIN_CLAIM_IDLE_MS
    with pytest.raises(ValidationError) as e:
        RolloutServiceConfig(redis={"claim_idle_ms": MIN_CLAIM_IDLE_MS - 1})
    text = str(e.value)
    assert f"supports {MIN_CLAIM_IDLE_MS} ms at least" in text and "renewed every quarter" in text


# ---------------------------------------------------------------------------- the rollout worker


class FakeEngine:
    """vLLM's AsyncLLM as the worker uses it: ``generate`` streams until its request is released;
    a cancelled request is aborted (AsyncLLM aborts on CancelledError) and recorded."""

    errored = False

    def __init__(self) -> None:
        self.release: dict[str, asyncio.Event] = {}
        self.started: list[str] = []
        self.aborted: list[str] = []

    async def generate(self, prompt, params, request_id):  # noqa: ANN001
        entry_id = request_id.rsplit("-", 1)[0]
        self.started.append(entry_id)
        event = self.release.setdefault(entry_id, asyncio.Event())
        try:
            await event.wait()
        except asyncio.CancelledError:
            self.aborted.append(entry_id)
            raise
        ids = [7, 8, 9]
        out = SimpleNamespace(index=0, token_ids=ids, text="x", finish_reason="stop",
                              logprobs=[{t: SimpleNamespace(logprob=-0.5)} for t in ids])
        yield SimpleNamespace(outputs=[out])

    def shutdown(self) -> None:
        pass


def _worker(bus: MemoryBus, registry: CollectorRegistry):
    from services.rollout.config import RolloutServiceConfig
    from services.rollout.worker import RolloutWorker

    w = RolloutWorker(RolloutServiceConfig(consumer="rep1", redis={"claim_idle_ms": 1000}), registry, bus=bus)
    w.engine = FakeEngine()
    w.tokenizer = SimpleNamespace(encode=lambda text, add_special_tokens=False: [1] * len(text.split()))
    w.max_model_len = 256
    w._sampling_params = lambda m, room: SimpleNamespace(n=m.n)  # type: ignore[method-assign]
    return w


async def _until(cond, what: str, ticks: int = 200) -> None:
    for _ in range(ticks):
        if cond():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"never happened: {what}")


def test_the_rollout_worker_aborts_a_lost_prompt_and_writes_nothing_for_it():
    """(c) of issue #32: the fencing decision of one replica, on the in-process bus.

    Three prompts in flight.  ``a``'s lease lapses and another replica takes it: the next renewal
    aborts its request in the engine.  ``b``'s lease lapses and is taken too, but its generation
    ends before any renewal runs (a process woken from SIGSTOP): the atomic write refuses it.
    ``c`` is written.  Each loss is counted once; only the new owner's groups of a and b exist."""
    bus, clock = _bus()
    bus.ensure_group(bus.names.prompts, "rollout")
    stream, out = bus.names.prompts, bus.names.rollouts
    registry = CollectorRegistry()
    w = _worker(bus, registry)
    msgs = {k: PromptMsg(k, "q", prompt=f"what is {k}", n=1) for k in "abc"}
    for m in msgs.values():
        bus.publish(stream, m)

    async def scenario() -> None:
        w._loop, w._wake = asyncio.get_running_loop(), asyncio.Event()
        await w._step()  # reads a, b, c: held by the reading thread, admitted to the engine
        engine = w.engine
        await _until(lambda: len(engine.started) == 3, "three requests started")
        ids = {j.msg.group_id: e for e, j in w._jobs.items()}
        assert w.leases.held(stream) == set(ids.values())

        clock.t += 0.6
        bus.renew_owned(stream, "rollout", "rep1", [ids["c"]])  # rep1 froze: only c was renewed in time
        clock.t += 0.6
        taken = {e.id: e for e in bus.read(stream, "rollout", "rep2", count=10, block_ms=0)}
        assert set(taken) == {ids["a"], ids["b"]}

        # b finishes first, before rep1's renewal thread runs: the write itself finds the loss
        engine.release[ids["b"]].set()
        await _until(lambda: ids["b"] not in w._jobs, "b settled")
        assert bus.length(out) == 0 and w.leases_lost == 1

        # then the renewal: a is aborted in the engine at once, nothing is written for it
        w.leases.renew_now()  # what the lease thread does every quarter of claim_idle_ms
        await _until(lambda: ids["a"] in engine.aborted, "a aborted in the engine")
        await _until(lambda: ids["a"] not in w._generating, "a's task done")
        assert w.leases_lost == 2 and ids["a"] not in w._jobs and w._requeue == []  # not regenerated
        assert w.leases.held(stream) == {ids["c"]}

        engine.release[ids["c"]].set()
        await _until(lambda: bus.length(out) == 1, "c written")
        w._fence([ids["c"]])  # a loss reported for a prompt just written and acknowledged by us is none
        assert w.leases_lost == 2

        for e in taken.values():  # the new owner writes a and b
            m = msgs["a" if e.id == ids["a"] else "b"]
            assert bus.publish_and_ack(out, _group(m, "rep2"), e, "rollout", "rep2") is not None

    try:
        asyncio.run(scenario())
    finally:
        w.close()
    written = sorted((g.group_id, g.worker) for g in (decode(f, "rollout") for _, f in bus.entries(out)))
    assert written == [("a", "rep2"), ("b", "rep2"), ("c", "rep1")]  # each prompt exactly once
    assert registry.get_sample_value("autothink_rollout_leases_lost_total") == 2
    assert registry.get_sample_value("autothink_rollout_groups_total") == 1
    assert bus.pending(stream, "rollout") == 0


def test_the_lease_keeper_sees_a_stopped_parent():
    """The keeper renews only while its replica runs: a SIGSTOPped one must lose its leases."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from services.rollout.lease_keeper import _parent_stopped

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert not _parent_stopped(child.pid)
        os.kill(child.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while not _parent_stopped(child.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _parent_stopped(child.pid)
        os.kill(child.pid, signal.SIGCONT)
        deadline = time.monotonic() + 10
        while _parent_stopped(child.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not _parent_stopped(child.pid)
    finally:
        child.kill()
        child.wait()
