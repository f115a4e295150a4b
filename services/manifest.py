"""The experiment file is the run's one manifest: each service's settings are *its slice* of it.

`autothink up` used to hand the reward and rollout services a few hand-listed environment
variables (the Redis URL, a port), so an experiment's ``rewards:`` section was validated and then
never reached the grader: a user who changed the base rewards trained with the defaults and was
told nothing (issue #33).  Here the sections a service shares with the experiment are copied whole
(:data:`SLICES`), the launcher adds what only it knows (run id, ports, the weight service's
address), the result is validated against the service's own settings model *before* anything
starts, and it is written to ``RUN/config/SERVICE.yaml`` for the service's ``--config``.  A
section added to a service's settings and to the experiment is passed on by adding its name here;
a test checks every experiment section is consumed by some service (tests/unit/test_manifest.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from autothink.config import validate

# service -> the experiment's sections it takes whole
SLICES: dict[str, tuple[str, ...]] = {
    "reward": ("redis", "rewards"),
    "rollout": ("redis", "weights"),
}

# the experiment's sections and who reads them: the learner reads the whole experiment file; these
# are the ones it alone uses (the coverage test: every section is someone's)
LEARNER_ONLY = ("name", "seed", "model", "data", "stages", "optim", "deepspeed", "max_staleness", "output_dir", "logging", "monitor")


def settings_model(service: str) -> type[BaseModel]:
    """The settings model a service validates its ``--config`` file with."""
    if service == "reward":
        from services.reward.config import RewardServiceConfig

        return RewardServiceConfig
    if service == "rollout":
        from services.rollout.config import RolloutServiceConfig

        return RolloutServiceConfig
    raise ValueError(f"no manifest slice for service {service!r} (known: {', '.join(SLICES)})")


def sections(service: str, experiment: dict[str, Any]) -> dict[str, Any]:
    """The experiment's sections that ``service`` takes whole (:data:`SLICES`)."""
    return {k: experiment[k] for k in SLICES[service] if k in experiment}


def service_slice(service: str, experiment: dict[str, Any], **runtime: Any) -> dict[str, Any]:
    """``service``'s settings: its sections of ``experiment`` (a dumped RunConfig), then the values
    only the launcher knows; validated by the service's model (:class:`ConfigError` naming it).

    >>> exp = {"redis": {"url": "redis://h:1/0"}, "rewards": {"think_wrong": -0.5}, "stages": []}
    >>> s = service_slice("reward", exp, run_id="r1", port=9)
    >>> s["rewards"]["think_wrong"], s["redis"]["url"], s["run_id"], "stages" in s
    (-0.5, 'redis://h:1/0', 'r1', False)
    >>> service_slice("reward", exp, color="red")
    Traceback (most recent call last):
    ...
    autothink.config.ConfigError: reward's settings from the experiment is invalid:
      color: Extra inputs are not permitted
    """
    data = sections(service, experiment) | runtime
    model = settings_model(service)
    validated = validate(model, data, where=f"{service}'s settings from the experiment")
    return validated.model_dump(mode="json")


def write_slice(config_dir: Path, service: str, settings: dict[str, Any]) -> Path:
    """``config_dir/SERVICE.yaml``, readable by its owner only (it may hold the weight token)."""
    config_dir.mkdir(parents=True, exist_ok=True)
    path = config_dir / f"{service}.yaml"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"# {service}'s slice of {config_dir.parent / 'experiment.yaml'}, written by the launcher; edit the experiment instead\n")
        yaml.safe_dump(settings, f, sort_keys=False)
    return path


__all__ = ["LEARNER_ONLY", "SLICES", "sections", "service_slice", "settings_model", "write_slice"]
