"""Two data-parallel ranks under torchrun (gloo) make the same update as one process."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow
HELPER = Path(__file__).with_name("_ranked_step.py")


@pytest.mark.parametrize("zero", [2, 3])
def test_two_ranks_match_one(toy_model, tmp_path, zero):
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    subprocess.run([sys.executable, str(HELPER), str(toy_model[0]), str(zero), str(one)], check=True, timeout=600,
                   capture_output=True)
    from tests.conftest import free_port

    torchrun = str(Path(sys.executable).with_name("torchrun"))
    r = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()), str(HELPER), str(toy_model[0]), str(zero), str(two)],
                       timeout=600, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-4000:]
    a, b = torch.load(one), torch.load(two)
    assert a["world"] == 1 and b["world"] == 2
    assert a["state"].keys() == b["state"].keys()
    moved = 0
    base = None
    for k in a["state"]:
        assert torch.allclose(a["state"][k], b["state"][k], atol=2e-6), (k, (a["state"][k] - b["state"][k]).abs().max())
    from safetensors.torch import load_file

    base = load_file(str(toy_model[0] / "model.safetensors"))
    moved = sum(not torch.equal(base[k], a["state"][k]) for k in base if k in a["state"])
    assert moved > len(base) // 2
