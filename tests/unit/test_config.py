"""Configuration: presets hold the paper's numbers, overrides apply in order, errors say why."""

import subprocess
import sys

import pytest

from autothink.config import ConfigError, RunConfig, load_config, load_section, preset_names
from services.gateway.config import GatewayConfig


def test_presets_exist_and_validate():
    assert {"paper", "toy"} <= set(preset_names())
    for name in preset_names():
        assert isinstance(load_config(name, environ={}), RunConfig)


def test_paper_preset_matches_design():
    cfg = load_config("paper", environ={})
    s1, s2, s3 = cfg.stages
    assert (s1.prompts_per_batch, s1.samples_per_prompt, s1.max_response_tokens, s1.batch_balance_rate, s1.alpha) == (128, 8, 8192, 0.5, 0.0)
    assert (s2.prompts_per_batch, s2.samples_per_prompt, s2.max_response_tokens, s2.batch_balance_rate, s2.alpha) == (64, 8, 16384, 1.0, 0.0)
    assert (s3.prompts_per_batch, s3.samples_per_prompt, s3.max_response_tokens, s3.alpha, s3.beta) == (64, 8, 24576, 0.05, 0.05)
    assert all(s.temperature == 0.6 for s in cfg.stages)
    o = cfg.optim
    assert (o.lr, o.clip_low, o.clip_high, o.kl_coef, o.epochs, o.mini_batch_prompts) == (1e-6, 0.2, 0.2, 0.0, 2, 64)
    assert o.gradient_checkpointing


def test_env_then_set_overrides():
    env = {"AUTOTHINK_OPTIM__LR": "1e-5", "AUTOTHINK_STAGES__0__STEPS": "3", "AUTOTHINK_UNRELATED": "x", "PATH": "/bin"}
    cfg = load_config("toy", environ=env)
    assert cfg.optim.lr == 1e-5 and cfg.stages[0].steps == 3
    cfg = load_config("toy", ["optim.lr=2e-4", "stages.2.alpha=0.1", "model.path=/m"], environ=env)
    assert cfg.optim.lr == 2e-4 and cfg.stages[0].steps == 3 and cfg.stages[2].alpha == 0.1 and cfg.model.path == "/m"


def test_file_source(tmp_path):
    f = tmp_path / "exp.yaml"
    f.write_text("model: {path: /models/x}\nstages:\n  - {name: only, steps: 1, prompts_per_batch: 64, samples_per_prompt: 4, max_response_tokens: 10}\n")
    cfg = load_config(f, environ={})
    assert cfg.stages[0].samples_per_batch == 256 and cfg.optim.mini_batch_prompts == 64


@pytest.mark.parametrize(
    "override,message",
    [
        ("optim.lrr=1", "optim.lrr: Extra inputs are not permitted"),
        ("stages.0.samples_per_prompt=1", "stages.0.samples_per_prompt: Input should be greater than or equal to 2"),
        ("stages.0.batch_balance_rate=1.5", "stages.0.batch_balance_rate: Input should be less than or equal to 1"),
        ("optim.mini_batch_prompts=5", "not a multiple of optim.mini_batch_prompts=5"),
        ("stages.1.name=stage1", "stage names must be unique"),
        ("stages.9.steps=1", "'9' is not an index of a list of 3"),
        ("optim.lr", "--set expects key.path=value"),
    ],
)
def test_invalid_configs_say_what_is_wrong(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load_config("toy", [override], environ={})


def test_missing_and_malformed_sources(tmp_path):
    with pytest.raises(ConfigError, match="no config file 'nope.yaml' and no such preset"):
        load_config("nope.yaml", environ={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad, environ={})
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(bad, environ={})


def test_service_section_from_environment():
    cfg = load_section(GatewayConfig, "AUTOTHINK_GATEWAY_", environ={"AUTOTHINK_GATEWAY_PORT": "9000", "AUTOTHINK_GATEWAY_API_KEY": "k"})
    assert cfg.port == 9000 and cfg.api_key == "k"
    with pytest.raises(ConfigError, match="port: Input should be less than or equal to 65535"):
        load_section(GatewayConfig, "AUTOTHINK_GATEWAY_", environ={"AUTOTHINK_GATEWAY_PORT": "70000"})


def test_core_library_imports_without_torch():
    code = (
        "import sys; import autothink.config, autothink.rewards, autothink.prompting, entrypoints.cli; "
        "import services.reward.config, services.rollout.config, services.learner.config, services.gateway.config; "
        "heavy = [m for m in ('torch', 'vllm', 'deepspeed', 'transformers') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_reward_defaults_are_defined_once():
    """The config's reward section takes its defaults from the algorithm's table, field by field."""
    from autothink.config import RewardConfig
    from autothink.rewards import RepetitionRule, RewardTable

    assert RewardConfig().table() == RewardTable()
    assert RewardConfig().rule() == RepetitionRule()
    custom = RewardConfig(no_think_wrong=-3.0, repetition_min_repeats=5)
    assert custom.table() == RewardTable(no_think_wrong=-3.0)
    assert custom.rule() == RepetitionRule(min_repeats=5)


def test_a_kl_coefficient_is_refused_not_ignored():
    with pytest.raises(ConfigError, match="KL penalty is not implemented"):
        load_config("toy", ["optim.kl_coef=0.1"], environ={})
    assert load_config("toy", ["optim.kl_coef=0"], environ={}).optim.kl_coef == 0
