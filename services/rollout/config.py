"""Settings of the rollout service (environment prefix AUTOTHINK_ROLLOUT_)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from autothink.bus.base import MIN_CLAIM_IDLE_MS
from autothink.config import RedisConfig, Strict, WeightSyncConfig


class RolloutServiceConfig(Strict):
    run_id: str = Field("default", description="Namespace of the run's streams.")
    consumer: str = Field("", description="Consumer name in the group; hostname-pid when empty.")
    model: str = Field(".cache/toy-model", description="Local Hugging Face folder the engine starts from.")
    redis: RedisConfig = Field(RedisConfig(), description=f"claim_idle_ms at least {MIN_CLAIM_IDLE_MS} ms here: see MIN_CLAIM_IDLE_MS.")
    weights: WeightSyncConfig = WeightSyncConfig()
    follow_weights: bool = Field(True, description="Watch the weight service and swap in new versions.")
    max_inflight_prompts: int = Field(
        64, ge=1,
        description="Prompts generated at once, each its own engine request (n samples); a new one is admitted as soon as one "
                    "finishes, so the engine's continuous batching stays full.")
    weight_update: Literal["drain", "abort"] = Field(
        "drain",
        description="How a new policy version reaches the engine: 'drain' stops admitting prompts, lets the ones in flight "
                    "finish with the old weights, then swaps; 'abort' aborts them, swaps at once and regenerates them with "
                    "the new weights. Either way every group comes from exactly one policy version.")
    max_model_len: int | None = Field(None, ge=16, description="Context length of the engine (default: what the model allows).")
    enforce_eager: bool = True
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    host: str = "127.0.0.1"
    port: int = Field(8002, ge=0, le=65535)

    @model_validator(mode="after")
    def _leases_can_keep_up(self) -> RolloutServiceConfig:
        ms = self.redis.claim_idle_ms
        if ms < MIN_CLAIM_IDLE_MS:
            raise ValueError(
                f"redis.claim_idle_ms is {ms} ms; the rollout service supports {MIN_CLAIM_IDLE_MS} ms at least: leases are "
                f"renewed every quarter of it ({ms / 4:g} ms here), and on a loaded 2-core machine the OS alone delays a "
                "renewal by tens of milliseconds, so a shorter lease lapses while its prompt is generated -- each lapse "
                "aborts the generation, counts a delivery and can dead-letter a good prompt (autothink/bus/base.py, "
                "MIN_CLAIM_IDLE_MS)")
        return self
