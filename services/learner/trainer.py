"""The DeepSpeed side of the learner: PPO-clip GRPO updates on a Hugging Face causal LM.

Algorithm-blind: rewards, shaping and advantages arrive ready (autothink.batching); the loss is
autothink.grpo.policy_loss.  Works as one process on a CPU (gloo) or N processes under torchrun /
the deepspeed launcher (each rank takes its share of every mini-batch; the token mean is global,
so the update does not depend on how the batch is split).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from autothink.batching import TrainBatch, TrainSample
from autothink.config import DeepSpeedConfig, OptimConfig
from autothink.grpo import policy_loss, token_entropy, token_logprobs

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
    def __init__(self, model_path: str | Path, optim: OptimConfig, ds: DeepSpeedConfig, seed: int = 0):
        import deepspeed
        from transformers import AutoModelForCausalLM

        self.rank, self.world = init_distributed()
        logging.getLogger("autothink.learner").info("trainer rank %d of %d (ZeRO-%d)", self.rank, self.world, ds.zero_stage)
        self.optim = optim
        on_gpu = torch.cuda.is_available()
        bf16 = ds.dtype == "bfloat16" or (ds.dtype == "auto" and on_gpu)
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32)
        if optim.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.config.use_cache = False
        optimizer = torch.optim.AdamW(model.parameters(), lr=optim.lr, weight_decay=optim.weight_decay, betas=(0.9, 0.999))
        config = {
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": optim.grad_clip,
            "zero_optimization": {"stage": ds.zero_stage},
            "bf16": {"enabled": bf16},
            "steps_per_print": 1 << 30,
        }
        self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
        # a forward pass in train mode equals the no-grad one only without dropout
        self.reuse_logprobs_for_one_update = not _has_dropout(model)
        self.device = self.engine.device
        self.zero_stage = ds.zero_stage

    # ------------------------------------------------------------------ tensors
    def _tensors(self, samples: Sequence[TrainSample]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """input ids [B, T], next-token targets [B, T-1], response mask [B, T-1] (right padding)."""
        seqs = [s.prompt_ids + s.response_ids for s in samples]
        T = max(len(x) for x in seqs)
        ids = torch.zeros((len(seqs), T), dtype=torch.long)
        mask = torch.zeros((len(seqs), T - 1))
        for row, (s, x) in enumerate(zip(samples, seqs)):
            ids[row, : len(x)] = torch.tensor(x)
            start = len(s.prompt_ids) - 1  # position predicting the first response token
            mask[row, start : start + len(s.response_ids)] = 1.0
        return ids.to(self.device), ids[:, 1:].to(self.device), mask.to(self.device)

    def _forward(self, samples: Sequence[TrainSample], temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids, targets, mask = self._tensors(samples)
        logits = self.engine(input_ids=ids).logits[:, :-1]
        return token_logprobs(logits, targets, temperature), logits, mask

    @torch.no_grad()
    def logprobs(self, samples: Sequence[TrainSample], temperature: float, micro: int) -> list[torch.Tensor]:
        """Per-sample log-probs of the response tokens under the current policy (no gradient)."""
        out: list[torch.Tensor] = []
        self.engine.eval()
        for k in range(0, len(samples), micro):
            part = samples[k : k + micro]
            lp, _, mask = self._forward(part, temperature)
            for row, s in enumerate(part):
                start = len(s.prompt_ids) - 1
                out.append(lp[row, start : start + len(s.response_ids)].float().cpu())
        self.engine.train()
        return out

    # ------------------------------------------------------------------ update
    def _global_sum(self, value: float) -> float:
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        if self.world > 1:
            dist.all_reduce(t)
        return float(t.item())

    def train(self, batch: TrainBatch, groups_per_mini_batch: int, temperature: float) -> dict[str, float]:
        """``optim.epochs`` passes of PPO-clip updates over ``batch``; returns averaged diagnostics."""
        micro = self.optim.micro_batch_samples
        mini_batches = list(batch.mini_batches(groups_per_mini_batch))
        # "old" log-probs: the current policy before this batch's updates (rollouts may come from an
        # older version and were sampled by another engine, so their own log-probs are not used).
        # With one update per batch the policy computing the loss *is* that policy, so the loss's own
        # forward pass gives them (detached) and the extra no-grad pass is skipped.
        one_update = self.optim.epochs == 1 and len(mini_batches) == 1 and self.reuse_logprobs_for_one_update
        old = None if one_update else self.logprobs(batch.samples, temperature, micro)
        sums: dict[str, float] = {"loss": 0.0, "clip_fraction": 0.0, "approx_kl": 0.0, "entropy": 0.0, "updates": 0.0}
        for epoch in range(self.optim.epochs):
            for mb in mini_batches:
                mine = mb[self.rank :: self.world]
                tokens = self._global_sum(sum(len(batch.samples[i].response_ids) for i in mine))
                norm = max(tokens, 1.0) / self.world  # token mean over the whole mini-batch, on every rank
                chunks = [mine[k : k + micro] for k in range(0, len(mine), micro)] or [[]]
                for c, chunk in enumerate(chunks):
                    self.engine.set_gradient_accumulation_boundary(c == len(chunks) - 1)
                    if not chunk:
                        continue
                    samples = [batch.samples[i] for i in chunk]
                    lp, logits, mask = self._forward(samples, temperature)
                    if old is None:
                        old_t = lp.detach()
                    else:
                        old_t = torch.zeros_like(lp)
                        for row, i in enumerate(chunk):
                            start = len(samples[row].prompt_ids) - 1
                            old_t[row, start : start + len(samples[row].response_ids)] = old[i].to(lp.device)
                    adv = torch.tensor([batch.advantages[i] for i in chunk], device=lp.device)
                    loss, st = policy_loss(
                        lp, old_t, adv, mask, self.optim.clip_low, self.optim.clip_high, token_normalizer=norm
                    )
                    self.engine.backward(loss, scale_wrt_gas=False)
                    w = st.tokens
                    sums["loss"] += float(loss.detach()) * norm
                    sums["clip_fraction"] += st.clip_fraction * w
                    sums["approx_kl"] += st.approx_kl_old * w
                    if epoch == 0:
                        with torch.no_grad():
                            sums["entropy"] += float((token_entropy(logits.detach()) * mask).sum())
                    sums["tokens"] = sums.get("tokens", 0.0) + w
                self.engine.step()
                sums["updates"] += 1
        tokens = max(sums.get("tokens", 0.0), 1.0)
        first_epoch_tokens = tokens / self.optim.epochs
        return {
            "loss": sums["loss"] / tokens,
            "clip_fraction": sums["clip_fraction"] / tokens,
            "approx_kl": sums["approx_kl"] / tokens,
            "entropy": sums["entropy"] / first_epoch_tokens,
            "optimizer_updates": sums["updates"],
        }

    # ------------------------------------------------------------------ weights out
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Full weights with Hugging Face names (rank 0 gathers ZeRO-3 shards; other ranks get {})."""
        import deepspeed

        module = self.engine.module
        params = list(module.parameters())
        ctx = deepspeed.zero.GatheredParameters(params, modifier_rank=None) if self.zero_stage == 3 else _null()
        with ctx:
            if self.rank != 0:
                return {}
            return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}

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


def _has_dropout(model: torch.nn.Module) -> bool:
    cfg = getattr(model, "config", None)
    rates = [getattr(cfg, k, 0.0) or 0.0 for k in ("attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop", "dropout")]
    return any(r > 0 for r in rates) or any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None
