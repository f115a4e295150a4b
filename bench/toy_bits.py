"""What makes two toy builds differ bit for bit?  The same 15 warm-start steps under each of the
settings a machine decides -- torch's thread count, its CPU kernels (ATEN_CPU_CAPABILITY), MKL's
reproducibility mode (MKL_CBWR) -- each in a fresh process, and the sha256 of the weights.

    .venv/bin/python bench/toy_bits.py          # ~2 min on 2 cores

Each setting is deterministic on its own (tests/integration/test_toy_build.py), but they differ
from each other in the last bits after a few steps, and 1600 steps turn that into different
models; so the project commits one toy model (autothink/toy/model) instead of trusting a build.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = [
    ("1 thread", {"OMP_NUM_THREADS": "1"}),
    ("2 threads", {"OMP_NUM_THREADS": "2"}),
    ("2 threads, AVX2 kernels", {"OMP_NUM_THREADS": "2", "ATEN_CPU_CAPABILITY": "avx2"}),
    ("2 threads, AVX2 kernels, MKL_CBWR=AVX2", {"OMP_NUM_THREADS": "2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2"}),
    ("1 thread, AVX2 kernels, MKL_CBWR=AVX2", {"OMP_NUM_THREADS": "1", "ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2"}),
]
CHILD = """
import hashlib, sys, torch
from pathlib import Path
from autothink.toy.build import ToySettings, warm_start
from autothink.toy.task import eval_split, train_split
s = ToySettings(sft_steps=15, train_problems=400, batch_size=16)
r = warm_start(Path(sys.argv[1]), s, train_split(0, s.train_problems, {p.problem for p in eval_split(0, 4)}), progress=False)
print(torch.backends.cpu.get_cpu_capability(), hashlib.sha256((Path(sys.argv[1]) / "model.safetensors").read_bytes()).hexdigest()[:16],
      repr(r["loss_last"]))
"""


def main() -> None:
    print("| setting | kernels | sha256 of the weights (first 16) | last loss |\n|---|---|---|---|")
    for name, env in SETTINGS:
        with tempfile.TemporaryDirectory() as d:
            out = subprocess.run([sys.executable, "-c", CHILD, d], env={**os.environ, **env}, cwd=ROOT, capture_output=True,
                                 text=True, check=True).stdout.strip().splitlines()[-1].split()
        print(f"| {name} | {out[0]} | `{out[1]}` | {out[2]} |", flush=True)


if __name__ == "__main__":
    main()
