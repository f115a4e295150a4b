"""The rollout worker: prompts in, groups of samples with token ids and log-probs out.

Reads prompt messages through the consumer group ``rollout``, batches them into one vLLM call,
writes one rollout group per prompt (tagged with the policy version that produced it) and only
then acknowledges.  New weights from the learner's weight service are swapped in *between*
generation calls, so a group is never produced by two versions.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from autothink.bus.messages import PromptMsg, RolloutGroup, Sample
from autothink.bus.streams import BusAuthError, RedisBus
from autothink.prompting import build_prompt
from services.rollout.config import RolloutServiceConfig

log = logging.getLogger("autothink.rollout")
GROUP = "rollout"


class RolloutMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.tokens = Counter("autothink_rollout_generated_tokens_total", "Tokens generated", registry=registry)
        self.groups = Counter("autothink_rollout_groups_total", "Rollout groups written", registry=registry)
        self.tokens_per_s = Gauge("autothink_rollout_tokens_per_second", "Throughput of the last generate call", registry=registry)
        self.version = Gauge("autothink_rollout_policy_version", "Policy version being sampled", registry=registry)
        self.sync = Histogram("autothink_rollout_weight_sync_seconds", "Time to swap a new version into the engine", registry=registry)
        self.lag = Gauge("autothink_rollout_queue_lag", "Prompt entries not yet delivered to the rollout group", registry=registry)
        self.dead = Counter("autothink_rollout_dead_letters_total", "Malformed prompt entries", registry=registry)


class RolloutWorker:
    def __init__(self, cfg: RolloutServiceConfig, registry: CollectorRegistry | None = None):
        self.cfg = cfg
        self.consumer = cfg.consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.bus = RedisBus(cfg.redis.url, cfg.run_id, cfg.redis.max_stream_len, cfg.redis.claim_idle_ms,
                   max_deliveries=cfg.redis.max_deliveries)
        self.metrics = RolloutMetrics(registry or CollectorRegistry())
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.llm: Any = None
        self.tokenizer: Any = None
        self.policy_version = 0
        self._pending_weights: tuple[int, str] | None = None
        self._lock = threading.Lock()
        self._follower: Any = None
        self._tmp = Path(tempfile.mkdtemp(prefix="autothink-weights-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))

    # -- engine and weights
    def start_engine(self) -> None:
        from vllm import LLM

        from autothink.engine import engine_kwargs

        self.llm = LLM(**engine_kwargs(self.cfg.model, self.cfg.max_model_len, self.cfg.enforce_eager, self.cfg.gpu_memory_utilization))
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len  # the engine resolves a None setting
        if self.cfg.weights.address and self.cfg.follow_weights:
            from autothink.weights import WeightClient, WeightFollower

            client = WeightClient(self.cfg.weights.address, self.cfg.weights.token)
            self._follower = WeightFollower(client, self._stage_weights, current_version=self.policy_version).start()
        self.metrics.version.set(self.policy_version)
        self.ready.set()
        log.info("engine ready on %s (policy version %d)", self.cfg.model, self.policy_version)

    def _stage_weights(self, version: int, tensors: dict[str, Any]) -> None:
        """Called by the follower thread: park the new version until the engine is between calls."""
        from safetensors.torch import save_file

        path = self._tmp / f"v{version}.safetensors"
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
        with self._lock:
            old, self._pending_weights = self._pending_weights, (version, str(path))
        if old is not None:
            Path(old[1]).unlink(missing_ok=True)
        log.info("policy version %d received; applying before the next generate call", version)

    def swap_weights_if_new(self) -> None:
        with self._lock:
            pending, self._pending_weights = self._pending_weights, None
        if pending is None:
            return
        version, path = pending
        t0 = time.perf_counter()
        self.llm.collective_rpc("load_weights_from_file", args=(path,))
        self.llm.reset_prefix_cache()  # cached KV blocks were computed by the old weights
        Path(path).unlink(missing_ok=True)
        self.policy_version = version
        dt = time.perf_counter() - t0
        self.metrics.sync.observe(dt)
        self.metrics.version.set(version)
        log.info("now sampling policy version %d (swap took %.2f s)", version, dt)

    def wait_for_version(self, version: int, timeout_s: float = 600.0) -> None:
        """Bounded staleness: do not sample a prompt with a policy older than it asks for."""
        deadline = time.monotonic() + timeout_s
        while self.policy_version < version and not self.stop.is_set():
            self.swap_weights_if_new()
            if self.policy_version >= version:
                return
            if time.monotonic() > deadline:
                log.warning("policy version %d not received in %.0f s; sampling with %d", version, timeout_s, self.policy_version)
                return
            time.sleep(0.05)

    # -- the loop
    def _prompt_text(self, m: PromptMsg) -> str:
        return m.prompt or build_prompt(m.problem, m.strategy, self.tokenizer)  # type: ignore[arg-type]

    def generate(self, msgs: list[PromptMsg]) -> list[RolloutGroup]:
        from vllm import SamplingParams

        params = [
            SamplingParams(
                n=m.n, temperature=m.temperature, top_p=m.top_p,
                max_tokens=max(1, min(m.max_tokens, self.max_model_len - 1)), logprobs=0,
            )
            for m in msgs
        ]
        t0 = time.perf_counter()
        outs = self.llm.generate([self._prompt_text(m) for m in msgs], params, use_tqdm=False)
        groups, n_tokens = [], 0
        for m, out in zip(msgs, outs):
            samples = []
            for c in out.outputs:
                ids = list(c.token_ids)
                lps = [float(step[t].logprob) for step, t in zip(c.logprobs or [], ids)] if c.logprobs else []
                samples.append(Sample(c.text, ids, lps, c.finish_reason or "stop"))
                n_tokens += len(ids)
            groups.append(RolloutGroup(m, self.policy_version, samples, list(out.prompt_token_ids or []), self.consumer))
        dt = time.perf_counter() - t0
        self.metrics.tokens.inc(n_tokens)
        self.metrics.tokens_per_s.set(n_tokens / dt if dt > 0 else 0.0)
        return groups

    def step(self, block_ms: int = 500) -> int:
        self.swap_weights_if_new()
        names = self.bus.names
        entries = self.bus.read_batch(names.prompts, GROUP, self.consumer, self.cfg.prompts_per_generate, block_ms, self.cfg.batch_window_ms)
        batch = []
        for entry in entries:
            msg = self.bus.decode_or_dead_letter(entry, "prompt", GROUP, self.consumer)
            if msg is None:
                self.metrics.dead.inc()
            else:
                batch.append((entry, msg))
        if not batch:
            return len(entries)
        self.wait_for_version(max(m.min_policy_version for _, m in batch))
        groups = self.generate([m for _, m in batch])
        for (entry, _), group in zip(batch, groups):
            self.bus.publish(names.rollouts, group)  # write first ...
            self.bus.ack(names.prompts, GROUP, entry.id)  # ... then acknowledge
            self.metrics.groups.inc()
        log.info("wrote %d groups (policy version %d)", len(groups), self.policy_version)
        return len(entries)

    def queue_lag(self) -> int:
        try:
            return self.bus.backlog(self.bus.names.prompts, GROUP)
        except Exception:  # metrics must not stop the loop
            return 0

    def run(self) -> None:
        self.bus.ensure_group(self.bus.names.prompts, GROUP)
        self.start_engine()
        while not self.stop.is_set():
            try:
                self.step()
                self.metrics.lag.set(self.queue_lag())
            except BusAuthError:
                raise  # a wrong password is not a passing failure
            except Exception:
                log.exception("rollout step failed; the entries stay pending and will be retried")
                time.sleep(1.0)

    def close(self) -> None:
        self.stop.set()
        if self._follower is not None:
            self._follower.stop()
        for p in self._tmp.glob("*"):
            p.unlink(missing_ok=True)
        self._tmp.rmdir()
