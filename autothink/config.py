"""Typed configuration, defined once and importable without torch.

An experiment is one YAML file (or a bundled preset such as ``toy`` or ``paper``), then
environment overrides, then ``--set key.path=value`` overrides from the command line, validated
into :class:`RunConfig`.  Configuration never changes while a run is going.

Environment overrides use the prefix ``AUTOTHINK_`` and ``__`` between levels; list items are
addressed by index::

    AUTOTHINK_OPTIM__LR=5e-5  AUTOTHINK_STAGES__0__STEPS=3  autothink config show toy
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from autothink.rewards import RepetitionRule, RewardTable

log = logging.getLogger(__name__)

ENV_PREFIX = "AUTOTHINK_"
_TABLE, _RULE = RewardTable(), RepetitionRule()  # the reference defaults, defined in autothink.rewards


class Strict(BaseModel):
    """Base for config sections: unknown keys are errors, so typos never pass silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach -- the rule every service that listens
    applies before it starts without a key or token (gateway, reward, weight service).  A host
    name other than ``localhost`` may resolve to anything: not loopback.

    >>> [is_loopback(h) for h in ("127.0.0.1", "localhost", "[::1]", "::1", "0.0.0.0", "", "[::]", "10.0.0.5", "box")]
    [True, True, True, True, False, False, False, False, False]
    """
    import ipaddress

    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


EMBEDDED_TOY = "embedded:toy"


def embedded_toy_path() -> str:
    """The toy model committed with the package (autothink/toy/model/: one fixed artifact, so that
    every machine trains and tests the same weights; ``autothink toy build`` remakes one)."""
    return str(Path(__file__).resolve().parent / "toy" / "model")


class ModelConfig(Strict):
    path: str = Field(description=f"Local Hugging Face folder of the policy (no hub downloads); '{EMBEDDED_TOY}': the toy "
                      "model committed with the package.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"

    @field_validator("path")
    @classmethod
    def _embedded(cls, v: str) -> str:
        return embedded_toy_path() if v == EMBEDDED_TOY else v


class RewardConfig(Strict):
    """Base reward table and repetition guard.  The defaults are the reference implementation's
    (docs/design.md §3) and are written once, in :mod:`autothink.rewards`; this section only lets an
    experiment override them."""

    think_correct: float = _TABLE.think_correct
    think_wrong: float = _TABLE.think_wrong
    no_think_correct: float = _TABLE.no_think_correct
    no_think_wrong: float = _TABLE.no_think_wrong
    format_error: float = _TABLE.format_error
    repetition_penalty: float = _TABLE.repetition_penalty
    repetition_max_ngram: int = Field(_RULE.max_ngram, ge=1)
    repetition_min_repeats: int = Field(_RULE.min_repeats, ge=2)
    repetition_max_unbroken_chars: int = Field(_RULE.max_unbroken_chars, ge=1)

    def table(self) -> RewardTable:
        return RewardTable(**{f.name: getattr(self, f.name) for f in dataclasses.fields(RewardTable)})

    def rule(self) -> RepetitionRule:
        return RepetitionRule(**{f.name: getattr(self, f"repetition_{f.name}") for f in dataclasses.fields(RepetitionRule)})


class StageConfig(Strict):
    """One AutoThink stage: how much to sample and how to shape rewards."""

    name: str
    steps: int = Field(ge=1, description="Policy updates (training batches) in this stage.")
    prompts_per_batch: int = Field(ge=1)
    samples_per_prompt: int = Field(ge=2, description="GRPO group size; a group of one has no baseline.")
    max_response_tokens: int = Field(ge=1)
    temperature: float = Field(0.6, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    batch_balance_rate: float = Field(1.0, gt=0, le=1, description="gamma; 1.0 turns batch balance off.")
    penalty_slope: float = Field(2.0, ge=0)
    mode_floor: float = Field(
        0.0, ge=0, lt=0.5, description="Keep each mode's probability at every prompt's decision (the first response "
        "token: </think> or a thought) at least this high: a hinge on log p below it, counted like one token of "
        "advantage 1 per sample (autothink.grpo.mode_floor_penalty). 0 (the reference) turns it off. A change from "
        "the reference for stage 1: batch balance acts on the batch's share only, and a prompt whose samples all "
        "take one mode gives no advantage, so a level gone all-think cannot come back (issue #31).")
    alpha: float = Field(0.0, ge=0, description="Length shaping of correct samples (stage 3).")
    beta: float = Field(0.0, ge=0, description="Length shaping of wrong samples (stage 3).")
    trace_advantage: Literal["correctness", "reward"] = Field(
        "correctness", description="What the tokens after the mode decision learn from. 'reward' (the reference): every "
        "token gets the AutoThink reward's advantage, so a correct think trace is pushed down where direct answers are "
        "right (+1 < +2) and a wrong one up where they fail (0 > -1). 'correctness' (default, a change from the "
        "reference): the first response token (the mode decision) gets that advantage, the rest one from correctness "
        "and stage 3's length shaping (autothink.rewards.trace_rewards).")

    @property
    def samples_per_batch(self) -> int:
        return self.prompts_per_batch * self.samples_per_prompt


class OptimConfig(Strict):
    lr: float = Field(1e-6, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    clip_low: float = Field(0.2, ge=0, lt=1)
    clip_high: float = Field(0.2, ge=0)
    kl_coef: float = Field(
        0.0, ge=0,
        description="KL penalty against a frozen reference policy. AutoThink uses none (docs/design.md §3: KL coefficient 0) "
                    "and the learner keeps no reference model, so only 0 is accepted: a value that would be silently "
                    "ignored is refused instead.")
    epochs: int = Field(2, ge=1, description="Passes over each training batch (PPO epochs).")
    mini_batch_prompts: int = Field(64, ge=1)
    micro_batch_samples: int = Field(8, ge=1, description="At most this many samples per forward/backward pass.")
    max_tokens_per_micro_batch: int = Field(
        32_768, ge=64,
        description="Token budget of one forward/backward pass, padding included (autothink.packing): micro-batches "
        "are cut by it, length-aware, the same number on every rank. Memory of a pass grows with it.",
    )
    grad_clip: float = Field(1.0, gt=0)
    gradient_checkpointing: bool = True
    off_policy_correction: Literal["auto", "none", "tis", "mask"] = Field(
        "auto",
        description="Importance-sampling correction of the gap between the engine that sampled and the learner "
                    "(autothink.offpolicy): 'tis' truncates each token's weight pi_learner/pi_engine at is_cap, 'mask' "
                    "drops tokens whose weight leaves [1/is_cap, is_cap], 'none' only measures. 'auto': tis when "
                    "max_staleness >= 1, none when on-policy.")
    is_cap: float = Field(2.0, ge=1.0, description="Truncation (tis) or mask bound (mask) of the importance weights.")

    @field_validator("kl_coef")
    @classmethod
    def _no_silent_kl(cls, v: float) -> float:
        if v > 0:
            raise ValueError("a KL penalty is not implemented (AutoThink trains without one, docs/design.md §3); "
                             "set optim.kl_coef to 0 rather than have it ignored")
        return v


class DataConfig(Strict):
    source: str = Field("toy", description="'toy' or a JSON/JSONL/parquet file with problem and answer.")
    problem_key: str = "problem"
    answer_key: str = "answer"
    shuffle: bool = True
    balance_levels: bool = Field(
        False, description="Draw every difficulty level equally in each batch (autothink.data.interleave_levels; as many "
        "prompts of each level as the rarest has). The toy preset sets it: its file weights levels for the warm start.")


class DeepSpeedConfig(Strict):
    zero_stage: int = Field(2, ge=0, le=3)
    dtype: Literal["auto", "float32", "bfloat16"] = Field("auto", description="auto: bf16 on GPU, fp32 on CPU.")


class RedisConfig(Strict):
    url: str = "redis://127.0.0.1:6379/0"
    claim_idle_ms: int = Field(
        60_000, ge=100,
        description="An entry whose owner has not renewed its lease for this long is taken over (owners renew every quarter of it).")
    max_deliveries: int = Field(
        5, ge=1, description="An entry handed out this many times without being acknowledged goes to the dead-letter stream.")
    max_stream_len: int = Field(100_000, ge=100, description="Approximate trim length of each stream.")


class WeightSyncConfig(Strict):
    address: str = "127.0.0.1:50051"
    token: str = ""
    chunk_bytes: int = Field(4 << 20, ge=1 << 10)


class LoggingConfig(Strict):
    """Where the learner's per-step metrics go besides ``metrics.jsonl`` and Prometheus, and when
    it warns that training collapsed into one mode.

    The alarm watches what the paper's stage 1 guards against: under plain GRPO the policy drifts
    into one mode (all no-think, pulled by the +2 no-think reward, or all think) and a mode with no
    samples gets no advantage and never comes back; batch balance (gamma = 0.5) keeps both alive
    until stage 2 can reward the right one (arXiv 2505.10832, stage 1)."""

    trackers: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=list, description="Experiment trackers fed every step (optional extras: pip install "
        "'autothink-services[tensorboard]' etc.); the policy version is the step axis.")
    project: str = Field("autothink", description="W&B project / MLflow experiment name (the run is named after `name`).")
    mlflow_tracking_uri: str = Field("", description="MLflow store; empty: a local file store in output_dir/mlruns.")
    collapse_epsilon: float = Field(0.05, gt=0, lt=0.5, description=(
        "A think rate above 1 - epsilon counts as all-think, below epsilon as all-no-think (the collapse stage 1's "
        "batch balance exists to prevent)."))
    collapse_steps: int = Field(5, ge=1, description="Consecutive collapsed steps before the alarm rises (k).")
    collapse_levels: bool = Field(True, description=(
        "Also watch each difficulty level. In stages 2-3 the easiest level going (almost) all no-think is the "
        "intended outcome (paper: ~0.95 no-think at level 1), so a level alarm there is a note, the batch one never is."))
    collapse_min_level_samples: int = Field(8, ge=1, description="A level with fewer samples in a batch is not judged that step.")


class MonitorConfig(Strict):
    """The degeneration alarm (autothink.monitor.DegenerationMonitor): think-mode accuracy well
    below its running best while think answers grow or get cut at the length cap -- a run that
    keeps both modes (the collapse alarm stays silent) but loses the quality of its thinking."""

    on_degeneration: Literal["warn", "stop"] = Field(
        "warn", description="warn: log, /metrics, dashboard and trackers; stop: also end the run with a checkpoint "
        "(the learner exits with status 3 and says why).")
    degeneration_window: int = Field(5, ge=1, description="Steps each series is smoothed over.")
    degeneration_drop: float = Field(0.35, gt=0, lt=1, description="Smoothed think accuracy below (1 - drop) x its best.")
    degeneration_length_rise: float = Field(1.15, ge=1, description="... while think answers are this much longer than at the best,")
    degeneration_truncation_rise: float = Field(0.05, ge=0, description="... or cut at the cap this much more often.")
    degeneration_severe_drop: float = Field(0.5, gt=0, lt=1, description="Below (1 - severe_drop) x its best alone is enough.")
    degeneration_steps: int = Field(3, ge=1, description="Consecutive degenerate steps before the alarm rises.")

    @model_validator(mode="after")
    def _drops(self) -> "MonitorConfig":
        if self.degeneration_drop > self.degeneration_severe_drop:
            raise ValueError(f"degeneration_drop {self.degeneration_drop} must not exceed degeneration_severe_drop "
                             f"{self.degeneration_severe_drop}")
        return self


class RunConfig(Strict):
    """A whole experiment: model, data, stage schedule, optimiser and plumbing."""

    name: str = "autothink"
    seed: int = 0
    model: ModelConfig
    data: DataConfig = DataConfig()
    stages: list[StageConfig] = Field(min_length=1)
    optim: OptimConfig = OptimConfig()
    rewards: RewardConfig = RewardConfig()
    deepspeed: DeepSpeedConfig = DeepSpeedConfig()
    max_staleness: int = Field(0, ge=0, description="0 = on-policy; k = rollouts may lag k versions.")
    redis: RedisConfig = RedisConfig()
    weights: WeightSyncConfig = WeightSyncConfig()
    output_dir: str = "runs/autothink"
    logging: LoggingConfig = LoggingConfig()
    monitor: MonitorConfig = MonitorConfig()

    @field_validator("stages")
    @classmethod
    def _unique_stage_names(cls, stages: list[StageConfig]) -> list[StageConfig]:
        names = [s.name for s in stages]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"stage names must be unique, repeated: {sorted(dup)}")
        return stages

    @model_validator(mode="after")
    def _mini_batches_fit(self) -> RunConfig:
        mb = self.optim.mini_batch_prompts
        for s in self.stages:
            if s.prompts_per_batch % mb and mb % s.prompts_per_batch:
                raise ValueError(
                    f"stage {s.name!r}: prompts_per_batch={s.prompts_per_batch} is not a multiple of "
                    f"optim.mini_batch_prompts={mb}; a batch must split into whole mini-batches"
                )
        return self

    @model_validator(mode="after")
    def _responses_fit_the_token_budget(self) -> RunConfig:
        budget = self.optim.max_tokens_per_micro_batch
        for s in self.stages:
            if s.max_response_tokens > budget:
                raise ValueError(
                    f"stage {s.name!r}: max_response_tokens={s.max_response_tokens} exceeds "
                    f"optim.max_tokens_per_micro_batch={budget}; one response must fit in one micro-batch"
                )
        return self


# ----------------------------------------------------------------------------------------- loading

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration that cannot be loaded; the message says which rule was broken and where."""


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("autothink.presets").iterdir() if p.name.endswith(".yaml"))


def read_yaml(source: str | os.PathLike[str]) -> dict[str, Any]:
    """A YAML mapping from a file path or a bundled preset name."""
    path = Path(source)
    if path.is_file():
        text, where = path.read_text(), str(path)
    elif str(source) in preset_names():
        text = resources.files("autothink.presets").joinpath(f"{source}.yaml").read_text()
        where = f"preset {source!r}"
    else:
        raise ConfigError(f"no config file {str(source)!r} and no such preset; presets: {', '.join(preset_names())}")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _set_path(data: Any, path: list[str], value: Any, full: str) -> None:
    key, rest = path[0], path[1:]
    if isinstance(data, list):
        if not key.isdigit() or int(key) >= len(data):
            raise ConfigError(f"{full}: {key!r} is not an index of a list of {len(data)}")
        if rest:
            _set_path(data[int(key)], rest, value, full)
        else:
            data[int(key)] = value
        return
    if not isinstance(data, dict):
        raise ConfigError(f"{full}: cannot set {key!r} inside a {type(data).__name__}")
    if rest:
        _set_path(data.setdefault(key, {}), rest, value, full)
    else:
        data[key] = value


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Copy of ``data`` with each ``(dotted.path, yaml_value)`` applied."""
    out = copy.deepcopy(dict(data))
    for path, raw in overrides:
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: value {raw!r} is not valid YAML: {e}") from e
        _set_path(out, [p for p in path.split(".") if p], value, path)
    return out


def env_overrides(model: type[BaseModel], environ: Mapping[str, str], prefix: str = ENV_PREFIX) -> list[tuple[str, str]]:
    """``PREFIX_A__B=v`` → ``("a.b", "v")`` for variables whose first level is a field of ``model``."""
    fields = set(model.model_fields)
    out = []
    for name, value in sorted(environ.items()):
        if not name.startswith(prefix):
            continue
        path = [p.lower() for p in name[len(prefix) :].split("__")]
        if path[0] in fields:
            out.append((".".join(path), value))
        else:
            log.debug("ignoring %s: %r is not a field of %s", name, path[0], model.__name__)
    return out


def parse_set(items: Iterable[str]) -> list[tuple[str, str]]:
    """``["optim.lr=1e-5"]`` → ``[("optim.lr", "1e-5")]``."""
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key.path=value, got {item!r}")
        out.append((key.strip(), value))
    return out


def validate(model: type[M], data: Mapping[str, Any], where: str = "config") -> M:
    """Validate ``data`` into ``model``; errors name every broken rule and its location."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        lines = [f"{where} is invalid:"]
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
            lines.append(f"  {loc}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from None


def load_config(
    source: str | os.PathLike[str] = "toy",
    overrides: Iterable[str] = (),
    environ: Mapping[str, str] | None = None,
) -> RunConfig:
    """File or preset, then ``AUTOTHINK_*`` environment overrides, then ``--set`` overrides."""
    data = read_yaml(source)
    env = os.environ if environ is None else environ
    data = apply_overrides(data, env_overrides(RunConfig, env))
    data = apply_overrides(data, parse_set(overrides))
    return validate(RunConfig, data, where=str(source))


def merged(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``, mapping into mapping (a section's other keys stay).

    >>> merged({"redis": {"url": "a", "claim_idle_ms": 5}, "port": 1}, {"redis": {"url": "b"}})
    {'redis': {'url': 'b', 'claim_idle_ms': 5}, 'port': 1}
    """
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        out[k] = merged(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else copy.deepcopy(v)
    return out


def load_section(model: type[M], prefix: str, source: str | None = None, environ: Mapping[str, str] | None = None,
                 base: Mapping[str, Any] | None = None) -> M:
    """Load a service's own settings: ``base`` (its sections of the experiment: the run's one manifest),
    then the optional YAML file, then ``{prefix}*`` environment overrides."""
    data = merged(base or {}, read_yaml(source) if source else {})
    env = os.environ if environ is None else environ
    return validate(model, apply_overrides(data, env_overrides(model, env, prefix)), where=source or prefix + "*")
