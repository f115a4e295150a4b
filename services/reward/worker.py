"""The reward worker: rollout groups in, scored groups out, acknowledged only after writing.

Stateless: any number of replicas share the work through one consumer group, and a replica
that dies leaves its entries pending for the others to reclaim.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from autothink.bus.messages import RolloutGroup, ScoredGroup
from autothink.bus.streams import BusAuthError, RedisBus
from autothink.grading.pool import GraderPool
from autothink.scoring import score_group
from services.reward.config import RewardServiceConfig

log = logging.getLogger("autothink.reward")
GROUP = "reward"


class RewardMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.grades = Counter("autothink_reward_grades_total", "Samples graded, by grader status", ["status"], registry=registry)
        self.grade_latency = Histogram(
            "autothink_reward_grade_seconds", "Time to grade one sample", registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.groups = Counter("autothink_reward_groups_total", "Rollout groups scored", registry=registry)
        self.dead = Counter("autothink_reward_dead_letters_total", "Malformed entries sent to the dead-letter stream", registry=registry)
        self.reclaimed = Counter("autothink_reward_reclaimed_total", "Entries taken over from a dead consumer", registry=registry)
        self.lag = Gauge("autothink_reward_pending_entries", "Rollout entries read but not yet acknowledged", registry=registry)


class RewardWorker:
    def __init__(self, cfg: RewardServiceConfig, registry: CollectorRegistry | None = None, bus: RedisBus | None = None):
        self.cfg = cfg
        self.consumer = cfg.consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.bus = bus or RedisBus(cfg.redis.url, cfg.run_id, cfg.redis.max_stream_len, cfg.redis.claim_idle_ms)
        self.pool = GraderPool(workers=cfg.grader_workers, timeout_s=cfg.grade_timeout_s)
        self.metrics = RewardMetrics(registry or CollectorRegistry())
        self.stop = threading.Event()
        self.ready = threading.Event()

    def grade(self, answer_text: str, truth: Any):
        t0 = time.perf_counter()
        result = self.pool.grade(answer_text, truth)
        self.metrics.grade_latency.observe(time.perf_counter() - t0)
        self.metrics.grades.labels(result.status).inc()
        return result

    def score(self, group: RolloutGroup) -> ScoredGroup:
        texts = [s.text[: self.cfg.max_response_chars + 1] for s in group.samples]
        scores = score_group(
            texts, [len(s.token_ids) for s in group.samples], group.prompt.strategy, group.prompt.answer, self.grade, self.cfg.rewards
        )
        return ScoredGroup(group.prompt, group.policy_version, group.samples, scores, group.prompt_token_ids, group.worker, self.consumer)

    def step(self, count: int = 8, block_ms: int = 500) -> int:
        """Read, score, write and acknowledge one batch of entries; returns how many were handled."""
        names = self.bus.names
        entries = self.bus.read(names.rollouts, GROUP, self.consumer, count=count, block_ms=block_ms)
        for entry in entries:
            group = self.bus.decode_or_dead_letter(entry, "rollout", GROUP, self.consumer)
            if group is None:
                self.metrics.dead.inc()
                continue
            scored = self.score(group)
            self.bus.publish(names.scored, scored)  # write first ...
            self.bus.ack(names.rollouts, GROUP, entry.id)  # ... then acknowledge
            self.metrics.groups.inc()
            log.info(
                "scored group %s (policy v%d): rewards %s",
                group.group_id, group.policy_version, [round(s.reward, 2) for s in scored.scores],
            )
        return len(entries)

    def run(self) -> None:
        self.bus.ensure_group(self.bus.names.rollouts, GROUP)
        self.ready.set()
        log.info("reward worker %s consuming %s", self.consumer, self.bus.names.rollouts)
        while not self.stop.is_set():
            try:
                self.step()
                self.metrics.lag.set(self.bus.pending(self.bus.names.rollouts, GROUP))
            except BusAuthError:
                raise  # a wrong password is not a passing failure
            except Exception:  # keep serving; the entry stays pending and is retried
                log.exception("reward step failed; retrying")
                time.sleep(1.0)

    def close(self) -> None:
        self.stop.set()
        self.pool.close()
