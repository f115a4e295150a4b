"""Learner at long responses: chunked LM head vs full-vocabulary logits, in the same run.

Each measurement is one `learner-probe` (one GRPO update: old log-prob pass, loss, backward,
optimizer step) in a process of its own, so its peak resident memory (CPU) or allocator peak (GPU)
is that measurement's alone.  The model is a 2-layer Qwen2 of hidden size 64 with the R1
vocabulary (151,936, untied head): the LM head dominates, as it does for long responses of a real
model.  Prints a table for people and, last, one JSON object.

    python bench/learner_bench.py                       # default lengths
    python bench/learner_bench.py --lengths 512,2048 --plain-max 2048
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIB = 1024**3


def probe(length: int, plain: bool, shape: str, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "services.learner.probe", "--random-model", shape, "--lengths", str(length), *extra]
    if plain:
        cmd.append("--plain-logprobs")
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": (out.stderr or out.stdout)[-2000:], "wall_s": time.perf_counter() - t0}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", default="256,1024,2048,8192", help="response lengths, one update each (comma list)")
    p.add_argument("--plain-max", type=int, default=2048,
                   help="measure the plain computation only up to this length (its [T, V] fp32 copies grow ~0.6 GB per 1k tokens)")
    p.add_argument("--shape", default="r1-vocab-tiny", help="learner-probe --random-model shape")
    p.add_argument("--probe-arg", action="append", default=[], help="passed on to learner-probe (repeatable)")
    args = p.parse_args(argv)

    rows = []
    for length in (int(x) for x in args.lengths.split(",")):
        chunked = probe(length, False, args.shape, args.probe_arg)
        plain = probe(length, True, args.shape, args.probe_arg) if length <= args.plain_max else None
        rows.append({"length": length, "chunked": chunked, "plain": plain})
        print(f"{length}: chunked {chunked.get('peak_memory_bytes', 0) / GIB:.2f} GiB "
              f"{chunked.get('tokens_per_s', 0):.0f} tok/s; plain "
              + (f"{plain.get('peak_memory_bytes', 0) / GIB:.2f} GiB {plain.get('tokens_per_s', 0):.0f} tok/s" if plain else "skipped"),
              file=sys.stderr, flush=True)

    print("| response tokens | plain peak | chunked peak | memory ratio | plain tokens/s | chunked tokens/s | speed ratio |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        c, pl = r["chunked"], r["plain"]
        if "error" in c:
            print(f"| {r['length']} | | error | | | | |")
            continue
        if pl and "error" not in pl:
            r["memory_ratio"] = pl["peak_memory_bytes"] / c["peak_memory_bytes"]
            r["speed_ratio"] = c["tokens_per_s"] / pl["tokens_per_s"]
            print(f"| {r['length']} | {pl['peak_memory_bytes'] / GIB:.2f} GiB | {c['peak_memory_bytes'] / GIB:.2f} GiB | "
                  f"**{r['memory_ratio']:.1f}× less** | {pl['tokens_per_s']:.0f} | {c['tokens_per_s']:.0f} | {r['speed_ratio']:.2f}× |")
        else:
            print(f"| {r['length']} | not run | {c['peak_memory_bytes'] / GIB:.2f} GiB | | | {c['tokens_per_s']:.0f} | |")
    device = next((r["chunked"].get("device") for r in rows if "device" in r["chunked"]), "?")
    print(json.dumps({"device": device, "shape": args.shape, "rows": rows}))
    return 0


def markdown_rows(result: dict) -> str:
    """The table rows of BENCHMARKS.md's learner section from this script's JSON line (for bench/run.py)."""
    out = []
    for r in result["rows"]:
        c, pl = r["chunked"], r["plain"]
        if "error" in c:
            continue
        if pl and "error" not in pl:
            out.append(f"| {r['length']} | {pl['peak_memory_bytes'] / GIB:.2f} GiB | {c['peak_memory_bytes'] / GIB:.2f} GiB | "
                       f"**{pl['peak_memory_bytes'] / c['peak_memory_bytes']:.1f}× less** | {pl['tokens_per_s']:.0f} | "
                       f"{c['tokens_per_s']:.0f} | **{c['tokens_per_s'] / pl['tokens_per_s']:.2f}×** |")
        else:
            out.append(f"| {r['length']} | not run | {c['peak_memory_bytes'] / GIB:.2f} GiB | | | {c['tokens_per_s']:.0f} | |")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
