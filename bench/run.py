"""`make bench`: run every benchmark and rewrite BENCHMARKS.md from what they print.

Each figure is a ratio against a baseline measured in the same run, on this machine.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_json(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def grader_section(g: dict) -> str:
    rows = []
    for name, label in (
        ("self", "MATH500 answers vs themselves"),
        ("rewritten", "MATH500 answers rewritten (\\dfrac, $…$, spacing, x =, period, \\left)"),
        ("arithmetic", "MATH500 integer/fraction answers as unreduced fractions (needs parsing)"),
    ):
        r = g[name]
        rows.append(
            f"| {label} | {r['ours_grades_per_s']:.0f} | {r['math_verify_grades_per_s']:.0f} | **{r['speed_ratio']:.1f}×** "
            f"| {r['ours_accepted']}/{r['count']} | {r['math_verify_accepted']}/{r['count']} "
            f"| {r['ours_worst_s'] * 1000:.1f} ms | {r['math_verify_worst_s'] * 1000:.1f} ms |"
        )
    adv = "\n".join(
        f"| `{a['input']}` | {a['ours_s'] * 1000:.0f} ms ({a['ours_status']}) | {a['math_verify_s'] * 1000:.0f} ms ({a['math_verify']}) |"
        for a in g["adversarial"]
    )
    return f"""## Grader (`bench/grader_bench.py`)

Baseline: math-verify {g.get('math_verify_version', '')} on the same inputs, same process, single thread
(median of {g['repeats']} passes; our comparison cache is cleared before every grade, so repeated
answers are not free). "Accepted" counts grades judged correct: every input here is correct.

| inputs | ours grades/s | math-verify grades/s | speed | ours accepted | math-verify accepted | ours worst | math-verify worst |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Through the process pool (hard 2 s limit per grade, 2 workers, IPC included):
{g['pool_2_workers_grades_per_s']:.0f} grades/s on the rewritten set.

Adversarial inputs (graded against "1"; ours through the pool, math-verify in a child process
stopped after 10 s). Worst case: ours {g['ours_worst_adversarial_s'] * 1000:.0f} ms, math-verify
{g['math_verify_worst_adversarial_s'] * 1000:.0f} ms.

| input | ours | math-verify |
|---|---|---|
{adv}
"""


def main() -> None:
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    grader = run_json(["bench/grader_bench.py", "--data", sys.argv[1] if len(sys.argv) > 1 else "../shared/data/benchmarks/math.json"])
    text = f"""# Benchmarks

Written by `make bench` on {started} ({platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores).
Every figure is measured against its baseline in the same run; machines here are noisy, so
compare ratios, not absolute numbers.

{grader_section(grader)}
"""
    (ROOT / "BENCHMARKS.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
