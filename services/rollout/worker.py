"""The rollout worker: prompts in, groups of samples with token ids and log-probs out, continuously.

At the paper's lengths a group is 8 samples of up to 16-24k tokens and AutoThink's answers are
bimodal (no-think: hundreds of tokens; think: thousands).  One synchronous ``generate`` over a
batch would make every short group wait for the longest answer in the batch and leave the engine
under-filled while the tail finishes.  So, as the current async RL systems do (AReaL, PipelineRL,
prime-rl's orchestrator), the worker runs vLLM's async engine and keeps up to
``max_inflight_prompts`` prompts in flight as independent requests: each group is written to the
rollouts stream (then acknowledged) the moment its last sample ends, and the freed slot admits
the next prompt at once.

* **Leases that fence.**  An entry is held from the moment it is read: the reading thread adds it
  to the lease set, and a process that does nothing else (:mod:`services.rollout.lease_keeper`)
  renews the set every quarter of ``claim_idle_ms`` on a Redis connection of its own, so neither
  tokenising and submitting a large batch nor any other Python work here (this process's GIL) can
  make a renewal late.
  Another replica takes an entry over only if this one stops renewing (dies, freezes, starves).
  If that happens while this replica still works on it, the renewal reports the loss and the
  prompt's request is aborted in the engine at once; and the group is written with
  ``publish_and_ack`` -- ownership check, XADD and XACK in one Lua step -- so a group whose lease
  lapsed after the last renewal (a process frozen with SIGSTOP, say) is dropped, never written.
  Two live replicas therefore never publish the same prompt twice, at any ``claim_idle_ms``;
  lost leases are counted (``autothink_rollout_leases_lost_total``) with one log line per loss.
  An entry that fails is retried or dead-lettered alone (:func:`autothink.bus.base.settle_failure`);
  a prompt that cannot fit the context is dead-lettered at once.
* **Weights at a safe point.**  A new version from the learner is applied between requests:
  ``drain`` stops admitting and lets the requests in flight finish first; ``abort`` aborts them
  and regenerates them with the new weights.  Either way a group is stamped with the one policy
  version that produced all its samples.
* **Bounded staleness.**  A prompt that asks for a newer policy than the engine holds waits
  (its lease kept) until that version has been applied; it is never sampled with older weights.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from autothink.bus.base import Bus, BusAuthError, Entry, Leases, settle_failure
from autothink.bus.messages import PromptMsg, RolloutGroup, Sample
from autothink.bus.streams import RedisBus
from autothink.prompting import build_prompt
from services.rollout.config import RolloutServiceConfig

log = logging.getLogger("autothink.rollout")
GROUP = "rollout"
UNHEALTHY_AFTER_FAILURES = 3


class RolloutMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.tokens = Counter("autothink_rollout_generated_tokens_total", "Tokens generated", registry=registry)
        self.groups = Counter("autothink_rollout_groups_total", "Rollout groups written", registry=registry)
        self.tokens_per_s = Gauge("autothink_rollout_tokens_per_second", "Generated tokens per second over the last 10 s", registry=registry)
        self.version = Gauge("autothink_rollout_policy_version", "Policy version being sampled", registry=registry)
        self.sync = Histogram("autothink_rollout_weight_sync_seconds", "Time to swap a new version into the engine", registry=registry)
        self.drain = Histogram("autothink_rollout_weight_drain_seconds", "Time from a version's arrival until the engine was free to take it", registry=registry)
        self.weight_errors = Counter("autothink_rollout_weight_errors_total", "Failed attempts to apply a policy version", registry=registry)
        self.lag = Gauge("autothink_rollout_queue_lag", "Prompt entries not yet finished by the rollout group", registry=registry)
        self.inflight = Gauge("autothink_rollout_inflight_prompts", "Prompts being generated now", registry=registry)
        self.waiting = Gauge("autothink_rollout_waiting_prompts", "Prompts held until a newer policy version arrives", registry=registry)
        self.dead = Counter("autothink_rollout_dead_letters_total", "Prompt entries sent to the dead-letter stream", registry=registry)
        self.requeued = Counter("autothink_rollout_requeued_total", "Requests aborted for a weight update and generated again", registry=registry)
        self.group_seconds = Histogram(
            "autothink_rollout_group_seconds", "From admission to the group being written", registry=registry,
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
        )
        self.leases_lost = Counter(
            "autothink_rollout_leases_lost_total",
            "Prompts another replica took over while this one worked on them (our lease had lapsed): aborted, nothing written",
            registry=registry)
        self.lease_interval = Gauge("autothink_rollout_lease_renew_interval_seconds", "How often held prompts are renewed",
                                    registry=registry)
        self.lease_gap = Histogram(
            "autothink_rollout_lease_renewal_gap_seconds", "Time between two successful lease renewals", registry=registry,
            buckets=(0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.8, 1.6, 5, 15, 60),
        )
        self.lease_since = Gauge("autothink_rollout_lease_since_renewal_seconds", "Time since the last successful lease renewal",
                                 registry=registry)
        self.lease_max_gap = Gauge("autothink_rollout_lease_max_gap_seconds",
                                   "Longest time between two successful lease renewals that ended with prompts held",
                                   registry=registry)
        self.leases_held = Gauge("autothink_rollout_leases_held", "Prompt entries this replica holds leases on", registry=registry)


@dataclass
class _Job:
    entry: Entry
    msg: PromptMsg
    admitted: float = 0.0
    fenced: bool = False  # our lease was lost: abort, write nothing
    publishing: bool = False  # generated; the atomic publish (which checks the lease itself) is under way


class PromptTooLong(ValueError):
    """The prompt alone fills the engine's context: no retry can help."""


class RolloutWorker:
    def __init__(self, cfg: RolloutServiceConfig, registry: CollectorRegistry | None = None, bus: Bus | None = None):
        self.cfg = cfg
        self.consumer = cfg.consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.bus: Any = bus or RedisBus(cfg.redis.url, cfg.run_id, cfg.redis.max_stream_len, cfg.redis.claim_idle_ms,
                                        max_deliveries=cfg.redis.max_deliveries)
        self.metrics = RolloutMetrics(registry or CollectorRegistry())
        self.leases: Any
        if isinstance(self.bus, RedisBus) and self.bus.url:
            from services.rollout.lease_keeper import KeeperLeases

            # renewed from a process of its own: no Python work in this one (GIL) can delay them
            self.leases = KeeperLeases(self.bus.url, GROUP, self.consumer, self.bus.claim_idle_ms,
                                       on_lost=self._lease_lost, on_renewal=self.metrics.lease_gap.observe,
                                       adopt=self.bus.names.prompts)
        else:  # the in-process bus of the unit tests: the same decisions, renewed by a thread
            self.leases = Leases(self.bus, GROUP, self.consumer, on_lost=self._lease_lost,
                                 on_renewal=self.metrics.lease_gap.observe)
        self.metrics.lease_interval.set(self.leases.interval_s)
        self.metrics.lease_since.set_function(self.leases.since_renewed)
        self.metrics.lease_max_gap.set_function(lambda: self.leases.max_gap_s)
        self.metrics.leases_held.set_function(self.leases.count)
        self.leases_lost = 0
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.engine: Any = None
        self.tokenizer: Any = None
        self.max_model_len = 0
        self.policy_version = 0
        self.failures = 0  # loop iterations failed in a row
        self.weight_failures = 0  # attempts to apply the pending version that failed in a row
        self.first_group_at: float | None = None
        self._pending_weights: tuple[int, str, float] | None = None  # version, file, arrival time
        self._lock = threading.Lock()
        self._follower: Any = None
        self._jobs: dict[str, _Job] = {}  # entry id -> every job from its read until it is written, failed or fenced
        self._generating: dict[str, asyncio.Task] = {}  # entry id -> its request's task
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: list[_Job] = []  # need a newer policy version
        self._requeue: list[_Job] = []  # aborted for a weight update
        self._wake: asyncio.Event | None = None
        self._tokens_window: list[tuple[float, int]] = []
        self._tmp = Path(tempfile.mkdtemp(prefix="autothink-weights-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))

    # ------------------------------------------------------------------ health
    @property
    def healthy(self) -> bool:
        """Ready, the engine alive, the loop not failing over and over, new weights not failing to apply."""
        engine_ok = self.engine is not None and not getattr(self.engine, "errored", False)
        follower_ok = self._follower is None or self._follower.healthy
        leases_ok = getattr(self.leases, "keeper_alive", True)  # without renewals every prompt would lapse
        return (self.ready.is_set() and engine_ok and follower_ok and leases_ok and self.failures < UNHEALTHY_AFTER_FAILURES
                and self.weight_failures < UNHEALTHY_AFTER_FAILURES)

    def health_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "consumer": self.consumer, "policy_version": self.policy_version, "model": self.cfg.model,
            "inflight": len(self._generating), "waiting_for_version": len(self._waiting),
            "engine": "dead" if self.engine is not None and getattr(self.engine, "errored", False) else ("ready" if self.engine else "starting"),
            "loop_failures": self.failures, "weight_failures": self.weight_failures,
            "leases": {"held": self.leases.count(), "lost": self.leases_lost,
                       "since_renewal_s": round(self.leases.since_renewed(), 3), "max_gap_s": round(self.leases.max_gap_s, 3)},
        }
        if self._follower is not None:
            info["weights"] = self._follower.status()
        return info

    # ------------------------------------------------------------------ engine and weights
    def _start_engine(self) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        from autothink.engine import engine_kwargs

        args = AsyncEngineArgs(**engine_kwargs(
            self.cfg.model, self.cfg.max_model_len, self.cfg.enforce_eager, self.cfg.gpu_memory_utilization,
            disable_log_stats=True,
            # the sampled tokens' log-probs as the sampler saw them (temperature applied): the behaviour
            # policy of the learner's importance-sampling correction (autothink/offpolicy.py)
            logprobs_mode="processed_logprobs",
        ))
        # built on the main thread: the engine process's parent-death signal follows this thread
        self.engine = AsyncLLM.from_engine_args(args)
        self.tokenizer = self.engine.get_tokenizer()
        self.max_model_len = self.engine.model_config.max_model_len
        if self.cfg.weights.address and self.cfg.follow_weights:
            from autothink.weights import WeightClient, WeightFollower

            client = WeightClient(self.cfg.weights.address, self.cfg.weights.token)
            self._follower = WeightFollower(client, self._stage_weights, current_version=self.policy_version).start()
        self.metrics.version.set(self.policy_version)
        log.info("engine ready on %s (policy version %d, context %d, up to %d prompts in flight, weight update: %s)",
                 self.cfg.model, self.policy_version, self.max_model_len, self.cfg.max_inflight_prompts, self.cfg.weight_update)

    def _stage_weights(self, version: int, tensors: dict[str, Any]) -> None:
        """Follower thread: park the new version in shared memory until the engine reaches a safe point.

        Raises on failure (a full /dev/shm, say): the follower counts it, says so in /health and
        tries the version again."""
        from safetensors.torch import save_file

        path = self._tmp / f"v{version}.safetensors"
        try:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        with self._lock:
            old, self._pending_weights = self._pending_weights, (version, str(path), time.monotonic())
        if old is not None:
            Path(old[1]).unlink(missing_ok=True)
        log.info("policy version %d received; applying at the next safe point (%s)", version, self.cfg.weight_update)

    async def _apply_pending_weights(self) -> None:
        """At a safe point: nothing is generating.  Load the parked version into the engine."""
        with self._lock:
            pending = self._pending_weights
        if pending is None:
            return
        version, path, arrived = pending
        t0 = time.perf_counter()
        try:
            await self.engine.collective_rpc("load_weights_from_file", args=(path,))
            await self.engine.reset_prefix_cache()  # cached KV blocks were computed by the old weights
        except Exception:
            self.weight_failures += 1
            self.metrics.weight_errors.inc()
            log.exception("applying policy version %d failed (%d in a row); trying again", version, self.weight_failures)
            await asyncio.sleep(1.0)
            return
        with self._lock:
            if self._pending_weights is pending:
                self._pending_weights = None
        Path(path).unlink(missing_ok=True)
        self.weight_failures = 0
        self.policy_version = version
        dt = time.perf_counter() - t0
        self.metrics.sync.observe(dt)
        self.metrics.drain.observe(max(0.0, time.monotonic() - arrived - dt))
        self.metrics.version.set(version)
        log.info("now sampling policy version %d (swap took %.2f s)", version, dt)

    # ------------------------------------------------------------------ one prompt
    def _prompt_ids(self, m: PromptMsg) -> list[int]:
        text = m.prompt or build_prompt(m.problem, m.strategy, self.tokenizer)  # type: ignore[arg-type]
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _sampling_params(self, m: PromptMsg, room: int) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(
            n=m.n, temperature=m.temperature, top_p=m.top_p, max_tokens=min(m.max_tokens, room), logprobs=0,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )

    async def _generate(self, job: _Job) -> RolloutGroup:
        m = job.msg
        prompt_ids = await asyncio.to_thread(self._prompt_ids, m)  # a long prompt must not stall the loop
        room = self.max_model_len - len(prompt_ids)
        if room < 1:
            raise PromptTooLong(f"the prompt has {len(prompt_ids)} tokens; the engine's context is {self.max_model_len}")
        params = self._sampling_params(m, room)
        version = self.policy_version  # nothing changes the weights while this request runs (safe points only)
        final = None
        async for out in self.engine.generate({"prompt_token_ids": prompt_ids}, params, f"{job.entry.id}-{uuid.uuid4().hex[:8]}"):
            final = out
        assert final is not None
        samples, n_tokens = [], 0
        for c in sorted(final.outputs, key=lambda c: c.index):
            ids = list(c.token_ids)
            lps = [float(step[t].logprob) for step, t in zip(c.logprobs or [], ids)] if c.logprobs else []
            samples.append(Sample(c.text, ids, lps, c.finish_reason or "stop"))
            n_tokens += len(ids)
        self._count_tokens(n_tokens)
        return RolloutGroup(m, version, samples, prompt_ids, self.consumer)

    async def _run_job(self, job: _Job) -> None:
        """Generate one group, then write it and acknowledge the prompt in one step, if the lease is
        still ours; a failure concerns this entry alone."""
        names = self.bus.names
        try:
            group = await self._generate(job)
        except asyncio.CancelledError:
            if self.stop.is_set():
                raise
            if job.fenced:
                return  # another replica owns the prompt now: the request is aborted, nothing is written
            self._requeue.append(job)  # aborted for a weight update: generate again with the new weights
            self.metrics.requeued.inc()
            return
        except Exception as e:  # noqa: BLE001
            if job.fenced:
                return
            if getattr(self.engine, "errored", False):
                log.error("the engine died while generating %s; the entry stays pending for another replica", job.entry.id)
                return
            if isinstance(e, PromptTooLong):
                job.entry.deliveries = self.bus.max_deliveries  # retrying cannot help
            self.leases.drop(names.prompts, job.entry.id)  # before a release, which a renewal would undo
            self._jobs.pop(job.entry.id, None)
            dead = await asyncio.to_thread(settle_failure, self.bus, job.entry, GROUP, self.consumer, e)
            self.metrics.dead.inc(int(dead))
            return
        finally:
            self._generating.pop(job.entry.id, None)
            if self._wake is not None:
                self._wake.set()
        if job.fenced:
            return
        job.publishing = True
        try:
            written = await asyncio.to_thread(self.bus.publish_and_ack, names.rollouts, group, job.entry, GROUP, self.consumer)
        except Exception:  # Redis gone for longer than the bus retries: the prompt stays pending, and is reclaimed
            log.exception("writing group %s failed; its prompt is left to lapse and be generated again", group.group_id)
            written = ""
        self.leases.drop(names.prompts, job.entry.id)
        self._jobs.pop(job.entry.id, None)
        if written is None:  # the lease lapsed after the last renewal: another replica owns the prompt
            self._count_lost([job], "found at the write")
            return
        if not written:
            return
        self.metrics.groups.inc()
        self.metrics.group_seconds.observe(time.monotonic() - job.admitted)
        if self.first_group_at is None:
            self.first_group_at = time.monotonic()
        log.info("wrote group %s (policy version %d, %d tokens)", group.group_id, group.policy_version,
                 sum(len(s.token_ids) for s in group.samples))

    # ------------------------------------------------------------------ fencing
    def _lease_lost(self, stream: str, ids: list[str]) -> None:
        """Lease thread: a renewal found these held prompts owned by another consumer.  The work on
        them stops on the event loop (the only thread that touches jobs)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._fence, ids)
        except RuntimeError:  # the loop closed meanwhile: shutting down
            pass

    def _fence(self, ids: list[str]) -> None:
        """Abort the prompts whose lease was lost: cancel their requests (the engine aborts them),
        forget the ones still waiting; write nothing for any of them."""
        fenced = []
        for i in ids:
            job = self._jobs.get(i)
            if job is None or job.fenced:
                continue  # written (and acknowledged by us) just before the renewal: not a loss
            if job.publishing:
                continue  # the atomic write checks the lease itself and counts a loss if it finds one
            job.fenced = True
            fenced.append(job)
            self._jobs.pop(i, None)
            self.leases.drop(self.bus.names.prompts, i)
            task = self._generating.get(i)
            if task is not None:
                task.cancel()  # AsyncLLM aborts a cancelled request in the engine
        if fenced:
            self._waiting = [j for j in self._waiting if not j.fenced]
            self._requeue = [j for j in self._requeue if not j.fenced]
            self._count_lost(fenced, "found by a renewal")
            if self._wake is not None:
                self._wake.set()

    def _count_lost(self, jobs: list[_Job], how: str) -> None:
        self.leases_lost += len(jobs)
        self.metrics.leases_lost.inc(len(jobs))
        names = [j.msg.group_id for j in jobs]
        log.warning("lost the lease on %d prompt(s) (%s; another replica owns them now, %.0f ms since our last renewal): "
                    "aborted, nothing written for %s", len(jobs), how, self.leases.since_renewed() * 1000,
                    " ".join(names[:8]) + (" ..." if len(names) > 8 else ""))

    def _count_tokens(self, n: int) -> None:
        now = time.monotonic()
        self.metrics.tokens.inc(n)
        self._tokens_window = [(t, k) for t, k in self._tokens_window if now - t < 10] + [(now, n)]
        span = max(1.0, now - self._tokens_window[0][0])
        self.metrics.tokens_per_s.set(sum(k for _, k in self._tokens_window) / span)

    # ------------------------------------------------------------------ the loop
    def _admit(self, job: _Job) -> None:
        job.admitted = time.monotonic()
        self._generating[job.entry.id] = asyncio.ensure_future(self._run_job(job))

    async def _safe_point(self) -> None:
        """Apply a pending version once nothing generates: drain (wait) or abort (cancel) what runs."""
        if self._pending_weights is None:
            return
        if self._generating:
            if self.cfg.weight_update == "drain":
                return  # admission is closed while a version waits; the loop comes back when a request ends
            tasks = list(self._generating.values())
            for t in tasks:
                t.cancel()  # AsyncLLM aborts a cancelled request in the engine
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._apply_pending_weights()

    def _read_and_hold(self, count: int, block_ms: int) -> list[Entry]:
        """Reading thread: the entries are held (renewed from now on) before the event loop gets them."""
        entries = self.bus.read(self.bus.names.prompts, GROUP, self.consumer, count, block_ms)
        self.leases.hold(self.bus.names.prompts, *(e.id for e in entries))
        return entries

    async def _read(self, count: int, block_ms: int) -> list[Entry]:
        return await asyncio.to_thread(self._read_and_hold, count, block_ms)

    def _decode_all(self, entries: list[Entry]) -> list[PromptMsg | None]:
        return [self.bus.decode_or_dead_letter(e, "prompt", GROUP, self.consumer) for e in entries]

    async def _step(self) -> None:
        names = self.bus.names
        await self._safe_point()
        # ready jobs: the aborted ones first, then those that were waiting for this version
        if self._pending_weights is None:
            ready = self._requeue + [j for j in self._waiting if j.msg.min_policy_version <= self.policy_version]
            self._requeue = []
            self._waiting = [j for j in self._waiting if j.msg.min_policy_version > self.policy_version]
            for job in ready:
                self._admit(job)
        free = self.cfg.max_inflight_prompts - len(self._generating) - len(self._waiting) - len(self._requeue)
        if free <= 0 or self._pending_weights is not None:
            self._wake = self._wake or asyncio.Event()
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=0.2)
            except asyncio.TimeoutError:
                pass
            return
        # block briefly only when idle: with requests in flight the loop must come back to finish them
        entries = await self._read(free, 10 if self._generating else 200)
        # our own lapsed lease taken back by our own read: the job for it is still running (and ours again)
        entries = [e for e in entries if e.id not in self._jobs]
        msgs = await asyncio.to_thread(self._decode_all, entries) if entries else []
        for entry, msg in zip(entries, msgs):
            if msg is None:
                self.metrics.dead.inc()
                self.leases.drop(names.prompts, entry.id)
                continue
            job = _Job(entry, msg)
            self._jobs[entry.id] = job
            if msg.min_policy_version > self.policy_version:
                self._waiting.append(job)  # bounded staleness: never sample it with older weights
            else:
                self._admit(job)
        if not entries:
            await asyncio.sleep(0.005 if self._generating else 0)
        self.metrics.inflight.set(len(self._generating))
        self.metrics.waiting.set(len(self._waiting))

    async def _serve(self) -> None:
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self.bus.ensure_group, self.bus.names.prompts, GROUP)
        self.leases.start()  # the keeper's interpreter starts while the engine loads
        self._start_engine()
        if hasattr(self.leases, "wait_started"):
            await asyncio.to_thread(self.leases.wait_started)  # no read before renewals run
        self.ready.set()
        last_lag = 0.0
        try:
            while not self.stop.is_set():
                if getattr(self.engine, "errored", False):
                    raise RuntimeError("the vLLM engine died; stopping so a supervisor restarts the service")
                try:
                    await self._step()
                    if time.monotonic() - last_lag > 1.0:
                        last_lag = time.monotonic()
                        self.metrics.lag.set(await asyncio.to_thread(self.queue_lag))
                    self.failures = 0
                except BusAuthError:
                    raise  # a wrong password is not a passing failure
                except Exception:
                    self.failures += 1
                    log.exception("rollout loop failed (%d in a row); entries in flight stay pending and are retried", self.failures)
                    await asyncio.sleep(1.0)
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        """Stop generating; what was in flight is released so another replica takes it at once."""
        tasks = list(self._generating.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        held = self.leases.held(self.bus.names.prompts)
        await asyncio.to_thread(self.leases.stop)  # no renewal may undo the release
        if held:
            try:
                await asyncio.to_thread(self.bus.release, self.bus.names.prompts, GROUP, self.consumer, held)
                log.info("released %d prompts in flight for other replicas", len(held))
            except Exception:  # Redis gone too: they are reclaimed after claim_idle_ms instead
                log.warning("could not release %d prompts in flight", len(held))

    def queue_lag(self) -> int:
        try:
            return self.bus.backlog(self.bus.names.prompts, GROUP)
        except Exception:  # metrics must not stop the loop
            return 0

    def run(self) -> None:
        asyncio.run(self._serve())

    def close(self) -> None:
        self.stop.set()
        self.leases.stop()
        if self._follower is not None:
            self._follower.stop()
        if self.engine is not None:
            self.engine.shutdown()
        for p in self._tmp.glob("*"):
            p.unlink(missing_ok=True)
        self._tmp.rmdir()
