"""The think-or-not decision at the first response step, inside the engine's own sampling step.

Under the ellipsis prompt the first response token decides the mode: ``</think>`` is no-think,
anything else is think.  A serving gateway wants two things from that step, and both must come from
the very forward pass that samples the token, not from a second request:

* **the calibrated probability** of closing: P(``</think>``) under the request's own sampling
  (its banned tokens, temperature and top-p), i.e. of the distribution the token is drawn from;
* **routing** (``think_threshold``): think iff P(think) = 1 − P(close) reaches a threshold, with the
  token then drawn from the model's distribution restricted to the chosen mode.

:class:`FirstStepProcessor` is a vLLM (v1) logits processor that does both for the requests that ask
for it in ``SamplingParams.extra_args[EXTRA_KEY]``.  vLLM applies processors like it after banned
tokens (``logit_bias``) and before temperature and top-p, so it sees the logits the sampler is about
to use and applies the request's temperature and top-p itself, as vLLM's sampler does
(:func:`close_probability`).  Routing is a mask on that row: the no-think route leaves only
``</think>``; the think route bans ``</think>`` and the end of the sequence, which is rejection
sampling — the token follows the model's distribution given "not ``</think>``".

The probability is kept in this process (the engine's worker) under the request's key until the
gateway collects it with ``collective_rpc("pop_first_step", ...)`` (:class:`FirstStepExtension`),
once the first token has arrived; collection is batched and never on the token path.  Only a
request's first sampling step costs anything (one sort of its vocabulary row); other steps and other
requests cost a dictionary lookup.  With chunked prefill a prompt's earlier chunks are sampled and
discarded: their value is overwritten by the last chunk's, the one whose token is kept.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Literal

import torch

EXTRA_KEY = "autothink_first_step"
GREEDY_EPS = 1e-5  # vLLM's: a temperature below this is greedy
Route = Literal["think", "no_think", "sample"]


def close_probability(logits: torch.Tensor, close_id: int, temperature: float, top_p: float = 1.0) -> float:
    """P(the next token is ``close_id``) when sampling ``logits`` (one row) as vLLM's sampler does:
    divide by the temperature, keep the nucleus (tokens sorted ascending, those whose cumulative
    probability is ≤ 1 − top_p dropped, the most likely always kept), renormalise.  Greedy
    (temperature ≈ 0) gives 1 or 0: whether ``close_id`` is the argmax.

    >>> row = torch.log(torch.tensor([0.5, 0.3, 0.2]))
    >>> round(close_probability(row, 2, 1.0), 6), round(close_probability(row, 1, 1.0, top_p=0.75), 6)
    (0.2, 0.375)
    >>> close_probability(row, 2, 1.0, top_p=0.75), close_probability(row, 0, 0.0)  # 0.2 <= 1 - 0.75 by 0.05, not by an ulp
    (0.0, 1.0)

    At temperature 0.5 the probabilities become proportional to their squares (0.25, 0.09, 0.04):

    >>> round(close_probability(row, 0, 0.5), 6)
    0.657895
    """
    row = logits.detach().reshape(-1).to(torch.float32)
    if temperature < GREEDY_EPS:
        return 1.0 if int(torch.argmax(row)) == close_id else 0.0
    row = row / temperature
    if top_p < 1.0:
        sorted_logits, order = torch.sort(row, descending=False)
        cumulative = torch.cumsum(torch.softmax(sorted_logits, dim=-1), dim=-1)
        drop = cumulative <= 1.0 - top_p
        drop[-1] = False  # at least one
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        row = torch.empty_like(row).scatter_(0, order, sorted_logits)
    return float(torch.softmax(row, dim=-1)[close_id])


def route(think_prob: float | None, threshold: float | None) -> Route:
    """Deterministic adaptive mode: think when the probability reaches the threshold; without a
    threshold the model samples its own choice.

    >>> route(0.7, 0.5), route(0.3, 0.5), route(0.3, None)
    ('think', 'no_think', 'sample')
    """
    if threshold is None or think_prob is None:
        return "sample"
    return "think" if think_prob >= threshold else "no_think"


def first_step_args(key: str, close_id: int, enders: list[int], probe: bool, threshold: float | None = None,
                    forced: Route = "sample") -> dict[str, Any]:
    """What a request puts in ``SamplingParams.extra_args`` to have its first step measured and/or routed.

    >>> first_step_args("r1", 7, [7, 2], probe=True, threshold=0.5)[EXTRA_KEY]["threshold"]
    0.5
    """
    if forced != "sample" and threshold is not None:
        raise ValueError("a request is routed by a threshold or forced to a route, not both")
    return {EXTRA_KEY: {"key": key, "close": int(close_id), "enders": [int(t) for t in enders], "probe": bool(probe),
                        "threshold": threshold, "route": forced}}


class ProbabilityStore:
    """The first-step probabilities awaiting collection, oldest dropped beyond ``capacity`` (a client
    that went away after its first token never collects its own).

    >>> s = ProbabilityStore(capacity=2)
    >>> s.put("a", 0.1); s.put("b", 0.2); s.put("c", 0.3)
    >>> s.pop(["a", "c", "x"])
    {'c': 0.3}
    """

    def __init__(self, capacity: int = 1 << 16):
        self.capacity = capacity
        self._items: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, key: str, value: float) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def pop(self, keys: list[str]) -> dict[str, float]:
        with self._lock:
            return {k: self._items.pop(k) for k in keys if k in self._items}


STORE = ProbabilityStore()  # one per engine worker process


class _Tracked:
    __slots__ = ("key", "close", "enders", "probe", "threshold", "route", "temperature", "top_p", "output")

    def __init__(self, spec: dict[str, Any], temperature: float, top_p: float, output: list[int]):
        self.key, self.close, self.enders = str(spec["key"]), int(spec["close"]), list(spec.get("enders") or [spec["close"]])
        self.probe, self.threshold, self.route = bool(spec.get("probe")), spec.get("threshold"), spec.get("route") or "sample"
        self.temperature, self.top_p, self.output = temperature, top_p, output


def decide(t: _Tracked, row: torch.Tensor) -> Route:
    """Measure (into :data:`STORE`) and route one request's first-step logits row, in place."""
    p_close = close_probability(row, t.close, t.temperature, t.top_p) if t.probe or t.threshold is not None else None
    if p_close is not None and t.probe:
        STORE.put(t.key, p_close)
    chosen: Route = t.route if t.route != "sample" else route(None if p_close is None else 1.0 - p_close, t.threshold)
    if chosen == "no_think":
        keep = row[t.close].clone()
        row.fill_(float("-inf"))
        row[t.close] = keep if torch.isfinite(keep) else 0.0
    elif chosen == "think":
        row[t.enders] = float("-inf")
    return chosen


try:  # the engine side needs vLLM; the pure functions above do not
    from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality
except ImportError:  # pragma: no cover - the unit tests' environment has vLLM, the device machine may not
    LogitsProcessor = object  # type: ignore[assignment,misc]
    BatchUpdate = MoveDirectionality = None  # type: ignore[assignment,misc]
try:  # vLLM's Model Runner V2 (the default on CUDA) has an interface of its own
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as LogitsProcessorV2
except ImportError:  # pragma: no cover
    LogitsProcessorV2 = object  # type: ignore[assignment,misc]


class FirstStepProcessor(LogitsProcessor):  # type: ignore[misc,valid-type]
    """vLLM logits processor: measures and routes the first sampling step of the requests that ask
    (``extra_args[EXTRA_KEY]``, see :func:`first_step_args`); every other row is left alone."""

    def __init__(self, vllm_config: Any, device: Any, is_pin_memory: bool):
        self.rows: dict[int, _Tracked] = {}

    def is_argmax_invariant(self) -> bool:
        return False  # routing changes which token is most likely

    def update_state(self, batch_update: Any) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.rows.pop(index, None)
        for index, params, _prompt, output in batch_update.added:
            spec = (getattr(params, "extra_args", None) or {}).get(EXTRA_KEY) if params is not None else None
            if spec is not None and not output:  # a request resumed after its first token needs nothing
                self.rows[index] = _Tracked(spec, float(params.temperature), float(params.top_p), output)
            else:
                self.rows.pop(index, None)
        for a, b, direction in batch_update.moved:
            ta, tb = self.rows.pop(a, None), self.rows.pop(b, None)
            if ta is not None:
                self.rows[b] = ta
            if direction == MoveDirectionality.SWAP and tb is not None:
                self.rows[a] = tb

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits
        done = []
        for index, t in self.rows.items():
            if t.output:  # its first token is drawn: nothing more to do for it
                done.append(index)
            elif index < logits.shape[0]:
                decide(t, logits[index])
        for index in done:
            del self.rows[index]
        return logits


class FirstStepProcessorV2(LogitsProcessorV2):  # type: ignore[misc,valid-type]
    """The same, for vLLM's Model Runner V2 (the default on CUDA): requests live in slots; a slot's
    first sampling step is the one whose visible length equals its prompt's (shorter: a prefill
    chunk whose token is discarded; longer: the first token is drawn).  Rows are batch positions
    (no speculative decoding on this engine; with it a row is no longer a request, and the request
    then fails with "no record of its first step" rather than get a wrong value)."""

    def __init__(self, vllm_config: Any, req_states: Any):
        self.req_states = req_states
        self.slots: dict[int, _Tracked] = {}

    def add_request(self, req_idx: int, sampling_params: Any) -> bool:
        spec = (getattr(sampling_params, "extra_args", None) or {}).get(EXTRA_KEY)
        if spec is None:
            self.slots.pop(req_idx, None)
            return False
        self.slots[req_idx] = _Tracked(spec, float(sampling_params.temperature), float(sampling_params.top_p), [])
        return True

    def apply(self, logits: torch.Tensor, ctx: Any) -> torch.Tensor:
        if not self.slots:
            return logits
        slots = ctx.idx_mapping_np
        if logits.shape[0] != len(slots):  # speculative rows: not supported, see the class docstring
            return logits
        prompt_len = self.req_states.prompt_len.np
        for row, slot in enumerate(slots.tolist()):
            t = self.slots.get(slot)
            if t is None:
                continue
            visible, prompt = int(ctx.seq_lens_upper_bound_np[row]), int(prompt_len[slot])
            if visible == prompt:
                decide(t, logits[row])
            if visible >= prompt:  # the first token is drawn at this step, or was before
                del self.slots[slot]
        return logits


def processor_for(vllm_config: Any) -> type:
    """The processor class for the model runner this engine configuration uses."""
    return FirstStepProcessorV2 if getattr(vllm_config, "use_v2_model_runner", False) else FirstStepProcessor


class FirstStepExtension:
    """Mixed into vLLM's worker: the gateway collects first-step probabilities by key."""

    def pop_first_step(self, keys: list[str]) -> dict[str, float]:
        return STORE.pop(list(keys))
