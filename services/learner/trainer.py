"""The DeepSpeed side of the learner: PPO-clip GRPO updates on a Hugging Face causal LM.

Algorithm-blind: rewards, shaping and advantages arrive ready (autothink.batching); the loss is
autothink.grpo.policy_loss.  Works as one process on a CPU (gloo) or N processes under torchrun /
the deepspeed launcher.  At the paper's lengths (8k-24k-token responses, a 151,936-token vocabulary)
two things keep memory bounded: log-probs come from the final hidden states through a chunked LM
head (autothink.logprobs: no [B, T, V] logits), and micro-batches are cut by a token budget,
length-aware and the same number on every rank (autothink.packing).  The token mean is global, so
the update does not depend on how the batch is cut into micro-batches or ranks.
"""

from __future__ import annotations

import contextlib

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from autothink.batching import TrainBatch, TrainSample
from autothink.config import DeepSpeedConfig, OptimConfig
from autothink.grpo import mode_floor_penalty, policy_loss, token_entropy, token_logprobs
from autothink.offpolicy import MismatchStats, importance_weights, merge
from autothink.packing import plan_micro_batches

log = logging.getLogger("autothink.learner")


def init_distributed() -> tuple[int, int]:
    """(rank, world size).  Under torchrun or the deepspeed launcher the environment says where
    the rendezvous is; a single process without a launcher gets a private one on a free port
    (only LOCAL_RANK=0 is exported, which DeepSpeed requires; no MASTER_PORT, so child processes
    do not inherit a port that is taken)."""
    import deepspeed
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if "RANK" in os.environ and "MASTER_ADDR" in os.environ:
            deepspeed.init_distributed(dist_backend=backend)
        else:
            import socket

            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            os.environ.setdefault("LOCAL_RANK", "0")  # deepspeed.initialize insists on it
            deepspeed.init_distributed(
                dist_backend=backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1,
                auto_mpi_discovery=False,
            )
    return dist.get_rank(), dist.get_world_size()


class GRPOTrainer:
    """PPO-clip GRPO updates with DeepSpeed; log-probs from a chunked LM head, token-budget micro-batches.

    ``chunked_logprobs=False`` computes full-vocabulary logits as before (kept for comparison:
    bench/learner_bench.py, learner-probe --plain-logprobs).  ``packed`` puts a micro-batch's sequences
    end to end with restarting position ids instead of right padding; by default it is on exactly
    when the model runs flash-attention, whose varlen kernel keeps packed sequences apart.
    """

    def __init__(
        self,
        model_path: str | Path,
        optim: OptimConfig,
        ds: DeepSpeedConfig,
        seed: int = 0,
        chunked_logprobs: bool = True,
        logprob_chunk_tokens: int | None = None,
        packed: bool | None = None,
        optimizer: Any = None,
    ):
        """``optimizer``: a factory ``params -> torch.optim.Optimizer`` in place of AdamW (the
        same-update tests use SGD, whose step is linear in the gradient, so that two splits of a
        batch can be compared within float32 reduction error; Adam's first step divides each
        element by its own magnitude and turns a rounding difference next to eps into up to 2 lr)."""
        import deepspeed
        from transformers import AutoModelForCausalLM

        from autothink.logprobs import install_chunked_head

        from autothink.procs import ExtensionLockWatch

        # DeepSpeed builds (or loads) its CPU comm op under a lock file that a learner killed at
        # start leaves behind; torch would then wait on it forever
        with ExtensionLockWatch(logging.getLogger("autothink.learner")):
            self.rank, self.world = init_distributed()
        logging.getLogger("autothink.learner").info("trainer rank %d of %d (ZeRO-%d)", self.rank, self.world, ds.zero_stage)
        self.optim = optim
        on_gpu = torch.cuda.is_available()
        bf16 = ds.dtype == "bfloat16" or (ds.dtype == "auto" and on_gpu)
        #: what the weights train and publish in: bf16 weights go out as bf16, half the bytes of fp32
        self.dtype = torch.bfloat16 if bf16 else torch.float32
        torch.manual_seed(seed)
        extra = {"attn_implementation": "flash_attention_2"} if on_gpu and bf16 and _has_flash_attn() else {}
        model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=self.dtype, **extra)
        attn = getattr(model.config, "_attn_implementation", "") or ""
        self.packed = attn.startswith("flash_attention") if packed is None else packed
        self.chunked = chunked_logprobs
        if chunked_logprobs:
            install_chunked_head(model, logprob_chunk_tokens)
        if optim.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.config.use_cache = False
        custom_optimizer = optimizer is not None
        if optimizer is None:
            optimizer = torch.optim.AdamW(model.parameters(), lr=optim.lr, weight_decay=optim.weight_decay, betas=(0.9, 0.999))
        else:
            optimizer = optimizer(model.parameters())
        config = {
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": optim.grad_clip,
            "zero_optimization": {"stage": ds.zero_stage},
            "bf16": {"enabled": bf16},
            "steps_per_print": 1 << 30,
            # a factory's optimiser (the tests' SGD) is one DeepSpeed has not vetted for ZeRO
            "zero_allow_untested_optimizer": custom_optimizer,
        }
        with ExtensionLockWatch(logging.getLogger("autothink.learner")):
            self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
        # a forward pass in train mode equals the no-grad one only without dropout
        self.reuse_logprobs_for_one_update = not _has_dropout(model)
        self.device = self.engine.device
        self.zero_stage = ds.zero_stage

    # ------------------------------------------------------------------ micro-batches
    def plan(self, samples: Sequence[TrainSample], indices: Sequence[int], world: int | None = None,
             max_samples: int | None = None) -> list[MicroBatch]:
        """This rank's micro-batches over ``samples[i] for i in indices``: the same number on every
        rank (autothink.packing); a rank with nothing left gets a dummy pass over the shortest sample."""
        world = self.world if world is None else world
        lengths = [len(samples[i].prompt_ids) + len(samples[i].response_ids) for i in indices]
        plan = plan_micro_batches(lengths, world, self.optim.max_tokens_per_micro_batch,
                                  max_samples or self.optim.micro_batch_samples, padded=not self.packed)
        mine = plan[self.rank if world > 1 else 0]
        shortest = indices[min(range(len(indices)), key=lambda k: lengths[k])] if indices else None
        out = []
        for mb in mine:
            if mb:
                out.append(MicroBatch([indices[k] for k in mb], real=True))
            elif shortest is not None:
                out.append(MicroBatch([shortest], real=False))
        return out

    def _inputs(self, samples: Sequence[TrainSample]) -> dict[str, Any]:
        """Model inputs of one micro-batch (see :func:`micro_batch_inputs`), on the device."""
        inputs = micro_batch_inputs([s.prompt_ids for s in samples], [s.response_ids for s in samples], self.packed)
        return {k: (v.to(self.device) if v is not None else None) for k, v in inputs.items()}

    def _score(self, samples: Sequence[TrainSample], temperature: float, with_entropy: bool,
               decision_token: int | None = None) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor | None]:
        """Log-probs and entropies of the response tokens, ``[N]`` each (sample after sample), the
        tokens the forward pass computed (padding included), and with ``decision_token`` the
        log-prob of that token at each sample's decision position ``[B]`` (else None)."""
        x = self._inputs(samples)
        computed = int(x["input_ids"].numel())
        n = int(x["select"].sum())
        if self.chunked:
            probe = {} if decision_token is None else {
                "probe": x["decision"], "probe_targets": torch.full_like(x["decision"], int(decision_token))}
            lp, ent = self.engine(input_ids=x["input_ids"], position_ids=x["position_ids"], targets=x["targets"],
                                  select=x["select"], temperature=temperature, with_entropy=with_entropy, **probe)
            return lp[:n], ent[:n], computed, (lp[n:] if decision_token is not None else None)
        logits = self.engine(input_ids=x["input_ids"], position_ids=x["position_ids"], use_cache=False).logits  # [B, T, V]
        lp = token_logprobs(logits, x["targets"], temperature)[x["select"]]
        ent = torch.zeros_like(lp)
        if with_entropy:
            with torch.no_grad():
                ent = token_entropy(logits.detach().float() / temperature)[x["select"]]
        close = None
        if decision_token is not None:
            at = logits.reshape(-1, logits.shape[-1])[x["decision"]].float() / temperature  # [B, V]
            close = torch.log_softmax(at, dim=-1)[:, int(decision_token)]
        return lp, ent, computed, close

    @torch.no_grad()
    def logprobs(self, samples: Sequence[TrainSample], temperature: float, micro: int | None = None) -> list[torch.Tensor]:
        """Per-sample log-probs of the response tokens under the current policy (no gradient).
        Every rank computes all of ``samples`` (the same passes on every rank, as ZeRO-3 needs)."""
        out: dict[int, torch.Tensor] = {}
        self.engine.eval()
        for mb in self.plan(samples, list(range(len(samples))), world=1, max_samples=micro):
            out.update(self._split(mb.indices, samples, self._score([samples[i] for i in mb.indices], temperature, False)[0]))
        self.engine.train()
        return [out[i] for i in range(len(samples))]

    @staticmethod
    def _split(indices: Sequence[int], samples: Sequence[TrainSample], flat: torch.Tensor) -> dict[int, torch.Tensor]:
        sizes = [len(samples[i].response_ids) for i in indices]
        return {i: t.float().cpu() for i, t in zip(indices, torch.split(flat.detach(), sizes))}

    # ------------------------------------------------------------------ update
    def _global_sum(self, values: Sequence[float]) -> list[float]:
        import torch.distributed as dist

        t = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        if self.world > 1:
            dist.all_reduce(t)
        return [float(x) for x in t.tolist()]

    def _global_max(self, value: float) -> float:
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        if self.world > 1:
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())

    def train(self, batch: TrainBatch, groups_per_mini_batch: int, temperature: float,
              correction: str = "none", is_cap: float = 2.0, mode_floor: float = 0.0,
              decision_token: int | None = None) -> dict[str, float]:
        """``optim.epochs`` passes of PPO-clip updates over ``batch``; returns averaged diagnostics.

        ``correction`` (none / tis / mask, :mod:`autothink.offpolicy`) weights each token's loss by
        how much likelier the learner's pre-update policy finds it than the engine that sampled it
        did (truncated at ``is_cap``, or masked outside [1/cap, cap]); the mismatch is measured
        and logged whatever the setting.

        ``mode_floor`` > 0 (stage 1's mode floor, :func:`autothink.grpo.mode_floor_penalty`) adds
        each sample's hinge on p(``decision_token``) at its decision position, counted like one
        response token of advantage 1 (divided by the same token normaliser, so the update does not
        depend on how the batch is cut into micro-batches); ``decision_p_no_think`` (the mean of that
        probability over the samples), ``decision_below_floor`` (the fraction of samples where either
        mode was below the floor) and ``mode_floor_penalty`` (its mean per sample) are logged.

        Besides the loss statistics: ``real_tokens`` (prompt + response tokens of the batch),
        ``computed_tokens`` (tokens one epoch's forward passes process over all ranks, padding and
        dummy passes included), ``padding_fraction`` = 1 - real / computed, ``micro_batches`` (this
        rank's forward/backward passes per epoch, equal on every rank), ``tokens_per_s`` (real
        tokens of the batch per second of this update), ``peak_memory_bytes`` (the busiest rank's
        peak during the update: the GPU allocator's, or the process's resident memory on CPU) and
        ``seconds``.
        """
        if mode_floor and decision_token is None:
            raise ValueError("a mode floor needs the decision token (the tokenizer's id of </think>)")
        probe = decision_token if mode_floor else None
        t0 = time.perf_counter()
        reset_peak_memory()
        mini_batches = list(batch.mini_batches(groups_per_mini_batch))
        plans = [self.plan(batch.samples, mb) for mb in mini_batches]
        # "old" log-probs: the current policy before this batch's updates (rollouts may come from an
        # older version and were sampled by another engine, so their own log-probs are not used).
        # With one update per batch the policy computing the loss *is* that policy, so the loss's own
        # forward pass gives them (detached) and the extra no-grad pass is skipped.
        one_update = self.optim.epochs == 1 and len(mini_batches) == 1 and self.reuse_logprobs_for_one_update
        old: dict[int, torch.Tensor] | None = None
        if not one_update:
            old = {}
            self.engine.eval()
            with torch.no_grad():
                for plan in plans:
                    for m in plan:
                        lp = self._score([batch.samples[i] for i in m.indices], temperature, False)[0]
                        if m.real:
                            old.update(self._split(m.indices, batch.samples, lp))
            self.engine.train()
        sums: dict[str, float] = {"loss": 0.0, "clip_fraction": 0.0, "approx_kl": 0.0, "entropy": 0.0, "updates": 0.0, "tokens": 0.0,
                                  "floor_penalty": 0.0, "p_close": 0.0, "below_floor": 0.0, "floor_samples": 0.0}
        mismatch: list[MismatchStats] = []
        computed = real = passes = 0
        for epoch in range(self.optim.epochs):
            for mb, plan in zip(mini_batches, plans):
                # token mean over the whole mini-batch on every rank (every rank holds the whole batch)
                norm = max(sum(len(batch.samples[i].response_ids) for i in mb), 1) / self.world
                for c, m in enumerate(plan):
                    self.engine.set_gradient_accumulation_boundary(c == len(plan) - 1)
                    samples = [batch.samples[i] for i in m.indices]
                    lp, ent, n_computed, close = self._score(samples, temperature, with_entropy=epoch == 0 and m.real,
                                                             decision_token=probe)
                    old_t = lp.detach() if old is None or not m.real else torch.cat([old[i] for i in m.indices]).to(lp.device)
                    adv = torch.tensor([a for i, s in zip(m.indices, samples) for a in batch.token_advantages(i, len(s.response_ids))])
                    behav = torch.cat([_behaviour_logprobs(s) for s in samples])
                    weights, ms = importance_weights(old_t, behav, correction, is_cap)  # type: ignore[arg-type]
                    if epoch == 0 and m.real:
                        mismatch.append(ms)
                    loss, st = policy_loss(
                        lp.unsqueeze(0), old_t.unsqueeze(0), adv.to(lp.device).unsqueeze(0), torch.ones_like(lp).unsqueeze(0),
                        self.optim.clip_low, self.optim.clip_high, token_normalizer=norm,
                        is_weights=weights.to(lp.device).unsqueeze(0),
                    )
                    if close is not None:
                        penalty = mode_floor_penalty(close, mode_floor)
                        loss = loss + penalty.sum() / norm
                        if epoch == 0 and m.real:
                            with torch.no_grad():
                                p_close = close.detach().float().exp()
                                sums["floor_penalty"] += float(penalty.detach().sum())
                                sums["p_close"] += float(p_close.sum())
                                sums["below_floor"] += float(((p_close < mode_floor) | (p_close > 1.0 - mode_floor)).sum())
                                sums["floor_samples"] += len(samples)
                    if not m.real:
                        loss = loss * 0.0  # a dummy pass: every rank runs the same passes, this one adds nothing
                    self.engine.backward(loss, scale_wrt_gas=False)
                    passes += 1
                    if epoch == 0:
                        computed += n_computed
                    if not m.real:
                        continue
                    if epoch == 0:
                        real += sum(len(s.prompt_ids) + len(s.response_ids) for s in samples)
                        sums["entropy"] += float(ent.sum())
                    w = st.tokens
                    sums["loss"] += float(loss.detach()) * norm
                    sums["clip_fraction"] += st.clip_fraction * w
                    sums["approx_kl"] += st.approx_kl_old * w
                    sums["tokens"] += w
                self.engine.step()
                sums["updates"] += 1
        computed_all, real_all, *floor = self._global_sum(
            [computed, real, sums["floor_penalty"], sums["p_close"], sums["below_floor"], sums["floor_samples"]])
        peak = self._global_max(float(peak_memory_bytes()))
        seconds = time.perf_counter() - t0
        tokens = max(sums["tokens"], 1.0)
        first_epoch_tokens = tokens / self.optim.epochs
        return {
            "loss": sums["loss"] / tokens,
            "clip_fraction": sums["clip_fraction"] / tokens,
            "approx_kl": sums["approx_kl"] / tokens,
            "entropy": sums["entropy"] / first_epoch_tokens,
            "optimizer_updates": sums["updates"],
            "micro_batches": passes // self.optim.epochs,
            "real_tokens": real_all,
            "computed_tokens": computed_all,
            "padding_fraction": 1.0 - real_all / computed_all if computed_all else 0.0,
            "tokens_per_s": real_all / seconds if seconds > 0 else 0.0,
            "peak_memory_bytes": peak,
            "seconds": seconds,
            "off_policy_correction": correction,
            **merge(mismatch),
            **({} if not floor[3] else {"mode_floor_penalty": floor[0] / floor[3], "decision_p_no_think": floor[1] / floor[3],
                                        "decision_below_floor": floor[2] / floor[3]}),
        }

    # ------------------------------------------------------------------ weights out
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Full weights with Hugging Face names, in the training dtype (bf16 when training in bf16:
        one copy to the CPU, no conversion).  Rank 0 gathers ZeRO-3 shards; other ranks get {}."""
        import deepspeed

        module = self.engine.module
        params = list(module.parameters())
        ctx = deepspeed.zero.GatheredParameters(params, modifier_rank=None) if self.zero_stage == 3 else contextlib.nullcontext()
        with ctx:
            if self.rank != 0:
                return {}
            return {k: v.detach().to("cpu", dtype=self.dtype, copy=True) for k, v in module.state_dict().items()}

    def save_hf(self, out: Path, tokenizer_from: Path | None = None) -> None:
        """A Hugging Face folder that vLLM and transformers load (rank 0 writes)."""
        state = self.state_dict()
        if self.rank != 0:
            return
        out.mkdir(parents=True, exist_ok=True)
        self.engine.module.save_pretrained(str(out), state_dict=state, safe_serialization=True)
        if tokenizer_from is not None:
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(str(tokenizer_from)).save_pretrained(str(out))


    def close(self) -> None:
        """Leave the process group together: every rank waits at a barrier, then tears it down.  A
        rank that exits while another still sends (rank 0 saving after a gather) aborts in gloo's
        destructor ("terminate called without an active exception")."""
        import torch.distributed as dist

        if dist.is_initialized():
            if self.world > 1:
                dist.barrier()
            dist.destroy_process_group()


@dataclass
class MicroBatch:
    """Sample indices of one forward/backward pass; ``real=False``: a dummy pass (zero loss weight)
    that keeps this rank in step with ranks that have more to do."""

    indices: list[int]
    real: bool = True


def micro_batch_inputs(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], packed: bool) -> dict[str, Any]:
    """Tensors of one micro-batch, all ``[B, T]``.

    ``input_ids``; ``targets`` (the next token at each position, 0 where there is none);
    ``select`` (true at positions that predict a response token, sample after sample: the order
    of the log-probs); ``position_ids`` (None with right padding, where positions are 0..T-1 and the
    causal mask keeps real tokens from the padding after them; restarting at 0 for each sequence
    when ``packed``, where B = 1 and T is the sum of the lengths); ``decision`` ``[B_samples]``,
    the flat index into ``[B * T]`` of the position that predicts each sample's first response
    token (the mode decision under the ellipsis prompt).

    >>> x = micro_batch_inputs([[1, 2], [3]], [[4, 5], [6, 7, 8]], packed=False)
    >>> x["input_ids"].tolist(), x["select"].int().tolist(), x["decision"].tolist()
    ([[1, 2, 4, 5], [3, 6, 7, 8]], [[0, 1, 1, 0], [1, 1, 1, 0]], [1, 4])
    >>> x = micro_batch_inputs([[1, 2], [3]], [[4, 5], [6, 7, 8]], packed=True)
    >>> x["input_ids"].tolist(), x["position_ids"].tolist(), x["select"].int().tolist(), x["decision"].tolist()
    ([[1, 2, 4, 5, 3, 6, 7, 8]], [[0, 1, 2, 3, 0, 1, 2, 3]], [[0, 1, 1, 0, 1, 1, 1, 0]], [1, 4])
    """
    seqs = [list(p) + list(r) for p, r in zip(prompts, responses)]
    if packed:
        flat = [t for x in seqs for t in x]
        ids = torch.tensor([flat], dtype=torch.long)
        pos = torch.tensor([[i for x in seqs for i in range(len(x))]], dtype=torch.long)
        select = torch.zeros_like(ids, dtype=torch.bool)
        offset = 0
        decision = []
        for p, r, x in zip(prompts, responses, seqs):
            select[0, offset + len(p) - 1 : offset + len(p) - 1 + len(r)] = True
            decision.append(offset + len(p) - 1)
            offset += len(x)
    else:
        T = max(len(x) for x in seqs)
        ids = torch.zeros((len(seqs), T), dtype=torch.long)
        select = torch.zeros((len(seqs), T), dtype=torch.bool)
        for row, (p, r, x) in enumerate(zip(prompts, responses, seqs)):
            ids[row, : len(x)] = torch.tensor(x)
            select[row, len(p) - 1 : len(p) - 1 + len(r)] = True  # position len(p)-1 predicts the first response token
        decision = [row * T + len(p) - 1 for row, p in enumerate(prompts)]
        pos = None
    targets = torch.zeros_like(ids)
    targets[:, :-1] = ids[:, 1:]
    return {"input_ids": ids, "targets": targets, "select": select, "position_ids": pos,
            "decision": torch.tensor(decision, dtype=torch.long)}


def reset_peak_memory() -> None:
    """Start a new peak: the GPU allocator's, or the process's peak resident set on Linux
    (writing 5 to /proc/self/clear_refs resets VmHWM)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_memory_bytes() -> int:
    """The peak since :func:`reset_peak_memory`: GPU allocator bytes, else the process's peak RSS."""
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _has_flash_attn() -> bool:
    import importlib.util

    return importlib.util.find_spec("flash_attn") is not None


def _has_dropout(model: torch.nn.Module) -> bool:
    cfg = getattr(model, "config", None)
    rates = [getattr(cfg, k, 0.0) or 0.0 for k in ("attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop", "dropout")]
    return any(r > 0 for r in rates) or any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())


def _behaviour_logprobs(s: TrainSample) -> torch.Tensor:
    """The engine's log-probs of the sampled tokens [T] (NaN where it sent none)."""
    if len(s.rollout_logprobs) == len(s.response_ids):
        return torch.tensor(s.rollout_logprobs, dtype=torch.float32)
    return torch.full((len(s.response_ids),), float("nan"))
