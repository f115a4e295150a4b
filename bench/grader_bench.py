"""Grader throughput and worst-case latency, against math-verify measured in the same run.

    .venv/bin/python bench/grader_bench.py --data ../shared/data/benchmarks/math.json

Inputs: the MATH500 reference answers graded against themselves inside a \\boxed{}, the same
answers rewritten into equivalent forms (\\dfrac, $…$, spacing, "x = ", a trailing period,
\\left/\\right), and a set of adversarial inputs (power towers, deep nesting, huge literals).
Prints one JSON object; bench/README says how BENCHMARKS.md is written from it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import re
import statistics
import time


def rewrite(ans: str, k: int) -> str:
    """An equivalent way of writing ``ans`` (k picks the rewrite)."""
    forms = [
        lambda a: a.replace("\\frac", "\\dfrac"),
        lambda a: f"${a}$",
        lambda a: re.sub(r"([+\-=,])", r" \1 ", a),
        lambda a: f"x = {a}" if "=" not in a and "," not in a else a,
        lambda a: a + ".",
        lambda a: a.replace("(", "\\left(").replace(")", "\\right)"),
    ]
    return forms[k % len(forms)](ans)


def semantic(ans: str) -> str | None:
    """A form equal only after arithmetic: n -> \\frac{2n}{2}, \\frac{a}{b} -> \\frac{2a}{2b}; None if neither."""
    if re.fullmatch(r"-?\d+", ans):
        return f"\\frac{{{2 * int(ans)}}}{{2}}"
    m = re.fullmatch(r"\\d?frac\{(\d+)\}\{(\d+)\}", ans)
    if m:
        return f"\\frac{{{2 * int(m.group(1))}}}{{{2 * int(m.group(2))}}}"
    return None


ADVERSARIAL = [
    "(9**9)**(9**9)", "9^{9^{9^{9}}}", "10^{10^{10}}", "99999999999!", "(" * 2000 + "1" + ")" * 2000,
    "\\sin^{20} x+\\cos^{20} x", "1" * 5000, "x^{x^{x^{x^{x}}}}", "\\frac{1}{" * 300 + "2" + "}" * 300,
]


def timed(fn, items, repeats: int = 3) -> tuple[float, list, float]:
    """(median grades/s, last results, worst single-grade seconds)."""
    rates, worst, results = [], 0.0, []
    for _ in range(repeats):
        results = []
        t_all = time.perf_counter()
        for pred, truth in items:
            t0 = time.perf_counter()
            results.append(fn(pred, truth))
            worst = max(worst, time.perf_counter() - t0)
        rates.append(len(items) / (time.perf_counter() - t_all))
    return statistics.median(rates), results, worst


def ours_in_process(pred: str, truth: str) -> bool:
    from autothink.grading import _compare_cached, grade_in_process

    _compare_cached.cache_clear()  # measure the work, not the cache
    return grade_in_process("\\boxed{" + pred + "}", truth).correct


def math_verify(pred: str, truth: str) -> bool:
    from math_verify import parse, verify

    return bool(verify(parse("$" + truth + "$"), parse("\\boxed{" + pred + "}")))


def _mv_worker(q, pred, truth):
    try:
        q.put(math_verify(pred, truth))
    except Exception as e:  # reported, not fatal
        q.put(f"error: {type(e).__name__}")


def math_verify_bounded(pred: str, truth: str, limit: float = 10.0) -> tuple[object, float]:
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_mv_worker, args=(q, pred, truth))
    t0 = time.perf_counter()
    p.start()
    p.join(limit)
    if p.is_alive():
        p.kill()
        p.join()
        return "timeout", time.perf_counter() - t0
    return (q.get() if not q.empty() else "crashed"), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/benchmarks/math.json")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    answers = [str(x["answer"]) for x in json.load(open(args.data))]
    self_items = [(a, a) for a in answers]
    rewritten = [(rewrite(a, i), a) for i, a in enumerate(answers)]
    arithmetic = [(f, a) for a in answers if (f := semantic(a)) is not None]
    from importlib.metadata import version

    out: dict = {"answers": len(answers), "repeats": args.repeats, "math_verify_version": version("math-verify")}

    ours_in_process("\\frac{1}{2}", "0.5")  # import sympy before timing
    math_verify("\\frac{1}{2}", "0.5")
    for name, items in (("self", self_items), ("rewritten", rewritten), ("arithmetic", arithmetic)):
        rate, res, worst = timed(ours_in_process, items, args.repeats)
        mv_rate, mv_res, mv_worst = timed(math_verify, items, args.repeats)
        out[name] = {
            "count": len(items),
            "ours_grades_per_s": round(rate, 1), "ours_accepted": sum(res), "ours_worst_s": round(worst, 5),
            "math_verify_grades_per_s": round(mv_rate, 1), "math_verify_accepted": sum(mv_res), "math_verify_worst_s": round(mv_worst, 5),
            "speed_ratio": round(rate / mv_rate, 2),
        }

    from autothink.grading.pool import GraderPool

    with GraderPool(workers=2, timeout_s=2.0) as pool:
        pool.grade_many([("\\boxed{1}", "1")] * 4)  # warm
        items = [("\\boxed{" + p + "}", t) for p, t in rewritten]
        t0 = time.perf_counter()
        pool.grade_many(items)
        out["pool_2_workers_grades_per_s"] = round(len(items) / (time.perf_counter() - t0), 1)
        adv = []
        for text in ADVERSARIAL:
            t0 = time.perf_counter()
            r = pool.grade("\\boxed{" + text + "}", "1")
            ours = time.perf_counter() - t0
            mv, mv_t = math_verify_bounded(text, "1")
            adv.append({"input": text[:40], "ours_s": round(ours, 3), "ours_status": r.status, "math_verify_s": round(mv_t, 3), "math_verify": str(mv)})
        out["adversarial"] = adv
        out["ours_worst_adversarial_s"] = max(a["ours_s"] for a in adv)
        out["math_verify_worst_adversarial_s"] = max(a["math_verify_s"] for a in adv)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
