"""Stage 1 on a weak warm start, under each trace rule: does think mode keep its quality?

    .venv/bin/python bench/weak_stage1_bench.py            # ~20 min on 2 cores: a 400-step toy, then one run per rule

Builds a deliberately weak toy (`autothink toy build --steps 400`: thinking right 0.05-0.47 from
level 4 on; it misses its targets, so each run needs --allow-weak-model), then runs the toy
preset's stage 1 alone (30 steps, 16 prompts x 8 samples, gamma 0.5) through `autothink up` once
per value of `stages[0].trace_advantage`, and prints, per rule, think accuracy at fixed difficulty
(first 5 steps -> last 10; autothink.monitor.think_accuracy_at_fixed_difficulty), the think rate,
the degeneration and collapse alarms.  ``--rows RUN=DIR ...`` only tabulates runs made before.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    from autothink.monitor import think_accuracy_at_fixed_difficulty

    fixed = [a for a in think_accuracy_at_fixed_difficulty(rows)]

    def mean(xs: list[Any]) -> float | None:
        xs = [x for x in xs if x is not None]
        return round(sum(xs) / len(xs), 3) if xs else None

    return {
        "steps": len(rows),
        "fixed_start": mean(fixed[:5]), "fixed_end": mean(fixed[-10:]),
        "think_rate_start": mean([r["think_rate"] for r in rows[:5]]), "think_rate_end": mean([r["think_rate"] for r in rows[-10:]]),
        "think_len_end": mean([r["mean_length_think"] or None for r in rows[-10:]]),
        "accuracy_end": mean([r["accuracy"] for r in rows[-10:]]),
        "degeneration_from": next((r["step"] for r in rows if r.get("degeneration")), None),
        "collapse_from": next((r["step"] for r in rows if r.get("mode_collapse")), None),
    }


def markdown(named: dict[str, dict[str, Any]]) -> str:
    def f(x: Any) -> str:
        return "-" if x is None else (f"{x:.2f}" if isinstance(x, float) else str(x))

    lines = ["| trace rule | think acc at fixed difficulty, steps 0-4 → 20-29 | think rate 0-4 → 20-29 | think tokens (20-29) | "
             "batch accuracy (20-29) | degeneration alarm from step | collapse alarm from step |",
             "|---|---|---|---|---|---|---|"]
    for name, s in named.items():
        lines.append(f"| {name} | {f(s['fixed_start'])} → {f(s['fixed_end'])} | {f(s['think_rate_start'])} → {f(s['think_rate_end'])} | "
                     f"{f(s['think_len_end'])} | {f(s['accuracy_end'])} | {f(s['degeneration_from'])} | {f(s['collapse_from'])} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="reports/weak-stage1")
    ap.add_argument("--rows", nargs="*", default=None, metavar="NAME=RUN_DIR", help="Tabulate these run folders; run nothing.")
    args = ap.parse_args()
    if args.rows is not None:
        named = {}
        for item in args.rows:
            name, folder = item.split("=", 1)
            named[name] = summary([json.loads(x) for x in (Path(folder) / "metrics.jsonl").read_text().splitlines() if x.strip()])
        print(markdown(named))
        return
    import yaml

    from autothink.config import load_config

    out = (ROOT / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    autothink = str(Path(sys.executable).with_name("autothink"))
    toy = out / "weak-toy"
    subprocess.run([autothink, "toy", "build", "--out", str(toy), "--steps", "400", "--quiet"], check=True, stdout=subprocess.DEVNULL)
    base = load_config("toy", environ={}).model_dump(mode="json")
    named = {}
    for k, rule in enumerate(("reward", "correctness")):
        exp = {**base, "name": f"weak-stage1-{rule}", "model": {"path": str(toy), "dtype": "float32"},
               "stages": [{**base["stages"][0], "steps": 30, "trace_advantage": rule}], "output_dir": str(out / f"run-{rule}")}
        path = out / f"{rule}.yaml"
        path.write_text(yaml.safe_dump(exp, sort_keys=False))
        print(f"[weak-stage1] {rule}: autothink up {path}", file=sys.stderr, flush=True)
        subprocess.run([autothink, "up", str(path), "--exit-when-trained", "--allow-weak-model", "--quiet", "--run-id", f"weak-{rule}",
                        "--port", str(8190 + k)], check=True, stdout=subprocess.DEVNULL)
        named[rule] = summary([json.loads(x) for x in (out / f"run-{rule}" / "metrics.jsonl").read_text().splitlines() if x.strip()])
    print(markdown(named))
    print(json.dumps(named))


if __name__ == "__main__":
    main()
