"""The reward worker: rollout groups in, scored groups out, acknowledged only after writing.

Stateless: any number of replicas share the work through one consumer group, and a replica
that dies leaves its entries pending for the others to reclaim.

Failures are sorted by what a retry could change.  An entry that does not decode, or whose
scored group cannot be built or encoded (a value the codec refuses, nesting that overflows the
stack), fails the same way on every delivery: it goes to the dead-letter stream at once, not
after ``max_deliveries`` rounds.  Only a failure outside the entry (Redis, a closing grader pool)
releases it for a retry.  Dead-letter copies keep each field up to 64 KiB, with the full size and
a SHA-256 of what was cut: a 17 MB entry is not copied whole a second time, and the original stays
in the rollouts stream under its id.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from autothink.bus.messages import MessageError, RolloutGroup, ScoredGroup, decode, encode
from autothink.bus.base import BusAuthError, Entry, Leases, settle_failure
from autothink.bus.streams import RedisBus
from autothink.grading.pool import GraderPool
from autothink.scoring import answers_to_grade, score_group
from services.reward.config import RewardServiceConfig

log = logging.getLogger("autothink.reward")
GROUP = "reward"
UNHEALTHY_AFTER_FAILURES = 3
DEAD_FIELD_BYTES = 64 << 10
#: What building or encoding one entry's scored group raises when the entry itself is at fault:
#: deterministic, so retrying cannot help.  (RecursionError is a RuntimeError, listed first; a
#: closed grader pool's RuntimeError is not the entry's fault and is retried.)
ENTRY_FAULTS = (MessageError, RecursionError, ValueError, TypeError, KeyError, IndexError, OverflowError)


class RewardMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.grades = Counter("autothink_reward_grades_total", "Samples graded, by grader status", ["status"], registry=registry)
        self.grade_latency = Histogram(
            "autothink_reward_grade_seconds", "Time to grade one sample", registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.groups = Counter("autothink_reward_groups_total", "Rollout groups scored", registry=registry)
        self.dead = Counter("autothink_reward_dead_letters_total", "Entries sent to the dead-letter stream (malformed, or failed max_deliveries times)", registry=registry)
        self.reclaimed = Counter("autothink_reward_reclaimed_total", "Entries taken over from a dead consumer", registry=registry)
        self.lag = Gauge("autothink_reward_pending_entries", "Rollout entries read but not yet acknowledged", registry=registry)


class RewardWorker:
    def __init__(self, cfg: RewardServiceConfig, registry: CollectorRegistry | None = None, bus: RedisBus | None = None):
        self.cfg = cfg
        self.consumer = cfg.consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.bus = bus or RedisBus(cfg.redis.url, cfg.run_id, cfg.redis.max_stream_len, cfg.redis.claim_idle_ms,
                                   max_deliveries=cfg.redis.max_deliveries)
        self.leases = Leases(self.bus, GROUP, self.consumer)
        self.pool = GraderPool(workers=cfg.grader_workers, timeout_s=cfg.grade_timeout_s)
        # POST /grade has processes of its own: a flood of ad-hoc calls queues there (bounded, see
        # services.reward.app), never in front of the training stream's graders
        self.adhoc_pool = GraderPool(workers=cfg.adhoc_grader_workers, timeout_s=cfg.grade_timeout_s)
        self._graders = ThreadPoolExecutor(max_workers=cfg.grader_workers, thread_name_prefix="grade")
        self.metrics = RewardMetrics(registry or CollectorRegistry())
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.failures = 0  # loop iterations failed in a row

    def grade(self, answer_text: str, truth: Any):
        t0 = time.perf_counter()
        result = self.pool.grade(answer_text, truth)
        self.metrics.grade_latency.observe(time.perf_counter() - t0)
        self.metrics.grades.labels(result.status).inc()
        return result

    def score(self, group: RolloutGroup) -> ScoredGroup:
        """Score one group: its distinct answers are graded once each, side by side on the
        training pool's workers, and every sample with that answer shares the verdict."""
        texts = [s.text for s in group.samples]
        truth, limit = group.prompt.answer, self.cfg.max_response_chars
        distinct = answers_to_grade(texts, group.prompt.strategy, truth, limit)
        if len(distinct) > 1:
            verdicts = dict(zip(distinct, self._graders.map(lambda a: self.grade(a, truth), distinct)))
        else:
            verdicts = {a: self.grade(a, truth) for a in distinct}
        scores = score_group(
            texts, [len(s.token_ids) for s in group.samples], group.prompt.strategy, truth,
            lambda answer, _truth: verdicts[answer], self.cfg.rewards, limit,
        )
        return ScoredGroup(group.prompt, group.policy_version, group.samples, scores, group.prompt_token_ids, group.worker, self.consumer)

    def step(self, count: int = 8, block_ms: int = 500) -> int:
        """Read, score, write and acknowledge one batch of entries; returns how many were read.

        Each entry is handled alone: one that cannot be decoded or scored is retried or
        dead-lettered (:func:`autothink.bus.base.settle_failure`) while the others go on."""
        names = self.bus.names
        entries = self.bus.read(names.rollouts, GROUP, self.consumer, count=count, block_ms=block_ms)
        self.leases.hold(names.rollouts, *(e.id for e in entries))  # grading a batch can outlast claim_idle_ms
        try:
            for entry in entries:
                if entry.deliveries > 1:
                    self.metrics.reclaimed.inc()
                self.handle(entry)
        finally:
            self.leases.drop(names.rollouts, *(e.id for e in entries))
        return len(entries)

    def handle(self, entry: Entry) -> None:
        names = self.bus.names
        try:
            group = decode(entry.fields, "rollout")
        except Exception as e:  # noqa: BLE001 - whatever the bytes did to the decoder, it is this entry's fault
            self.dead_letter(entry, str(e) if isinstance(e, MessageError) else f"{type(e).__name__}: {e}")
            return
        try:
            scored = self.score(group)
            encode(scored)  # refused here, not inside publish: the same entry would be refused every time
        except ENTRY_FAULTS as e:
            if not self.stop.is_set():  # a pool closed under us at shutdown raises too: not the entry's fault
                self.dead_letter(entry, f"cannot score or encode this group: {type(e).__name__}: {e}")
                return
            settle_failure(self.bus, entry, GROUP, self.consumer, e)
            return
        except BusAuthError:
            raise
        except Exception as e:  # noqa: BLE001 - this entry's failure, not the service's
            if settle_failure(self.bus, entry, GROUP, self.consumer, e):
                self.metrics.dead.inc()
            return
        try:
            self.bus.publish(names.scored, scored)  # write first ...
        except BusAuthError:
            raise
        except Exception as e:  # noqa: BLE001 - Redis: retried on the next delivery
            if settle_failure(self.bus, entry, GROUP, self.consumer, e):
                self.metrics.dead.inc()
            return
        self.bus.ack(names.rollouts, GROUP, entry.id)  # ... then acknowledge
        self.metrics.groups.inc()
        log.info(
            "scored group %s (policy v%d): rewards %s",
            group.group_id, group.policy_version, [round(s.reward, 2) for s in scored.scores],
        )

    def dead_letter(self, entry: Entry, reason: str) -> None:
        """Move ``entry`` to the dead-letter stream at once, with ``reason``, fields cut to
        :data:`DEAD_FIELD_BYTES` (size and SHA-256 of each cut field kept), and acknowledge it."""
        reason = reason[:2000]
        log.warning("dead-lettering %s %s: %s", entry.stream, entry.id, reason)
        self.bus.dead_letter(trimmed(entry), reason, self.consumer)
        self.bus.ack(entry.stream, GROUP, entry.id)
        self.metrics.dead.inc()

    def run(self) -> None:
        self.bus.ensure_group(self.bus.names.rollouts, GROUP)
        self.leases.start()
        self.ready.set()
        log.info("reward worker %s consuming %s", self.consumer, self.bus.names.rollouts)
        while not self.stop.is_set():
            try:
                self.step()
                self.metrics.lag.set(self.bus.pending(self.bus.names.rollouts, GROUP))
                self.failures = 0
            except BusAuthError:
                raise  # a wrong password is not a passing failure
            except Exception:  # keep trying; the entries stay pending.  /health turns 503 after a few in a row
                self.failures += 1
                log.exception("reward step failed (%d in a row); retrying", self.failures)
                time.sleep(1.0)

    @property
    def healthy(self) -> bool:
        """Ready, and the loop is not failing over and over (then a supervisor should restart us)."""
        return self.ready.is_set() and self.failures < UNHEALTHY_AFTER_FAILURES

    def close(self) -> None:
        self.stop.set()
        self.leases.stop()
        self._graders.shutdown(wait=False)
        self.pool.close()
        self.adhoc_pool.close()


def trimmed(entry: Entry, limit: int = DEAD_FIELD_BYTES) -> Entry:
    """``entry`` with every field longer than ``limit`` bytes cut to its first ``limit`` bytes,
    and ``dead_<field>_bytes`` / ``dead_<field>_sha256`` saying what the whole field was."""
    fields: dict[Any, Any] = {}
    for key, value in entry.fields.items():
        raw = value if isinstance(value, bytes) else str(value).encode(errors="replace")
        if len(raw) <= limit:
            fields[key] = value
            continue
        name = key.decode(errors="replace") if isinstance(key, bytes) else str(key)
        fields[key] = raw[:limit]
        fields[f"dead_{name}_bytes"] = str(len(raw))
        fields[f"dead_{name}_sha256"] = hashlib.sha256(raw).hexdigest()
    return Entry(entry.stream, entry.id, fields, entry.deliveries)
