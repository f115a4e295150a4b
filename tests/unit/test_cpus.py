"""AUTOTHINK_CPUS: parsing, the split `autothink up` plans, and pinning a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from autothink.cpus import format_cpu_list, parse_cpu_list, plan_cpus
from tests.conftest import ROOT


@pytest.mark.parametrize("bad", ["", "a", "1-", "3-1", "-2", "0,,1", "1.5"])
def test_bad_lists_are_refused_with_the_variable_named(bad):
    with pytest.raises(ValueError, match="AUTOTHINK_CPUS"):
        parse_cpu_list(bad)


def test_lists_round_trip():
    for cpus in ([0], [0, 1], [0, 2, 3, 4, 9], list(range(64))):
        assert parse_cpu_list(format_cpu_list(cpus)) == cpus


def test_split_only_when_generation_overlaps_training_on_cpus():
    assert plan_cpus(range(8), max_staleness=2, on_gpu=False) == {"rollout": "0-3", "learner": "4-7"}
    assert plan_cpus([2, 3, 6, 7], max_staleness=1, on_gpu=False) == {"rollout": "2-3", "learner": "6-7"}
    assert plan_cpus(range(8), max_staleness=0, on_gpu=False) == {}  # on-policy: each phase gets every core in turn
    assert plan_cpus(range(8), max_staleness=1, on_gpu=True) == {}  # the roles have their own devices
    assert plan_cpus([0], max_staleness=1, on_gpu=False, split=True) == {}  # one core: nothing to split
    assert plan_cpus(range(4), max_staleness=1, on_gpu=False, split=False) == {}


PROBE = ("import json, os, sys; from autothink.cpus import pin_from_env; import torch; "
         "cpus = pin_from_env(); print(json.dumps([cpus, sorted(os.sched_getaffinity(0)), os.environ.get('OMP_NUM_THREADS'), "
         "os.environ.get('VLLM_CPU_OMP_THREADS_BIND'), torch.get_num_threads()]))")


def _probe(**env: str) -> list:
    base = {k: v for k, v in os.environ.items() if k not in ("AUTOTHINK_CPUS", "OMP_NUM_THREADS", "VLLM_CPU_OMP_THREADS_BIND")}
    r = subprocess.run([sys.executable, "-c", PROBE], env={**base, **env}, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_pinning_sets_affinity_threads_and_the_vllm_binding():
    last = max(os.sched_getaffinity(0))
    assert _probe(AUTOTHINK_CPUS=str(last)) == [[last], [last], "1", str(last), 1]
    # two local ranks (torchrun) share the cores: each gets half the threads
    if len(os.sched_getaffinity(0)) >= 2:
        both = sorted(os.sched_getaffinity(0))[:2]
        assert _probe(AUTOTHINK_CPUS=format_cpu_list(both), LOCAL_WORLD_SIZE="2")[:3] == [both, both, "1"]
    unset = _probe()
    assert unset[0] is None and unset[1] == sorted(os.sched_getaffinity(0)) and unset[3] is None


@pytest.mark.parametrize("spec,message", [("zero", "expected core ids"), ("4096", "are not available")])
def test_a_service_with_bad_cores_exits_2_saying_why(spec, message):
    env = {**os.environ, "AUTOTHINK_CPUS": spec, "AUTOTHINK_REWARD_REDIS__URL": "redis://127.0.0.1:1/0"}
    r = subprocess.run([sys.executable, "-m", "services.reward"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
