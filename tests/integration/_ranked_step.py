"""Helper run by test_learner_ranks under torchrun (or alone): one GRPO update on a fixed batch,
then rank 0 saves the resulting weights."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from autothink.config import DeepSpeedConfig, OptimConfig  # noqa: E402
from services.learner.trainer import GRPOTrainer  # noqa: E402
from tests.integration.test_learner_step import fixed_batch, sgd  # noqa: E402

if __name__ == "__main__":
    model_dir, zero, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    budget = int(sys.argv[4]) if len(sys.argv) > 4 else 32_768  # optim.max_tokens_per_micro_batch
    from transformers import AutoTokenizer

    batch = fixed_batch(AutoTokenizer.from_pretrained(model_dir))
    if len(sys.argv) > 5:  # the first N samples only: with 2 ranks an odd count leaves one rank a dummy pass
        from autothink.batching import TrainBatch

        n = int(sys.argv[5])
        batch = TrainBatch(batch.samples[:n], batch.rewards[:n], batch.advantages[:n])
    optim = OptimConfig(lr=1e-4, epochs=1, mini_batch_prompts=4, micro_batch_samples=16, gradient_checkpointing=False,
                        max_tokens_per_micro_batch=budget)
    t = GRPOTrainer(model_dir, optim, DeepSpeedConfig(zero_stage=zero, dtype="float32"), optimizer=sgd)  # see assert_same_update
    stats = t.train(batch, groups_per_mini_batch=4, temperature=0.6)
    counts = [None] * t.world
    if t.world > 1:
        import torch.distributed as dist

        dist.all_gather_object(counts, stats["micro_batches"])  # each rank's forward/backward passes
    else:
        counts = [stats["micro_batches"]]
    state = t.state_dict()  # every rank joins the ZeRO-3 gather; rank 0 gets the tensors
    if t.rank == 0:
        torch.save({"state": state, "world": t.world, "stats": stats, "micro_batches": counts}, out)
    t.close()
