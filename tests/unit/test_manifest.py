"""The experiment is the run's one manifest (issue #33): every section of it is consumed by some
service, what a service takes it takes whole, and `autothink up` lists no setting by hand."""

from __future__ import annotations

import re

import pytest

from autothink.config import ConfigError, RunConfig, load_config
from services.manifest import LEARNER_ONLY, SLICES, service_slice, settings_model
from tests.conftest import ROOT


def test_every_section_of_the_experiment_is_someones():
    sections = set(RunConfig.model_fields)
    sliced = {s for taken in SLICES.values() for s in taken}
    assert sections == sliced | set(LEARNER_ONLY), (sections - sliced - set(LEARNER_ONLY), (sliced | set(LEARNER_ONLY)) - sections)


def test_an_unknown_section_is_rejected_not_ignored():
    with pytest.raises(ConfigError, match="rewardz"):
        load_config("toy", ["rewardz.think_wrong=-1"])


@pytest.mark.parametrize("service", sorted(SLICES))
def test_a_slice_has_the_same_type_in_the_service_as_in_the_experiment(service):
    model = settings_model(service)
    for section in SLICES[service]:
        assert model.model_fields[section].annotation is RunConfig.model_fields[section].annotation, (service, section)


def test_a_changed_section_arrives_whole():
    run = load_config("toy", ["rewards.think_wrong=-0.5", "rewards.repetition_min_repeats=4", "redis.max_deliveries=9"])
    data = run.model_dump(mode="json")
    reward = service_slice("reward", data, run_id="r", port=1)
    assert reward["rewards"] == data["rewards"] and reward["rewards"]["think_wrong"] == -0.5
    assert reward["redis"] == data["redis"] and reward["redis"]["max_deliveries"] == 9
    rollout = service_slice("rollout", data, run_id="r", port=2, model="m", max_model_len=512)
    assert rollout["weights"] == data["weights"] and rollout["redis"] == data["redis"]


def test_a_slice_the_service_refuses_stops_the_launch_with_its_reason():
    data = load_config("toy", ["redis.claim_idle_ms=150"]).model_dump(mode="json")  # the experiment allows 100, the rollout service 200
    with pytest.raises(ConfigError, match="claim_idle_ms"):
        service_slice("rollout", data, run_id="r", port=2, model="m")


def test_the_launcher_lists_no_reward_or_rollout_setting_by_hand():
    """What the manifest holds reaches those services through their --config file, never as an
    AUTOTHINK_REWARD_* / AUTOTHINK_ROLLOUT_* variable typed into the launcher."""
    text = (ROOT / "entrypoints" / "launcher.py").read_text()
    assert re.findall(r"AUTOTHINK_(?:REWARD|ROLLOUT)_\w+", text) == []
    assert "service_slice(" in text and '"--config"' in text


def test_every_cited_document_is_in_the_repository():
    """A citation such as "docs/design.md §3" or "DESIGN.md" must point at a file of the repository
    (issue #33: 16 places cited a DESIGN.md that was not in it)."""
    cited = re.compile(r"\b((?:[\w.-]+/)*[\w.-]+\.md)\b")
    missing = []
    for path in [*ROOT.glob("*.md"), *ROOT.glob("docs/**/*.md"), *ROOT.glob("autothink/**/*.py"), *ROOT.glob("services/**/*.py"),
                 *ROOT.glob("entrypoints/**/*.py"), *ROOT.glob("autothink/presets/*.yaml")]:
        for name in cited.findall(path.read_text(errors="replace")):
            if name.upper() == "DESIGN.MD" or name.startswith("docs/") or name in ("README.md", "BENCHMARKS.md"):
                if not ((ROOT / name).is_file() or (path.parent / name).is_file()):
                    missing.append(f"{path.relative_to(ROOT)}: {name}")
    assert missing == []
