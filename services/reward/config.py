"""Settings of the reward service (environment prefix AUTOTHINK_REWARD_)."""

from __future__ import annotations


from pydantic import Field

from autothink.config import RedisConfig, RewardConfig, Strict, is_loopback
from autothink.grading import DEFAULT_TIMEOUT_S


class RewardServiceConfig(Strict):
    run_id: str = Field("default", description="Namespace of the run's streams.")
    consumer: str = Field("", description="Consumer name in the group; hostname-pid when empty.")
    redis: RedisConfig = RedisConfig()
    rewards: RewardConfig = RewardConfig()
    grade_timeout_s: float = Field(
        DEFAULT_TIMEOUT_S, gt=0,
        description="Wall-clock limit per grade, the last guard (a stuck worker is replaced); the grader's operation "
                    "budget ends expensive comparisons first, the same way on any machine.")
    grader_workers: int = Field(2, ge=1, description="Grader processes for the training stream.")
    adhoc_grader_workers: int = Field(
        1, ge=1, description="Grader processes for POST /grade: a pool of its own, so ad-hoc calls cannot starve training.")
    adhoc_queue: int = Field(
        8, ge=0, description="POST /grade requests that may wait for an ad-hoc grader; beyond that the answer is 429 with Retry-After.")
    adhoc_max_wait_s: float = Field(
        5.0, gt=0, description="POST /grade requests that would wait longer than this for an ad-hoc grader (the requests "
                               "ahead times the recent grade time) get 429 with Retry-After at once.")
    api_key: str = Field(
        "", description="When set, POST /grade and the API docs need 'Authorization: Bearer KEY' (/health and /metrics stay "
                        "open). Without one, POST /grade and the docs answer 403 unless the service listens on loopback only.")
    max_request_bytes: int = Field(2_000_000, ge=1024, description="Larger POST /grade bodies are refused with 413.")
    max_response_chars: int = Field(200_000, ge=1, description="Longer responses are graded unparseable.")
    host: str = "127.0.0.1"
    port: int = Field(8001, ge=0, le=65535)

    @property
    def loopback_only(self) -> bool:
        """True when ``host`` is a loopback address (or ``localhost``): nobody else can reach the port."""
        return is_loopback(self.host)
