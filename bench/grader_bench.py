"""Grader throughput and worst-case latency, against math-verify measured in the same run.

    .venv/bin/python bench/grader_bench.py --data ../shared/data/benchmarks/math.json

Inputs: the MATH500 reference answers graded against themselves inside a \\boxed{}, the same
answers rewritten into equivalent forms (\\dfrac, $…$, spacing, "x = ", a trailing period,
\\left/\\right), and a set of adversarial inputs (power towers, deep nesting, huge literals).

Parity (issue #20): math-verify's own test suite in the boxed-answer form
(tests/data/math_verify_cases.jsonl, see tests/unit/test_grading_parity.py), graded by ours,
by math-verify and by DeepScaleR's rule side by side; "agree" counts cases where the verdict is
the one math-verify's test expects.  DeepScaleR's rule (its reward's ``grade_answer_mathd`` or
``grade_answer_sympy`` on the last box) is re-stated here in a few lines, evaluated with sympy's
``parse_expr`` — acceptable only because the inputs are this fixed test file, and run in a
forked child with a per-case alarm because it hangs on some inputs.
Prints one JSON object; bench/README says how BENCHMARKS.md is written from it, and
:func:`parity_markdown` renders the parity rows.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import re
import statistics
import time
from pathlib import Path


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


# ---------------------------------------------------------------- parity on math-verify's suite

CASES = Path(__file__).resolve().parents[1] / "tests" / "data" / "math_verify_cases.jsonl"


def _last_boxed(text: str) -> str | None:
    k = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if k < 0:
        return None
    i = text.find("{", k)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j]
    return None


def _mathd_normal(s: str) -> str:
    """MATH's answer normaliser as DeepScaleR's ``grade_answer_mathd`` applies it: string rules only."""
    s = s.strip().replace("\\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac").replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\$", "").replace("$", "")
    s = re.sub(r"\\text\{\s*[^}]*\}$", "", s).strip()
    s = s.replace("\\%", "").replace("%", "").replace(" .", " 0.").replace("{.", "{0.")
    if s.startswith("."):
        s = "0" + s
    if len(s.split("=")) == 2 and len(s.split("=")[0]) <= 2:
        s = s.split("=")[1]
    s = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s).replace(" ", "")
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    m = re.fullmatch(r"(-?\d+)/(\d+)", s)
    return f"\\frac{{{m.group(1)}}}{{{m.group(2)}}}" if m else s


def _latex_to_sympy_text(s: str) -> str:
    """A small LaTeX → sympy-text rewrite standing in for DeepScaleR's pylatexenc step."""
    for _ in range(6):
        s = re.sub(r"\\frac\{([^{}]*)\}\{([^{}]*)\}", r"((\1)/(\2))", s)
        s = re.sub(r"\\sqrt\{([^{}]*)\}", r"sqrt(\1)", s)
    s = s.replace("\\pi", "pi").replace("\\infty", "oo").replace("\\cdot", "*").replace("\\times", "*")
    return s.replace("^", "**").replace("{", "(").replace("}", ")").replace("\\", "")


def _sympy_normal(s: str) -> str | None:
    """DeepScaleR's ``_normalize`` in spirit: drop units/text, $, commas in numbers, ``x =``."""
    s = re.sub(r"\\text\{([^{}]*)\}", r"\1", s).replace("$", "").replace("\\%", "").replace("%", "")
    s = re.sub(r"\s*(units?|cm|meters?|inches|feet|degrees?|dollars?|miles|mph|sq)\b\.?", "", s)
    s = re.sub(r"(\d),(\d\d\d)(?!\d)", r"\1\2", s).replace("^\\circ", "").replace("^{\\circ}", "")
    if re.match(r"^\s*[a-zA-Z]\s*=", s):
        s = s.split("=", 1)[1]
    s = s.replace("\\left", "").replace("\\right", "").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return s.strip() or None


def _sympy_equal(a: str, b: str) -> bool:
    from sympy import simplify
    from sympy.parsing.sympy_parser import implicit_multiplication_application, parse_expr, standard_transformations

    tr = standard_transformations + (implicit_multiplication_application,)
    try:
        return simplify(parse_expr(_latex_to_sympy_text(a), transformations=tr) - parse_expr(_latex_to_sympy_text(b), transformations=tr)) == 0
    except Exception:
        return False


def deepscaler_rule(response: str, truth: str) -> bool:
    """Last box; then MATH-normalised string equality, or elementwise sympy equality of tuples."""
    given = _last_boxed(response)
    if given is None:
        return False
    if _mathd_normal(given) == _mathd_normal(truth):
        return True
    g, t = _sympy_normal(given), _sympy_normal(truth)
    if g is None or t is None:
        return False
    if g == t:
        return True
    bracketed = lambda x: len(x) > 2 and x[0] in "([" and x[-1] in ")]"  # noqa: E731
    if bracketed(t) and (not bracketed(g) or g[0] != t[0] or g[-1] != t[-1]):
        return False
    ge = [x.strip() for x in (g[1:-1] if bracketed(g) else g).split(",")]
    te = [x.strip() for x in (t[1:-1] if bracketed(t) else t).split(",")]
    if len(ge) != len(te):
        return False
    for a, b in zip(ge, te):
        if re.fullmatch(r"-?\d+", a) and re.fullmatch(r"-?\d+", b):
            if int(a) != int(b):
                return False
        elif len(set(re.findall(r"[a-zA-Z]", a + b)) - set("pie")) > 2 or not _sympy_equal(a, b):
            return False
    return True


def _deepscaler_all(cases: list[dict], conn) -> None:
    import signal

    def stuck(*_):
        raise TimeoutError

    signal.signal(signal.SIGALRM, stuck)
    out = []
    for c in cases:
        signal.setitimer(signal.ITIMER_REAL, 5.0)
        try:
            out.append(deepscaler_rule(c["response"], c["truth"]))
        except BaseException:  # a hang (alarm) or a crash is "not correct", as in its reward
            out.append(False)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    conn.send(out)


def math_verify_response(response: str, truth: str) -> bool:
    from math_verify import parse, verify

    gold = parse("$" + truth + "$") or parse(truth)
    return bool(verify(gold, parse(response)))


def parity(repeats: int = 1) -> dict:
    """Agreement with the expected verdicts of math-verify's suite, and throughput on it."""
    from autothink.grading import _compare_cached, grade_in_process

    cases = [json.loads(line) for line in CASES.read_text().splitlines() if line.strip()]
    expected = [c["expected"] for c in cases]

    def ours(c: dict) -> bool:
        _compare_cached.cache_clear()
        return bool(grade_in_process(c["response"], c["truth"]).correct)

    def mv(c: dict) -> bool:
        try:
            return math_verify_response(c["response"], c["truth"])
        except Exception:
            return False

    res: dict = {"cases": len(cases), "positives": sum(expected)}
    for name, fn in (("ours", ours), ("math_verify", mv)):
        rates, got = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            got = [fn(c) for c in cases]
            rates.append(len(cases) / (time.perf_counter() - t0))
        res[f"{name}_agree"] = sum(g == e for g, e in zip(got, expected))
        res[f"{name}_false_positives"] = sum(g and not e for g, e in zip(got, expected))
        res[f"{name}_grades_per_s"] = round(statistics.median(rates), 1)
        res[f"{name}_disagree_ids"] = [c["id"] for c, g, e in zip(cases, got, expected) if g != e]
    parent, child = mp.get_context("fork").Pipe()
    p = mp.get_context("fork").Process(target=_deepscaler_all, args=(cases, child))
    t0 = time.perf_counter()
    p.start()
    got = parent.recv()
    p.join()
    res["deepscaler_grades_per_s"] = round(len(cases) / (time.perf_counter() - t0), 1)
    res["deepscaler_agree"] = sum(g == e for g, e in zip(got, expected))
    res["deepscaler_false_positives"] = sum(g and not e for g, e in zip(got, expected))
    res["deepscaler_disagree_ids"] = [c["id"] for c, g, e in zip(cases, got, expected) if g != e]
    res["speed_ratio_vs_math_verify"] = round(res["ours_grades_per_s"] / res["math_verify_grades_per_s"], 2)
    return res


def parity_markdown(g: dict) -> str:
    """The parity rows of the grader section of BENCHMARKS.md."""
    p = g["parity"]
    rows = "\n".join(
        f"| {label} | **{p[k + '_agree']}/{p['cases']}** | {p[k + '_false_positives']} | {p[k + '_grades_per_s']:.0f} |"
        for k, label in (("ours", "ours"), ("math_verify", f"math-verify {g.get('math_verify_version', '')}"), ("deepscaler", "DeepScaleR's rule (re-stated)"))
    )
    return f"""Parity on math-verify's own test suite in the boxed-answer form ({p['cases']} cases, {p['positives']} of them
equivalent; tests/data/math_verify_cases.jsonl). "Agree" counts verdicts equal to the one math-verify's
test expects; a false positive is "correct" where the case expects "wrong". Ours deliberately differs
on the cases listed in tests/unit/test_grading_parity.py with reasons (no tolerance, no matrix arithmetic,
no equation solving). Throughput here is on this suite ({p['speed_ratio_vs_math_verify']:.1f}× math-verify).

| grader | agree | false positives | grades/s |
|---|---|---|---|
{rows}
"""


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
    out["parity"] = parity()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
