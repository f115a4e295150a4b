"""Typed messages of the trajectory bus and their wire codec.

A message is one Redis stream entry: small fields as JSON (``meta``) and the bulky per-token
arrays packed as binary — token ids as little-endian int32, log-probs as float32, all samples
of a group concatenated, with per-sample lengths in ``meta``.  An 8k-token sample costs 64 KiB,
not the ~150 KiB of a JSON list.  Decoding checks everything and raises :class:`MessageError`
with the reason, which sends the entry to the dead-letter stream instead of crashing a consumer.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

WIRE_VERSION = "1"
MAX_META_BYTES = 16 << 20
STRATEGIES = ("standard", "no_think", "ellipsis")  # autothink.prompting.STRATEGIES, without importing it
#: How deep ``metadata``, ``level`` and ``answer`` may nest.  Deeper JSON decodes, but copying it
#: (``asdict`` when the scored group is written) overflows the stack -- a failure that would
#: repeat on every delivery, so it is refused here, where refusals dead-letter at once.
MAX_NESTING = 32


class MessageError(ValueError):
    """An entry that is not a valid message of the expected type (the reason is the message)."""


@dataclass
class PromptMsg:
    """One prompt to sample ``n`` responses for: one GRPO group."""

    group_id: str
    problem: str
    answer: Any = None  # a string, a number or a list of acceptable answers; None when unknown
    prompt: str = ""  # the full prompt text; empty: built from ``problem`` with ``strategy``
    strategy: str = "ellipsis"
    n: int = 8
    temperature: float = 0.6
    top_p: float = 1.0
    max_tokens: int = 1024
    level: Any = None
    step: int = -1  # the learner step this group is for
    min_policy_version: int = 0  # sample with at least this policy version (bounded staleness)
    epoch: int = 0  # the learner incarnation that asked (incremented on every resume): older ones are fenced off
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sample:
    """One sampled response."""

    text: str
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str = "stop"


@dataclass
class Score:
    """How the reward service judged one sample (the base reward, before shaping)."""

    mode: str  # think / no_think (a response that never closes </think> counts as think)
    format_ok: bool  # closed </think> and boxed an answer after it
    correct: bool | None  # None: the grade could not be made (status timeout / error) -- not a wrong answer
    status: str  # the grader's status, or no_ground_truth
    reward: float
    length: int
    extracted: str | None = None


@dataclass
class RolloutGroup:
    prompt: PromptMsg
    policy_version: int
    samples: list[Sample]
    prompt_token_ids: list[int] = field(default_factory=list)
    worker: str = ""

    @property
    def group_id(self) -> str:
        return self.prompt.group_id


@dataclass
class ScoredGroup:
    prompt: PromptMsg
    policy_version: int
    samples: list[Sample]
    scores: list[Score]
    prompt_token_ids: list[int] = field(default_factory=list)
    worker: str = ""
    scorer: str = ""

    @property
    def group_id(self) -> str:
        return self.prompt.group_id


# ------------------------------------------------------------------------------------------ codec


def _pack(samples: list[Sample]) -> tuple[bytes, bytes, list[int]]:
    lengths = [len(s.token_ids) for s in samples]
    for s in samples:
        if len(s.logprobs) not in (0, len(s.token_ids)):
            raise MessageError(f"sample has {len(s.token_ids)} tokens but {len(s.logprobs)} log-probs")
    ids = np.concatenate([np.asarray(s.token_ids, dtype="<i4") for s in samples]) if samples else np.zeros(0, "<i4")
    lps = np.concatenate(
        [np.asarray(s.logprobs if s.logprobs else [np.nan] * len(s.token_ids), dtype="<f4") for s in samples]
    ) if samples else np.zeros(0, "<f4")
    return ids.tobytes(), lps.tobytes(), lengths


def _unpack(ids_b: bytes, lps_b: bytes, lengths: list[int], texts: list[str], reasons: list[str]) -> list[Sample]:
    if len(ids_b) % 4 or len(lps_b) % 4:
        raise MessageError("binary fields are not whole 4-byte values")
    ids = np.frombuffer(ids_b, dtype="<i4")
    lps = np.frombuffer(lps_b, dtype="<f4")
    if sum(lengths) != len(ids) or len(ids) != len(lps):
        raise MessageError(f"lengths sum to {sum(lengths)} but there are {len(ids)} ids and {len(lps)} log-probs")
    if not (isinstance(lengths, list) and isinstance(texts, list) and isinstance(reasons, list)):
        raise MessageError("lengths, texts and finish_reasons must be lists")
    if not (len(lengths) == len(texts) == len(reasons)):
        raise MessageError("per-sample lists differ in length")
    if not all(isinstance(t, str) for t in texts) or not all(isinstance(r, str) for r in reasons):
        raise MessageError("texts and finish_reasons must be strings")
    if not all(_is_int(n) for n in lengths):
        raise MessageError("lengths must be integers")
    out, pos = [], 0
    for n, text, reason in zip(lengths, texts, reasons):
        if n < 0:
            raise MessageError("negative sample length")
        chunk_lp = lps[pos : pos + n]
        out.append(
            Sample(text, ids[pos : pos + n].tolist(), [] if n and np.isnan(chunk_lp).all() else chunk_lp.tolist(), reason)
        )
        pos += n
    return out


def _prompt_from(data: Any) -> PromptMsg:
    if not isinstance(data, dict):
        raise MessageError("prompt is not an object")
    known = {f.name for f in fields(PromptMsg)}
    unknown = set(data) - known
    if unknown:
        raise MessageError(f"prompt has unknown fields {sorted(unknown)}")
    try:
        p = PromptMsg(**data)
    except TypeError as e:
        raise MessageError(f"prompt: {e}") from None
    if not isinstance(p.group_id, str) or not p.group_id:
        raise MessageError("prompt.group_id must be a non-empty string")
    if not isinstance(p.problem, str):
        raise MessageError("prompt.problem must be a string")
    if not isinstance(p.prompt, str) or not isinstance(p.strategy, str):
        raise MessageError("prompt.prompt and prompt.strategy must be strings")
    for name, low in (("n", 1), ("max_tokens", 1), ("min_policy_version", 0), ("step", -1), ("epoch", 0)):
        value = getattr(p, name)
        if not _is_int(value) or value < low:
            raise MessageError(f"prompt.{name} must be an integer >= {low}, not {value!r}")
    if not _is_number(p.temperature) or not 0 <= p.temperature <= 100:
        raise MessageError(f"prompt.temperature must be a number in [0, 100], not {p.temperature!r}")
    if not _is_number(p.top_p) or not 0 < p.top_p <= 1:
        raise MessageError(f"prompt.top_p must be a number in (0, 1], not {p.top_p!r}")
    if not isinstance(p.metadata, dict):
        raise MessageError("prompt.metadata must be an object")
    if p.strategy not in STRATEGIES:
        raise MessageError(f"prompt.strategy must be one of {', '.join(STRATEGIES)}, not {p.strategy[:40]!r}")
    if not _is_answer(p.answer):
        raise MessageError("prompt.answer must be null, a string, a number or a list of strings and numbers, "
                           f"not {_kind(p.answer)}")
    for name in ("metadata", "level"):
        if _depth(getattr(p, name)) > MAX_NESTING:
            raise MessageError(f"prompt.{name} nests deeper than {MAX_NESTING} levels")
    return p


def _is_answer(a: Any) -> bool:
    """None, text, a (finite) number, or a flat list of text and numbers -- what the grader reads.
    ``True`` and objects are refused: graded as text they would be the answers "True" and "{...}"."""
    if a is None or isinstance(a, str) or _is_number(a):
        return True
    return isinstance(a, list) and all(isinstance(x, str) or _is_number(x) for x in a)


def _kind(x: Any) -> str:
    return "a boolean" if isinstance(x, bool) else {dict: "an object", list: "a list with other items"}.get(type(x), type(x).__name__)


def _depth(x: Any, limit: int = MAX_NESTING + 1) -> int:
    """Nesting depth of a JSON value, counted up to ``limit`` (iteratively: no recursion to overflow)."""
    deepest, stack = 0, [(x, 1)]
    while stack:
        value, d = stack.pop()
        if isinstance(value, (dict, list)):
            deepest = max(deepest, d)
            if d >= limit:
                return d
            stack.extend((v, d + 1) for v in (value.values() if isinstance(value, dict) else value))
    return deepest


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return (isinstance(x, (int, float)) and not isinstance(x, bool)) and x == x and abs(x) != float("inf")


def encode(msg: PromptMsg | RolloutGroup | ScoredGroup) -> dict[str, bytes | str]:
    """Stream-entry fields for ``msg``."""
    if isinstance(msg, PromptMsg):
        return {"type": "prompt", "v": WIRE_VERSION, "meta": json.dumps(asdict(msg))}
    ids, lps, lengths = _pack(msg.samples)
    meta: dict[str, Any] = {
        "prompt": asdict(msg.prompt),
        "policy_version": msg.policy_version,
        "lengths": lengths,
        "texts": [s.text for s in msg.samples],
        "finish_reasons": [s.finish_reason for s in msg.samples],
        "prompt_token_ids": list(msg.prompt_token_ids),
        "worker": msg.worker,
    }
    kind = "rollout"
    if isinstance(msg, ScoredGroup):
        if len(msg.scores) != len(msg.samples):
            raise MessageError("a scored group needs one score per sample")
        meta["scores"] = [asdict(s) for s in msg.scores]
        meta["scorer"] = msg.scorer
        kind = "scored"
    return {"type": kind, "v": WIRE_VERSION, "meta": json.dumps(meta), "ids": ids, "lp": lps}


def _field(entry: dict[Any, Any], name: str) -> bytes:
    value = entry.get(name.encode(), entry.get(name))
    if value is None:
        raise MessageError(f"missing field {name!r}")
    return value if isinstance(value, bytes) else str(value).encode()


def decode(entry: dict[Any, Any], expect: str) -> PromptMsg | RolloutGroup | ScoredGroup:
    """Decode stream-entry fields into the message type ``expect`` (prompt, rollout or scored)."""
    kind = _field(entry, "type").decode(errors="replace")
    if kind != expect:
        raise MessageError(f"expected a {expect} message, got {kind!r}")
    version = _field(entry, "v").decode(errors="replace")
    if version != WIRE_VERSION:
        raise MessageError(f"wire version {version!r} is not {WIRE_VERSION!r}")
    raw = _field(entry, "meta")
    if len(raw) > MAX_META_BYTES:
        raise MessageError("meta field too large")
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MessageError(f"meta is not JSON: {e}") from None
    if kind == "prompt":
        return _prompt_from(meta)
    if not isinstance(meta, dict):
        raise MessageError("meta is not an object")
    try:
        samples = _unpack(_field(entry, "ids"), _field(entry, "lp"), meta["lengths"], meta["texts"], meta["finish_reasons"])
        prompt = _prompt_from(meta["prompt"])
        version_no = meta["policy_version"]
        if not _is_int(version_no) or version_no < 0:
            raise MessageError(f"policy_version must be an integer >= 0, not {version_no!r}")
        prompt_ids = meta.get("prompt_token_ids", [])
        if not isinstance(prompt_ids, list) or not all(_is_int(t) and 0 <= t < 2**31 for t in prompt_ids):
            raise MessageError("prompt_token_ids must be a list of token ids (integers in [0, 2^31))")
        if not samples:
            raise MessageError(f"a {kind} group needs at least one sample")
        if kind == "rollout":
            return RolloutGroup(prompt, version_no, samples, prompt_ids, str(meta.get("worker", "")))
        scores = [Score(**s) for s in meta["scores"]]
        if len(scores) != len(samples):
            raise MessageError("one score per sample expected")
        return ScoredGroup(prompt, version_no, samples, scores, prompt_ids, str(meta.get("worker", "")), str(meta.get("scorer", "")))
    except KeyError as e:
        raise MessageError(f"meta lacks {e.args[0]!r}") from None
    except (TypeError, ValueError, OverflowError) as e:
        if isinstance(e, MessageError):
            raise
        raise MessageError(f"malformed {kind} message: {e}") from None
