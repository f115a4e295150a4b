"""Settings of the gateway (environment prefix AUTOTHINK_GATEWAY_)."""

from __future__ import annotations

from pydantic import Field

from autothink.config import Strict, WeightSyncConfig


class GatewayConfig(Strict):
    model: str = Field(".cache/toy-model", description="Local Hugging Face folder to serve.")
    served_model_name: str = "autothink"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: str = Field("", description="Bearer key; required on a non-loopback host unless allow_no_key.")
    allow_no_key: bool = False
    max_concurrency: int = Field(64, ge=1, description="In-flight requests before answering 429.")
    max_request_bytes: int = Field(1 << 20, ge=1024)
    follow_weights: WeightSyncConfig | None = None
