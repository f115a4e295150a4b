"""`learner-probe`: one real GRPO update on synthetic lengths, a human summary, then one JSON line;
alone, under torchrun with two ranks, and at the issue's size (8k tokens, R1 vocabulary, <= 3 GiB)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from services.learner.probe import main, parse_lengths

ROOT = Path(__file__).resolve().parents[2]
SMALL = "layers=1,hidden=32,heads=2,kv_heads=1,intermediate=64,vocab=4096"
KEYS = {"peak_memory_bytes", "real_tokens", "computed_tokens", "micro_batches", "seconds", "device"}


def _probe(*args, torchrun=False, timeout=900):
    if torchrun:
        from tests.conftest import free_port

        cmd = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", "2", "--master_port", str(free_port()),
               "-m", "services.learner.probe", *args]
    else:
        cmd = [sys.executable, "-m", "services.learner.probe", *args]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-4000:]
    lines = r.stdout.strip().splitlines()
    return json.loads(lines[-1]), lines[:-1]


def test_help_and_bad_arguments(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "--lengths" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["--random-model", SMALL, "--lengths", "3x"])
    assert e.value.code == 2
    assert main(["--random-model", SMALL, "--lengths", "8", "--stage", "nope"]) == 2
    assert parse_lengths("30x256,2x8192") == [256] * 30 + [8192] * 2


@pytest.mark.slow
def test_bimodal_lengths_pad_little():
    """The issue's mix, 30 no-think answers of 256 tokens and 2 think answers of 8192, on a small
    model: the token-budget micro-batches compute at most 10 % more tokens than the samples hold."""
    out, human = _probe("--random-model", SMALL, "--lengths", "30x256,2x8192")
    assert KEYS <= out.keys()
    assert out["real_tokens"] == 30 * (256 + 128) + 2 * (8192 + 128)
    assert out["computed_tokens"] / out["real_tokens"] <= 1.10
    assert out["device"] == "cpu" and out["world_size"] == 1 and out["logprobs"] == "chunked"
    assert any("micro-batches" in line for line in human)


@pytest.mark.slow
def test_two_ranks_under_torchrun():
    out, human = _probe("--random-model", SMALL, "--lengths", "5x64,300", "--set", "optim.max_tokens_per_micro_batch=500",
                        "--set", "deepspeed.zero_stage=3", torchrun=True)
    assert out["world_size"] == 2 and out["zero_stage"] == 3
    assert out["real_tokens"] == 5 * (64 + 128) + 300 + 128
    assert out["micro_batches"] >= 1
    assert sum(line.startswith("{") for line in human) == 0  # one JSON line, from rank 0


@pytest.mark.slow
def test_eight_thousand_tokens_with_the_r1_vocabulary_fit_in_3_gib():
    """The plain computation would hold several fp32 [8320, 151936] copies (5 GB each)."""
    out, _ = _probe("--random-model", "r1-vocab-tiny", "--lengths", "8192")
    assert out["peak_memory_bytes"] <= 3 * 1024**3, out
    assert out["parameters"] > 19_000_000 and out["real_tokens"] == 8192 + 128
