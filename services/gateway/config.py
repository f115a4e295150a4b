"""Settings of the gateway (environment prefix AUTOTHINK_GATEWAY_)."""

from __future__ import annotations


from pydantic import Field, field_validator

from autothink.config import EMBEDDED_TOY, Strict, WeightSyncConfig, embedded_toy_path, is_loopback


class EffortBudgets(Strict):
    """Thinking budgets (reasoning tokens) behind OpenAI's ``reasoning_effort``; ``none`` always
    means no thinking.  ``None`` here means no budget: the reasoning may use what fits.  The
    defaults follow R1-Distill's typical reasoning lengths: MATH-level problems take ~1-4k tokens,
    AIME-level ones up to the context."""

    minimal: int | None = Field(256, ge=0)
    low: int | None = Field(1024, ge=0)
    medium: int | None = Field(4096, ge=0)
    high: int | None = Field(None, ge=0)


class GatewayConfig(Strict):
    model: str = Field(EMBEDDED_TOY, description=f"Local Hugging Face folder to serve ('{EMBEDDED_TOY}': the committed toy model).")

    @field_validator("model")
    @classmethod
    def _embedded_model(cls, v: str) -> str:
        return embedded_toy_path() if v == EMBEDDED_TOY else v
    served_model_name: str = Field("autothink", description="The model id of the OpenAI API.")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: str = Field("", description="Bearer key; required on a non-loopback host unless allow_no_key.")
    allow_no_key: bool = Field(False, description="Serve a non-loopback address without an API key.")
    max_concurrency: int = Field(64, ge=1, description="Requests in flight before answering 429.")
    max_request_bytes: int = Field(1 << 20, ge=1024, description="Largest request body (413 above).")
    max_n: int = Field(16, ge=1, description="Most choices per request.")
    max_model_len: int | None = Field(None, ge=16, description="Context length of the engine (default: what the model allows).")
    reasoning_effort: EffortBudgets = Field(default_factory=EffortBudgets, description="Thinking budget of each reasoning_effort.")
    header_timeout_s: float = Field(10.0, gt=0, description="Close a connection that has not sent its request headers in this time.")
    body_timeout_s: float = Field(30.0, gt=0, description="Answer 408 and close a connection whose request body is not complete this long after its headers.")
    output_interval_tokens: int = Field(
        256, ge=1, description="Requests that do not stream: the engine hands a choice's new tokens to the gateway every "
        "this many tokens (the first and last at once) rather than every token; streaming requests get every token.")
    stall_timeout_s: float = Field(120.0, gt=0, description="/health fails when requests are in flight and the engine has produced nothing for this long.")
    enforce_eager: bool = False
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    policy_version: int = Field(0, ge=0, description="Version number of the weights in `model` (reported per response).")
    follow_weights: WeightSyncConfig | None = Field(None, description="Watch the learner's weight service and hot-swap new versions.")


def check_exposure(cfg: GatewayConfig) -> str | None:
    """Why the gateway must not start with these settings, or None."""
    if not cfg.api_key and not cfg.allow_no_key and not is_loopback(cfg.host):
        return (f"refusing to serve {cfg.host} without an API key: set --api-key (AUTOTHINK_GATEWAY_API_KEY), "
                "bind 127.0.0.1, or pass --allow-no-key to accept the risk")
    return None
