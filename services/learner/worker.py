"""The learner loop: feed prompts, collect scored groups, shape, update, publish, log.

Rank 0 talks to Redis and serves the weights; every rank trains (rank 0 broadcasts each batch).
Step k's prompts ask for policy version ≥ k − max_staleness, and are fed ``max_staleness`` steps
ahead, so with 1 the rollouts of step k+1 are generated while step k trains.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import re
import shutil
import socket
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from autothink.batching import GroupDeduper, batch_stats, build_batch
from autothink.bus.base import Leases
from autothink.bus.messages import PromptMsg, ScoredGroup
from autothink.config import RunConfig
from autothink.data import load_problems
from autothink.offpolicy import resolve as resolve_correction
from autothink.schedule import PlannedStep, plan
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
        self.correction = resolve_correction(run.optim.off_policy_correction, run.max_staleness)
        #: the token whose probability the mode floor keeps within bounds (``</think>``); only read when a stage has one
        self.decision_token = decision_token_id(run.model.path) if any(s.mode_floor for s in run.stages) else None
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
        self.g_dropped = Gauge("autothink_learner_dropped_groups", "Scored groups not trained on, by reason (total)", ["reason"], registry=reg)
        self.g_peak = Gauge("autothink_learner_peak_memory_bytes", "Peak memory of the last step (GPU allocator, or process RSS on CPU), busiest rank", registry=reg)
        if svc.resume:
            self._resume()
        if self.rank == 0:
            from autothink.bus.streams import RedisBus
            from autothink.weights import WeightStore, serve

            rows = load_problems(run.data.source, run.model.path, run.data.problem_key, run.data.answer_key)
            if run.data.shuffle:
                random.Random(run.seed).shuffle(rows)
            if run.data.balance_levels:
                from autothink.data import interleave_levels

                rows = interleave_levels(rows)
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
            self.asked: dict[str, PromptMsg] = {}  # group id -> its prompt, until the group arrives
            self.reasked = 0
            self.taken: set[str] = set()  # prompts (group ids without a retry suffix) with a group buffered or trained
            self.dropped = {"epoch": 0, "stale": 0}
            self.out.mkdir(parents=True, exist_ok=True)
            from services.learner.tracking import RunWatch  # trackers, collapse alarm, dashboard data

            self.watch = RunWatch(run, reg, self.out / "metrics.jsonl", len(self.steps))

    # ---------------------------------------------------------------- data in
    def min_version(self, step_index: int) -> int:
        """The oldest policy version step ``step_index`` may train on: the version the learner will
        hold when that step trains, less ``max_staleness`` (versions, not steps: a resumed run's
        versions run ahead of its steps)."""
        expected = self.state["policy_version"] + (step_index - self.state["step"])
        return max(0, expected - self.run_cfg.max_staleness)

    def feed(self, step: PlannedStep) -> None:
        s = step.stage
        min_version = self.min_version(step.index)
        for k in range(s.prompts_per_batch):
            row = self.problems[(step.cursor + k) % len(self.problems)]
            msg = PromptMsg(
                group_id=f"{self.svc.run_id}-e{self.epoch}-s{step.index}-p{k}", problem=row["problem"], answer=row["answer"],
                level=row["level"], n=s.samples_per_prompt, temperature=s.temperature, top_p=s.top_p,
                max_tokens=s.max_response_tokens, step=step.index, min_policy_version=min_version, epoch=self.epoch,
            )
            self.bus.publish(self.bus.names.prompts, msg)
            self.asked[msg.group_id] = msg
        self.fed.add(step.index)

    def reask(self, g: ScoredGroup, why: str) -> None:
        """Ask again for a group that cannot be trained on, under a new id (the old one is spent)."""
        base = self.asked.pop(g.group_id, None)
        if base is None:
            return  # not one we are waiting for (a duplicate, or injected)
        retry = dataclasses.replace(base, group_id=f"{base.group_id}-r{self.reasked + 1}",
                                    min_policy_version=self.min_version(base.step))
        self.reasked += 1
        self.asked[retry.group_id] = retry
        self.bus.publish(self.bus.names.prompts, retry)
        log.warning("group %s %s; asked again as %s", g.group_id, why, retry.group_id)

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
                if g.prompt.epoch != self.epoch:
                    # generated for a run this learner resumed from: a branch that no longer exists
                    self.dropped["epoch"] += 1
                    self.bus.ack(names.scored, GROUP, entry.id)
                    continue
                if g.prompt.step < step.index:
                    self.bus.ack(names.scored, GROUP, entry.id)  # an old step's group, late
                    continue
                if g.policy_version < self.min_version(g.prompt.step):
                    self.dropped["stale"] += 1  # the bound is enforced here, whatever the producer did
                    self.bus.ack(names.scored, GROUP, entry.id)
                    self.reask(g, f"came from policy version {g.policy_version}, older than the bound {self.min_version(g.prompt.step)}")
                    continue
                prompt_key = re.sub(r"-r\d+$", "", g.group_id)  # a re-asked group answers the same prompt
                if prompt_key in self.taken or not self.dedupe.fresh([g]):
                    self.bus.ack(names.scored, GROUP, entry.id)  # a duplicate (an entry taken over and done twice)
                    continue
                self.taken.add(prompt_key)
                self.asked.pop(g.group_id, None)
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
            stats = self.trainer.train(batch, self.run_cfg.optim.mini_batch_prompts, step.stage.temperature,
                                       correction=self.correction, is_cap=self.run_cfg.optim.is_cap,
                                       mode_floor=step.stage.mode_floor, decision_token=self.decision_token)
            t2 = time.perf_counter()
            trained_on = self.state["policy_version"]
            version = trained_on + 1
            self.state = {**self.state, "step": k + 1, "policy_version": version}
            # Order matters for a crash at any point: publish (consumers may run ahead; a resumed
            # learner numbers past what they saw and fences their groups off by epoch), then the
            # metrics row, then the checkpoint (a resume drops rows of steps after its checkpoint,
            # so each step is logged exactly once), then acknowledge the groups it trained on.
            state = self.trainer.state_dict()
            if self.rank == 0:
                self._publish(version, state)
                _crash_point("published", k + 1)
            t3 = time.perf_counter()
            row = {
                "step": k, "stage": step.stage.name, "policy_version": version, **stats, **batch_stats(batch),
                "time_wait_s": round(t1 - t0, 3), "time_train_s": round(t2 - t1, 3), "time_publish_s": round(t3 - t2, 3),
                "duplicates_dropped": self.dedupe.duplicates if self.rank == 0 else 0,
                "epoch": self.state.get("epoch", 0),
                "staleness": _histogram(trained_on - g.policy_version for g in groups),
                "dropped_stale": self.dropped["stale"] if self.rank == 0 else 0,
                "dropped_old_epoch": self.dropped["epoch"] if self.rank == 0 else 0,
                "world_size": self.trainer.world,
                "group_ids": [g.group_id for g in groups],  # what this update trained on (fault tests count them)
            }
            if self.rank == 0:
                self.watch.record(row, batch)  # adds accuracy by mode and the alarm; feeds trackers
                with (self.out / "metrics.jsonl").open("a") as f:
                    f.write(json.dumps(row) + "\n")
                _crash_point("row_written", k + 1)
            every = self.svc.checkpoint_every
            # monitor.on_degeneration: stop -- decided on rank 0 (it holds the metrics), obeyed by all
            stop = self._broadcast(self.rank == 0 and self.watch.should_stop)
            if (every and (k + 1) % every == 0) or k + 1 == len(self.steps) or stop:
                self.checkpoint()
            if self.svc.save_stage_models and (k + 1 == len(self.steps) or self.steps[k + 1].stage_index != step.stage_index):
                self.trainer.save_hf(self.out / "stages" / step.stage.name, tokenizer_from=Path(self.run_cfg.model.path))
            if self.rank == 0:
                self.bus.ack(self.bus.names.scored, GROUP, *entry_ids)
                self.leases.drop(self.bus.names.scored, *entry_ids)
                self.g_dropped.labels("stale").set(self.dropped["stale"])
                self.g_dropped.labels("old_epoch").set(self.dropped["epoch"])
                self.g_step.set(k + 1)
                self.g_version.set(version)
                self.g_reward.set(row["reward_shaped"])
                self.g_think.set(row["think_rate"])
                self.g_acc.set(row["accuracy"])
                self.g_padding.set(row["padding_fraction"])  # these three arrive in the trainer's stats
                self.g_tokens_s.set(row["tokens_per_s"])
                self.g_peak.set(row["peak_memory_bytes"])
                bar.set_postfix(stage=step.stage.name, reward=f"{row['reward_shaped']:.2f}", think=f"{row['think_rate']:.2f}", acc=f"{row['accuracy']:.2f}")
            if stop:
                why = self.watch.degenerate.describe() if self.rank == 0 and self.watch.degenerate else "the degeneration alarm"
                log.error("stopping at step %d (monitor.on_degeneration: stop): %s; checkpoint in %s", k + 1, why, self.out / "checkpoint")
                raise TrainingStopped(f"degeneration alarm at step {k + 1}: {why}")

    def _publish(self, version: int, state: dict) -> None:
        """Copy the weights into the store now; checksum and announce them on a background thread
        (training goes on), then record the version in Redis for a resumed learner."""
        self.store.publish(version, state, wait=False, on_published=self.bus.set_published_version)

    # ---------------------------------------------------------------- checkpoints
    def checkpoint(self) -> None:
        """HF folder (vLLM/transformers load it), DeepSpeed state under the step's tag, and
        ``state.json`` naming that tag -- written last and atomically, so a crash at any point
        leaves ``state.json`` and the weights it names at one consistent step."""
        ckpt = self.out / "checkpoint"
        tag = f"step{self.state['step']}"
        self.trainer.save_hf(ckpt / "hf", tokenizer_from=Path(self.run_cfg.model.path))
        self.trainer.engine.save_checkpoint(str(ckpt / "deepspeed"), tag=tag)
        _crash_point("checkpoint_saved", self.state["step"])
        if self.rank == 0:
            previous = self._read_state(ckpt).get("tag")
            _write_atomic(ckpt / "state.json", json.dumps({**self.state, "tag": tag}))
            for old in (ckpt / "deepspeed").glob("step*"):  # keep the tag state.json names and the one before it
                if old.is_dir() and old.name not in (tag, previous):
                    shutil.rmtree(old, ignore_errors=True)
            log.info("checkpoint at step %d (policy version %d)", self.state["step"], self.state["policy_version"])

    @staticmethod
    def _read_state(ckpt: Path) -> dict:
        try:
            return json.loads((ckpt / "state.json").read_text())
        except (OSError, ValueError):
            return {}

    def _resume(self) -> None:
        ckpt = self.out / "checkpoint"
        state = self._read_state(ckpt)
        if not state:
            log.info("no checkpoint in %s; starting fresh", ckpt)
            return
        # the tag state.json names, not DeepSpeed's "latest": a crash between the two writes must not
        # resume weights one step ahead of the recorded step
        self.trainer.engine.load_checkpoint(str(ckpt / "deepspeed"), tag=state.get("tag"))
        # a new epoch for this incarnation, recorded at once: groups asked for by the run we resume
        # from (pending or buffered anywhere) belong to a branch that no longer exists
        state["epoch"] = int(state.get("epoch", 0)) + 1
        self.state = state
        if self.trainer.world > 1:
            import torch.distributed as dist

            dist.barrier()  # every rank has read state.json before rank 0 rewrites it
        if self.rank == 0:
            _write_atomic(ckpt / "state.json", json.dumps(state))
        log_file = self.out / "metrics.jsonl"
        if self.rank == 0 and log_file.exists():  # steps after the checkpoint were lost with the weights: they are redone
            rows = [line for line in log_file.read_text().splitlines() if line.strip()]
            kept = [line for line in rows if json.loads(line)["step"] < self.state["step"]]
            _write_atomic(log_file, "".join(line + "\n" for line in kept))
            if len(kept) < len(rows):
                log.info("dropped %d log rows of steps after the checkpoint", len(rows) - len(kept))
        log.info("resumed at step %d, policy version %d, epoch %d", self.state["step"], self.state["policy_version"], self.state["epoch"])

    @property
    def epoch(self) -> int:
        return int(self.state.get("epoch", 0))

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


class TrainingStopped(RuntimeError):
    """The run ended early on purpose (``monitor.on_degeneration: stop``), after a checkpoint."""


EXIT_STOPPED = 3  # the learner's exit status when a monitor stopped the run (the launcher names the alarm)


def _crash_point(point: str, step: int) -> None:
    """Fault injection for the recovery tests: ``AUTOTHINK_FAULT_INJECT=checkpoint_saved:3`` ends the
    process at once -- as ``kill -9`` would, nothing flushed or closed -- when step 3's checkpoint
    reaches that point.  Points: ``published``, ``row_written``, ``checkpoint_saved`` (DeepSpeed's
    state written, ``state.json`` not yet).  Unset in production."""
    if os.environ.get("AUTOTHINK_FAULT_INJECT") == f"{point}:{step}":
        log.error("fault injection: exiting at %s of step %d", point, step)
        os._exit(137)


def _histogram(values: Iterable[int]) -> dict[str, int]:
    """``{"0": 12, "1": 4}``: how many groups were that many versions old when trained on."""
    return {str(k): v for k, v in sorted(Counter(values).items())}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def decision_token_id(model_path: str | Path) -> int:
    """The tokenizer's id of ``</think>``: the first response token of a direct answer under the
    ellipsis prompt, whose probability stage 1's mode floor keeps within bounds.  It must be one
    token (it is in R1's tokenizer and in the toy's); otherwise the floor has no one decision to
    act on and the run stops here, before any training."""
    from transformers import AutoTokenizer

    from autothink.prompting import THINK_CLOSE

    tok = AutoTokenizer.from_pretrained(str(model_path))
    ids = tok.encode(THINK_CLOSE, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"{THINK_CLOSE!r} is {len(ids)} tokens {ids} in {model_path}'s tokenizer, not one: "
                         "the mode floor (stages[].mode_floor) needs it to be a single token; set mode_floor: 0")
    return int(ids[0])
