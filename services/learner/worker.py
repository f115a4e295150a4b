"""The learner loop: feed prompts, collect scored groups, shape, update, publish, log.

Rank 0 talks to Redis and serves the weights; every rank trains (rank 0 broadcasts each batch).
Step k's prompts ask for policy version ≥ k − max_staleness, and are fed ``max_staleness`` steps
ahead, so with 1 the rollouts of step k+1 are generated while step k trains.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from autothink.batching import GroupDeduper, batch_stats, build_batch
from autothink.bus.base import Leases
from autothink.bus.messages import PromptMsg, ScoredGroup
from autothink.config import RunConfig
from autothink.data import load_problems
from autothink.schedule import plan
from services.learner.config import LearnerServiceConfig
from services.learner.trainer import GRPOTrainer

log = logging.getLogger("autothink.learner")
GROUP = "learner"


class Learner:
    def __init__(self, run: RunConfig, svc: LearnerServiceConfig, registry: CollectorRegistry | None = None):
        self.run_cfg = run
        self.svc = svc
        self.out = Path(run.output_dir)
        self.trainer = GRPOTrainer(run.model.path, run.optim, run.deepspeed, run.seed)
        self.rank = self.trainer.rank
        self.steps = plan(run.stages)
        self.state = {"step": 0, "policy_version": 0}
        self.consumer = f"{socket.gethostname()}-{os.getpid()}"
        reg = registry or CollectorRegistry()
        self.g_step = Gauge("autothink_learner_step", "Global step finished", registry=reg)
        self.g_version = Gauge("autothink_learner_policy_version", "Latest published policy version", registry=reg)
        self.g_reward = Gauge("autothink_learner_reward", "Mean shaped reward of the last batch", registry=reg)
        self.g_think = Gauge("autothink_learner_think_rate", "Think rate of the last batch", registry=reg)
        self.g_acc = Gauge("autothink_learner_accuracy", "Accuracy of the last batch", registry=reg)
        self.g_padding = Gauge("autothink_learner_padding_fraction", "Share of computed tokens that were padding, last step", registry=reg)
        self.g_tokens_s = Gauge("autothink_learner_tokens_per_second", "Prompt + response tokens trained per second, last step", registry=reg)
        self.g_peak = Gauge("autothink_learner_peak_memory_bytes", "Peak memory of the last step (GPU allocator, or process RSS on CPU), busiest rank", registry=reg)
        if svc.resume:
            self._resume()
        if self.rank == 0:
            from autothink.bus.streams import RedisBus
            from autothink.weights import WeightStore, serve

            rows = load_problems(run.data.source, run.model.path, run.data.problem_key, run.data.answer_key)
            if run.data.shuffle:
                random.Random(run.seed).shuffle(rows)
            self.problems = rows
            self.bus = RedisBus(run.redis.url, svc.run_id, run.redis.max_stream_len, run.redis.claim_idle_ms,
                                max_deliveries=run.redis.max_deliveries)
            self.bus.ensure_group(self.bus.names.scored, GROUP)
            self.leases = Leases(self.bus, GROUP, self.consumer).start()  # buffered groups wait for their step: keep them ours
            self.store = WeightStore()
            self.server = serve(self.store, svc.weights_bind, run.weights.token, run.weights.chunk_bytes)
            if self.state["policy_version"] > 0:
                self._resume_publish()
            self.dedupe = GroupDeduper()
            self.buffer: dict[int, list[tuple[str, ScoredGroup]]] = {}
            self.fed: set[int] = set()
            self.out.mkdir(parents=True, exist_ok=True)
            from services.learner.tracking import RunWatch  # trackers, collapse alarm, dashboard data

            self.watch = RunWatch(run, reg, self.out / "metrics.jsonl", len(self.steps))

    # ---------------------------------------------------------------- data in
    def feed(self, step: PlannedStep) -> None:
        s = step.stage
        min_version = max(0, step.index - self.run_cfg.max_staleness)
        for k in range(s.prompts_per_batch):
            row = self.problems[(step.cursor + k) % len(self.problems)]
            msg = PromptMsg(
                group_id=f"{self.svc.run_id}-s{step.index}-p{k}", problem=row["problem"], answer=row["answer"],
                level=row["level"], n=s.samples_per_prompt, temperature=s.temperature, top_p=s.top_p,
                max_tokens=s.max_response_tokens, step=step.index, min_policy_version=min_version,
            )
            self.bus.publish(self.bus.names.prompts, msg)
        self.fed.add(step.index)

    def collect(self, step: PlannedStep, timeout_s: float = 3600.0) -> tuple[list[ScoredGroup], list[str]]:
        """Block until step's prompts_per_batch groups are scored; returns them and their entry ids."""
        want = step.stage.prompts_per_batch
        deadline = time.monotonic() + timeout_s
        names = self.bus.names
        while len(self.buffer.get(step.index, [])) < want:
            if time.monotonic() > deadline:
                raise TimeoutError(f"step {step.index}: {len(self.buffer.get(step.index, []))}/{want} groups after {timeout_s:.0f} s")
            for entry in self.bus.read(names.scored, GROUP, self.consumer, count=64, block_ms=1000):
                g = self.bus.decode_or_dead_letter(entry, "scored", GROUP, self.consumer)
                if g is None:
                    continue
                if g.prompt.step < step.index or not self.dedupe.fresh([g]):
                    self.bus.ack(names.scored, GROUP, entry.id)  # a late duplicate or an old step's group
                    continue
                self.buffer.setdefault(g.prompt.step, []).append((entry.id, g))
                self.leases.hold(names.scored, entry.id)
        got = self.buffer.pop(step.index)
        return [g for _, g in got[:want]], [e for e, _ in got]

    # ---------------------------------------------------------------- the loop
    def _broadcast(self, obj: Any) -> Any:
        if self.trainer.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def run(self, max_steps: int | None = None) -> None:
        from tqdm import tqdm

        start = self.state["step"]
        end = len(self.steps) if max_steps is None else min(len(self.steps), start + max_steps)
        bar = tqdm(range(start, end), desc="learner", disable=self.rank != 0, initial=start, total=len(self.steps))
        for k in bar:
            step = self.steps[k]
            t0 = time.perf_counter()
            groups, entry_ids = None, []
            if self.rank == 0:
                for j in range(k, min(len(self.steps), k + self.run_cfg.max_staleness + 1)):
                    if j not in self.fed:
                        self.feed(self.steps[j])
                groups, entry_ids = self.collect(step)
            groups = self._broadcast(groups)
            t1 = time.perf_counter()
            batch = build_batch(groups, step.stage)
            stats = self.trainer.train(batch, self.run_cfg.optim.mini_batch_prompts, step.stage.temperature)
            t2 = time.perf_counter()
            version = self.state["policy_version"] + 1
            self.state = {"step": k + 1, "policy_version": version}
            every = self.svc.checkpoint_every
            if (every and (k + 1) % every == 0) or k + 1 == len(self.steps):
                self.checkpoint()  # before publishing: a version consumers saw is never lost to a crash
            if self.svc.save_stage_models and (k + 1 == len(self.steps) or self.steps[k + 1].stage_index != step.stage_index):
                self.trainer.save_hf(self.out / "stages" / step.stage.name, tokenizer_from=Path(self.run_cfg.model.path))
            state = self.trainer.state_dict()
            if self.rank == 0:
                self._publish(version, state)
                self.bus.ack(self.bus.names.scored, GROUP, *entry_ids)
                self.leases.drop(self.bus.names.scored, *entry_ids)
            t3 = time.perf_counter()
            row = {
                "step": k, "stage": step.stage.name, "policy_version": version, **stats, **batch_stats(batch),
                "time_wait_s": round(t1 - t0, 3), "time_train_s": round(t2 - t1, 3), "time_publish_s": round(t3 - t2, 3),
                "duplicates_dropped": self.dedupe.duplicates if self.rank == 0 else 0,
                "world_size": self.trainer.world,
                "group_ids": [g.group_id for g in groups],  # what this update trained on (fault tests count them)
            }
            if self.rank == 0:
                self.watch.record(row, batch)  # adds accuracy by mode and the alarm; feeds trackers
                with (self.out / "metrics.jsonl").open("a") as f:
                    f.write(json.dumps(row) + "\n")
                self.g_step.set(k + 1)
                self.g_version.set(version)
                self.g_reward.set(row["reward_shaped"])
                self.g_think.set(row["think_rate"])
                self.g_acc.set(row["accuracy"])
                self.g_padding.set(row["padding_fraction"])  # these three arrive in the trainer's stats
                self.g_tokens_s.set(row["tokens_per_s"])
                self.g_peak.set(row["peak_memory_bytes"])
                bar.set_postfix(stage=step.stage.name, reward=f"{row['reward_shaped']:.2f}", think=f"{row['think_rate']:.2f}", acc=f"{row['accuracy']:.2f}")

    def _publish(self, version: int, state: dict) -> None:
        """Copy the weights into the store now; checksum and announce them on a background thread
        (training goes on), then record the version in Redis for a resumed learner."""
        self.store.publish(version, state, wait=False, on_published=self.bus.set_published_version)

    # ---------------------------------------------------------------- checkpoints
    def checkpoint(self) -> None:
        """HF folder (vLLM/transformers load it), DeepSpeed state, and where the run stands."""
        ckpt = self.out / "checkpoint"
        self.trainer.save_hf(ckpt / "hf", tokenizer_from=Path(self.run_cfg.model.path))
        self.trainer.engine.save_checkpoint(str(ckpt / "deepspeed"), tag=f"step{self.state['step']}")
        if self.rank == 0:
            (ckpt / "state.json").write_text(json.dumps(self.state))
            log.info("checkpoint at step %d (policy version %d)", self.state["step"], self.state["policy_version"])

    def _resume(self) -> None:
        ckpt = self.out / "checkpoint"
        if not (ckpt / "state.json").is_file():
            log.info("no checkpoint in %s; starting fresh", ckpt)
            return
        self.trainer.engine.load_checkpoint(str(ckpt / "deepspeed"))  # the tag its "latest" file names
        self.state = json.loads((ckpt / "state.json").read_text())
        log_file = self.out / "metrics.jsonl"
        if self.rank == 0 and log_file.exists():  # steps after the checkpoint were lost with the weights: they are redone
            rows = [line for line in log_file.read_text().splitlines() if line.strip()]
            kept = [line for line in rows if json.loads(line)["step"] < self.state["step"]]
            log_file.write_text("".join(line + "\n" for line in kept))
            if len(kept) < len(rows):
                log.info("dropped %d log rows of steps after the checkpoint", len(rows) - len(kept))
        log.info("resumed at step %d, policy version %d", self.state["step"], self.state["policy_version"])

    def _resume_publish(self) -> None:
        """Consumers still hold the base model or a version this learner published: hand them the
        checkpoint.  Versions only move forward, so if the crashed learner published past its last
        checkpoint (checkpoint_every > 1), the resumed weights take the next number after those."""
        seen = self.bus.published_version()
        if seen > self.state["policy_version"]:
            log.warning(
                "versions %d..%d were published after the last checkpoint and are lost; resuming as version %d",
                self.state["policy_version"] + 1, seen, seen + 1,
            )
            self.state["policy_version"] = seen + 1
        self._publish(self.state["policy_version"], self.trainer.state_dict())

    def close(self) -> None:
        if self.rank == 0:
            self.leases.stop()
            self.watch.close()
            self.store.flush()
            self.store.close()
            self.server.stop(grace=1).wait()
