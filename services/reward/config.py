"""Settings of the reward service (environment prefix AUTOTHINK_REWARD_)."""

from __future__ import annotations

from pydantic import Field

from autothink.config import RedisConfig, RewardConfig, Strict


class RewardServiceConfig(Strict):
    run_id: str = Field("default", description="Namespace of the run's streams.")
    consumer: str = Field("", description="Consumer name in the group; hostname-pid when empty.")
    redis: RedisConfig = RedisConfig()
    rewards: RewardConfig = RewardConfig()
    grade_timeout_s: float = Field(2.0, gt=0, description="Hard limit per grade; a stuck worker is replaced.")
    grader_workers: int = Field(2, ge=1, description="Grader processes for the training stream.")
    adhoc_grader_workers: int = Field(
        1, ge=1, description="Grader processes for POST /grade: a pool of its own, so ad-hoc calls cannot starve training.")
    api_key: str = Field("", description="When set, POST /grade needs 'Authorization: Bearer KEY' (/health and /metrics stay open).")
    max_request_bytes: int = Field(2_000_000, ge=1024, description="Larger POST /grade bodies are refused with 413.")
    max_response_chars: int = Field(200_000, ge=1, description="Longer responses are graded unparseable.")
    host: str = "127.0.0.1"
    port: int = Field(8001, ge=0, le=65535)
