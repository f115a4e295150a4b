"""The grader: equivalence across the forms benchmark answers take, no false positives, safety."""

import os
import time

import pytest

from autothink.grading import grade, grade_in_process
from autothink.grading.pool import GraderPool
from tests.conftest import descendants


def same(pred: str, truth) -> bool:
    return grade_in_process(f"The answer is \\boxed{{{pred}}}.", truth).correct


EQUIVALENT = [
    # fractions
    ("\\frac{1}{2}", "\\dfrac{1}{2}"), ("\\tfrac{3}{4}", "\\frac34"), ("2/4", "\\frac{1}{2}"), ("\\frac{6}{8}", "\\frac{3}{4}"),
    ("-\\frac{1}{3}", "\\frac{-1}{3}"), ("\\frac{\\sqrt{21}}{5}", "\\dfrac{\\sqrt{21}}{5}"),
    # decimals vs fractions, leading zeros, trailing zeros
    ("0.5", "\\frac{1}{2}"), (".35625", "0.35625"), ("\\frac{57}{160}", ".35625"), ("025", "25"), ("7.0", "7"), ("1.50", "1.5"),
    # signs
    ("−3", "-3"), ("- 3", "-3"), ("+4", "4"),
    # degrees, text units, percent in the ground truth, money
    ("90^\\circ", "90"), ("90^{\\circ}", "90"), ("90°", "90"), ("5 \\text{ cm}", "5"), ("12\\text{ inches}", "12"),
    ("25", "25\\%"), ("25\\%", "25"), ("\\$1.50", "1.5"), ("10 \\mbox{ units}", "10"),
    # thousands separators
    ("1,000,000", "1000000"), ("1{,}000", "1000"), ("12,345.5", "12345.5"),
    # intervals and unions
    ("[1, 2)", "[1,2)"), ("(-\\infty, 3]", "(-\\infty,3]"), ("(-\\infty,0)\\cup(0,\\infty)", "(0,\\infty) \\cup (-\\infty, 0)"),
    ("\\left( -\\sqrt{3}, \\sqrt{3} \\right)", "(-\\sqrt{3}, \\sqrt{3})"),
    # sets are unordered, solution lists too
    ("\\{3, 1, 2\\}", "\\{1,2,3\\}"), ("3, -2", "-2, 3"), ("1, 2, 3", "3,1,2"),
    # tuples are ordered
    ("(6,31,-1)", "(6, 31, -1)"), ("(1,8,19), (2,7,13), (4,5,7)", "(4,5,7), (1,8,19), (2,7,13)"),
    # roots, pi, powers
    ("2\\sqrt{3}", "\\sqrt{12}"), ("\\sqrt2", "\\sqrt{2}"), ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}"), ("\\sqrt[3]{8}", "2"),
    ("288\\pi", "288 \\pi"), ("\\pi r^2", "r^2\\pi"), ("2^{10}", "1024"), ("2^{1009}", "2^{1009}"),
    # scientific notation
    ("1.5 \\times 10^{3}", "1500"), ("8.7 \\times 10^{8}", "870000000"), ("7 \\times 10^{37}", "7\\times10^{37}"),
    # mixed numbers
    ("2\\frac{1}{2}", "\\frac{5}{2}"), ("-1\\frac{1}{4}", "-1.25"),
    # assignments
    ("x = 5", "5"), ("x=5", "x = 5"), ("y = 2x+3", "2x + 3"), ("a_1 = 3", "3"),
    # multiple choice
    ("\\textbf{(C)}", "C"), ("(C)", "\\text{(C)}"), ("C", "(C)"),
    # matrices
    ("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}"),
    ("\\begin{pmatrix} \\frac{1}{2} \\\\ 0 \\end{pmatrix}", "\\begin{pmatrix} 0.5 \\\\ 0 \\end{pmatrix}"),
    # symbolic expressions
    ("(x+1)^2", "x^2+2x+1"), ("p - q", "-q+p"), ("\\frac{1}{2 n+2}", "\\frac{1}{2(n+1)}"), ("2n-2", "2(n-1)"), ("6-5i", "6 - 5i"),
    ("\\frac{x}{2}", "0.5x"), ("\\sin^2 x + \\cos^2 x", "1"),
    # words
    ("\\text{Evelyn}", "\\text{Evelyn}"), ("Evelyn", "\\text{Evelyn}"),
    # second pass (issue #20): relations, chains, labels, lists, comma decimals, \cfrac, trig identities
    ("5 \\geq x", "x \\leq 5"), ("-x > -1", "x < 1"), ("y=-\\frac{1}{2}x+\\frac{3}{4}", "2x+4y-3=0"),
    ("-2 \\le x \\le 7", "x \\in [-2,7]"), ("x > 3", "(3, \\infty)"), ("x = 5+5+1 = 11", "11"),
    ("(p,q)=(3,2)", "(3,2)"), ("|AB|=1", "1"), ("a_{37} = 19, a_3 = 2", "a_3 = 2, a_{37} = 19"),
    ("\\cfrac{1}{3}", "1/3"), ("(0;-2;6), (4;0;0)", "(4, 0, 0), (0, -2, 6)"), ("\\{-2, 1\\}", "-2; 1"),
    ("6 \\text{ and } 8", "6, 8"), ("\\sec^2 y", "\\tan^2 y + 1"), ("1,22", "1.22"), ("0,111", "0.111"),
    ("\\pm 2021", "-2021, 2021"), ("0.0833333333333333", "\\frac{1}{12}"), ("11,\\! 111", "11111"),
]

DIFFERENT = [
    # no tolerance: approximations are wrong
    ("3.14", "\\pi"), ("3.1416", "\\pi"), ("0.333", "\\frac{1}{3}"), ("1.41", "\\sqrt{2}"), ("100.0001", "100"),
    # no x100 percent matching
    ("0.25", "25\\%"), ("25", "0.25"),
    # interval closure and tuple order
    ("(1, 2)", "[1,2)"), ("[1,2]", "[1,2)"), ("(2, 1)", "(1, 2)"), ("(1,2,3)", "\\{1,2,3\\}"),
    # lists must match in full
    ("1, 2", "1, 2, 3"), ("1, 2, 2", "1, 2"),
    # sign, value, variable
    ("-5", "5"), ("6", "7"), ("x+1", "y+1"), ("2x", "x^2"), ("\\frac{1}{2}", "\\frac{1}{3}"),
    # mixed number is not a product
    ("2\\frac{1}{2}", "1"),
    # choices
    ("B", "C"), ("\\textbf{(D)}", "(C)"),
    # matrices of another shape or value
    ("\\begin{pmatrix} 1 & 2 \\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"),
    ("\\begin{pmatrix} 1 & 2 \\\\ 3 & 5 \\end{pmatrix}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}"),
    ("\\infty", "-\\infty"),
    # undefined values (log(0)*0 is nan) equal nothing, and do not raise (found by the fuzz test)
    ("\\log(0)*0", "1"), ("1", "\\log(0) \\cdot 0"), ("\\log(0)*0", "0"),
    # second pass: still exact, and relations keep their direction and strictness
    ("x < 5", "x > 5"), ("x \\leq 5", "x < 5"), ("x \\geq 5", "x \\leq 5"), ("7 = 11a+c", "11a+c"), ("a + 3z = 0", "0"),
    ("(p,q)=(3,2)", "(2,3)"), ("a_3 = 19, a_{37} = 2", "a_3 = 2, a_{37} = 19"), ("1,220", "1.22"), ("32, 349", "32349"),
    ("3.14159265358979", "\\pi"), ("0.33333", "\\frac{1}{3}"), ("\\pm 2021", "2021"), ("(3,1)", "1, 3"),
    ("(12,102)", "12102"), ("x \\in [-2,7]", "y \\in [-2,7]"),
]


@pytest.mark.parametrize("pred,truth", EQUIVALENT)
def test_equivalent_forms(pred, truth):
    assert same(pred, truth), (pred, truth)
    assert same(truth, pred), (truth, pred)


@pytest.mark.parametrize("pred,truth", DIFFERENT)
def test_no_false_positives(pred, truth):
    assert not same(pred, truth), (pred, truth)


def test_ground_truth_lists_and_numbers():
    assert same("9.6", ["9.6\n"])  # Minerva and OlympiadBench keep answers in lists
    assert same("2", ["$1$", "$2$"])
    assert not same("3", ["$1$", "$2$"])
    assert same("142", 142.0)  # AMC answers arrive as floats
    assert same("\\text{(B) } 12", "B")  # a choice with its value, against the letter
    assert same("204", "204") and same("25", "025")


def test_statuses_and_extraction():
    r = grade_in_process("first \\boxed{1}, finally \\boxed{\\frac{1}{2}}", "0.5")
    assert (r.correct, r.status, r.extracted) == (True, "ok", "\\frac{1}{2}")
    assert grade_in_process("I think it is 5", "5").status == "no_answer"
    assert grade_in_process("\\boxed{5", "5").status == "no_answer"  # unclosed box
    r = grade_in_process("\\boxed{6}", "5")
    assert (r.correct, r.status) == (False, "ok")
    r = grade_in_process("\\boxed{blah @@ ?}", "5")
    assert (r.correct, r.status) == (False, "unparseable")
    r = grade_in_process("x" * 300_000 + "\\boxed{5}", "5")
    assert (r.correct, r.status) == (False, "unparseable")
    assert grade_in_process("\\boxed{5}", "").status == "unparseable"
    assert grade_in_process(None, "5").status == "unparseable"


def test_several_boxes_form_one_list_only_when_joined():
    r = grade_in_process("so \\boxed{-2} \\quad \\text{and} \\quad \\boxed{1}. <|im_start|>user \\boxed", "1, -2")
    assert (r.correct, r.extracted) == (True, "-2, 1")
    assert grade_in_process("\\boxed{(2, 2)}, \\boxed{(6, 2)}", "(6, 2), (2, 2)").correct
    assert not grade_in_process("\\boxed{1} no no no no no \\boxed{2}", "1, 2").correct
    assert grade_in_process("x = \\boxed{3} and y = \\boxed{4}", "4").correct  # the last box alone, as before


DANGEROUS = [
    "__import__('os').system('touch {marker}')",
    "exec(\"open('{marker}', 'w').write('x')\")",
    "eval('1+1')",
    "open('{marker}', 'w')",
    "\\input{{/etc/passwd}}",
    "lambda: 0",
    "().__class__.__bases__[0].__subclasses__()",
    "subprocess.run(['touch', '{marker}'])",
]


@pytest.mark.parametrize("payload", DANGEROUS)
def test_dangerous_strings_are_inert(payload, tmp_path):
    marker = tmp_path / "pwned"
    before = set(os.listdir(tmp_path))
    children = descendants(os.getpid())
    r = grade_in_process("\\boxed{" + payload.format(marker=marker) + "}", "2")
    assert not r.correct
    assert set(os.listdir(tmp_path)) == before and not marker.exists()
    assert descendants(os.getpid()) <= children  # no process started



@pytest.mark.parametrize(
    "tower",
    ["(9**9)**(9**9)", "9^{9^{9^{9}}}", "10^{10^{10}}", "2^{2^{2^{2^{2^{2}}}}}", "(10!)!", "99999999999!", "\\sqrt{2}^{10^{9}}"],
)
def test_power_towers_end_quickly(tower):
    t0 = time.perf_counter()
    r = grade_in_process("\\boxed{" + tower + "}", "1")
    assert not r.correct and time.perf_counter() - t0 < 1.0


def test_long_and_deep_inputs_end_quickly():
    for text in ["(" * 5000 + "1" + ")" * 5000, "1+" * 2000 + "1", "x" * 999]:
        t0 = time.perf_counter()
        assert not grade_in_process("\\boxed{" + text + "}", "2").correct
        assert time.perf_counter() - t0 < 1.0


@pytest.mark.slow
def test_pool_replaces_a_stuck_worker():
    with GraderPool(workers=1, timeout_s=5.0) as pool:
        assert pool.grade("\\boxed{\\frac{2}{4}}", "0.5").correct
        (pid,) = pool.pids()
        # sympy needs well over a second to refute this identity (1.7 s here, warm): under a 0.2 s
        # limit it is a stuck grade
        r = pool.grade("\\boxed{(x+y+z)^{12}}", "\\cos(2x)", timeout_s=0.2)
        assert (r.correct, r.status) == (None, "timeout")  # could not grade: never a wrong verdict
        assert pool.replaced == 1
        (new_pid,) = pool.pids()
        assert new_pid != pid
        # the replacement works
        assert pool.grade("\\boxed{3}", "3").correct
        results = pool.grade_many([("\\boxed{1}", "1"), ("\\boxed{2}", "3")] * 5)
        assert [r.correct for r in results] == [True, False] * 5


@pytest.mark.slow
def test_grade_uses_the_shared_pool():
    r = grade("\\boxed{9^{9^{9^{9}}}}", "1")
    assert r.correct is not True and r.status in ("unparseable", "timeout")
    assert grade("\\boxed{0.5}", "\\frac12").correct
