"""Settings of the rollout service (environment prefix AUTOTHINK_ROLLOUT_)."""

from __future__ import annotations

from pydantic import Field

from autothink.config import RedisConfig, Strict, WeightSyncConfig


class RolloutServiceConfig(Strict):
    run_id: str = Field("default", description="Namespace of the run's streams.")
    consumer: str = Field("", description="Consumer name in the group; hostname-pid when empty.")
    model: str = Field(".cache/toy-model", description="Local Hugging Face folder the engine starts from.")
    redis: RedisConfig = RedisConfig()
    weights: WeightSyncConfig = WeightSyncConfig()
    follow_weights: bool = Field(True, description="Watch the weight service and swap in new versions.")
    prompts_per_generate: int = Field(16, ge=1, description="Prompt messages batched into one vLLM call.")
    batch_window_ms: int = Field(50, ge=0, description="After the first prompt arrives, wait this long for a fuller batch.")
    max_model_len: int | None = Field(None, ge=16, description="Context length of the engine (default: what the model allows).")
    enforce_eager: bool = True
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    host: str = "127.0.0.1"
    port: int = Field(8002, ge=0, le=65535)
