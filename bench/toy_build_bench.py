"""Is the toy build robust?  ``autothink toy build --seed N`` for several build seeds, each into a
folder of its own, and a table of seed x target with the build time.

    .venv/bin/python bench/toy_build_bench.py --seeds 5          # make bench-toy-build (~45 min on 2 cores)

A build that meets every target on one machine and misses three on another is too close to its
edges (issue #31): the goal is every *quality* target of ``check_targets`` for every seed (the
build-time target is about the machine and is reported apart).  Seed 0 is the embedded toy's
settings; ``--reuse`` keeps folders already built with the same settings.  ``--benchmarks``
replaces the section of BENCHMARKS.md between its markers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.seeds_bench import replace_section  # noqa: E402

BEGIN, END = "<!-- toy-build:begin (bench/toy_build_bench.py --benchmarks) -->", "<!-- toy-build:end -->"


def margins(summary: dict[str, Any]) -> dict[str, float]:
    """How far each quality target is from its edge (positive: met with that much room).  The
    no-think rate is read as the targets read it (:func:`no_think_probability`: exact where the
    build has it, else sampled).

    >>> lv = [{"level": l, "think_acc": 1.0, "no_think_acc": 1.0 if l < 3 else 0.0, "ellipsis_no_think_rate": 0.5,
    ...        "ellipsis_direct_acc": 1.0 if l < 3 else 0.0, "think_tokens": 30.0, "minimal_think_tokens": 15.0} for l in (1, 2, 8)]
    >>> margins({"levels": lv})
    {'no-think rate in 0.3..0.7': 0.2, 'levels 1-2 think - 0.9': 0.1, 'levels 1-2 direct - 0.85': 0.15, 'L8 think - no-think - 0.3': 0.7, 'overthinking / minimal - 1.5': 0.5}
    """
    from autothink.toy.build import easy_direct_acc, no_think_probability

    levels = sorted(summary["levels"], key=lambda r: r["level"])
    easy, last = [r for r in levels if r["level"] <= 2], levels[-1]
    rates = [no_think_probability(r) for r in levels]
    think = sum(r["think_tokens"] for r in levels)
    minimal = sum(r["minimal_think_tokens"] for r in levels)
    return {
        "no-think rate in 0.3..0.7": round(min(min(rates) - 0.3, 0.7 - max(rates)), 4),
        "levels 1-2 think - 0.9": round(min(r["think_acc"] for r in easy) - 0.9, 4),
        "levels 1-2 direct - 0.85": round(easy_direct_acc(levels) - 0.85, 4),
        "L8 think - no-think - 0.3": round(last["think_acc"] - last["no_think_acc"] - 0.3, 4),
        "overthinking / minimal - 1.5": round(think / minimal - 1.5, 4),
    }


def markdown(rows: list[dict[str, Any]], started: str) -> str:
    from autothink.toy.build import BUILD_TARGET, no_think_probability

    names = [n for n in rows[0]["targets"] if n != BUILD_TARGET]
    head = "| build seed | " + " | ".join(names) + " | think L7 / L8 | P(no-think) (min-max) | SFT loss | build time |"
    lines = [head, "|" + "---|" * (len(names) + 5)]
    for r in rows:
        levels = {x["level"]: x for x in r["summary"]["levels"]}
        rates = [no_think_probability(x) for x in levels.values()]
        cells = " | ".join("met" if r["targets"][n] else "**missed**" for n in names)
        lines.append(f"| {r['seed']} | {cells} | {levels[7]['think_acc']:.2f} / {levels[8]['think_acc']:.2f} | "
                     f"{min(rates):.2f}-{max(rates):.2f} | {r['summary']['sft_loss'][1]:.4f} | {r['summary']['build_seconds']:.0f} s |")
    ok = sum(all(r["targets"][n] for n in names) for r in rows)
    worst = {k: min(r["margins"][k] for r in rows) for k in rows[0]["margins"]}
    return f"""## The toy build across build seeds (`bench/toy_build_bench.py`, `make bench-toy-build`)

`autothink toy build --seed N` ({started}; each build alone on the machine, every core): every quality target of
`check_targets` met for **{ok} of {len(rows)}** build seeds (goal: all). The build-time column is the machine's, not a
quality target. Smallest room left to a target over the seeds: {", ".join(f"{k} {v:+.2f}" for k, v in worst.items())}.

{chr(10).join(lines)}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5, help="How many build seeds (first-seed, first-seed + 1, ...).")
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--out", default="reports/toy-builds", help="One folder per build seed, its log and rows.json.")
    ap.add_argument("--reuse", action="store_true", help="Keep a folder already built with the same settings (the build's cache).")
    ap.add_argument("--benchmarks", action="store_true", help="Also write the section into BENCHMARKS.md.")
    args = ap.parse_args()
    from autothink.toy.build import check_targets

    out = (ROOT / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    autothink = str(Path(sys.executable).with_name("autothink"))
    rows = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        folder, log = out / f"seed{seed}", out / f"seed{seed}.log"
        print(f"[toy-builds] build seed {seed} -> {folder} (log {log})", file=sys.stderr, flush=True)
        cmd = [autothink, "toy", "build", "--seed", str(seed), "--out", str(folder), "--quiet"] + ([] if args.reuse else ["--force"])
        with log.open("wb") as f:
            r = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=f)
        if r.returncode != 0:
            raise SystemExit(f"build seed {seed} failed (exit {r.returncode}); its log: {log}")
        summary = json.loads(r.stdout.decode().strip().splitlines()[-1])
        targets = check_targets(summary)
        rows.append({"seed": seed, "summary": summary, "targets": targets, "margins": margins(summary)})
        print(f"[toy-builds] build seed {seed}: {sum(targets.values())}/{len(targets)} targets, {summary['build_seconds']:.0f} s",
              file=sys.stderr, flush=True)
        (out / "rows.json").write_text(json.dumps(rows, indent=1))
    text = markdown(rows, started)
    (out / "summary.md").write_text(text)
    if args.benchmarks:
        path = ROOT / "BENCHMARKS.md"
        path.write_text(replace_section(path.read_text(), text, BEGIN, END))
    print(text, file=sys.stderr)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
