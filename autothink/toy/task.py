"""The toy task: sums of single digits, with difficulty levels.

Level L asks for the sum of L + 1 digits (level 1: two digits, level 8: nine).  A problem reads
like the real data and its answer is a ``\\boxed{}`` integer::

    What is the value of $3+5+7+2$?            ground truth "17"

The minimal think trace is a running sum, one single-digit step per line (``3+5=8`` / ``8+7=15`` /
``15+2=17``; written without spaces to keep sequences short): each step refers to one earlier number and one digit, which a
tiny model learns quickly.

The warm start gives the toy the two properties of an R1 model that AutoThink works on:

**It overthinks.**  R1 models re-verify, restate and double-check; that redundancy is what stage
3's length shaping removes.  So a warm-start think trace is the running sum followed by 0, 1 or
2 re-verification passes (:class:`RecheckRule`: "Wait, let me check." and the running sum again),
drawn at random, independent of the level and of correctness.  Minimal traces stay possible
(20 % of demonstrations), and on average a trace is about twice as long as the minimal one.

**Its direct answers are right on easy problems and degrade steeply on hard ones.**  A 3-layer
model learns to add up nine digits in one pass almost as well as step by step (docs/design.md §6),
so on this task thinking would win nothing.  Following the documented fallback, the no-think
demonstrations are exact on easy levels and approximate on hard ones.  They come from a one-pass
*heuristic* (:class:`GlanceRule`): the first ``span`` digits are added exactly, and a later digit
counts only if it is small (at most ``small``); a big digit past the glance is missed.  Levels 1-2
(two and three digits) are always exact; level 3 is exact when its fourth digit is small (4/9 of
problems), level 4 about 0.2 of the time, level 8 almost never.  The error is systematic, not
random: a direct answer wrong by random noise keeps the true sum its most likely value, so the RL
stages sharpened it (an earlier toy: level 3's direct answers from ~0.5 to ~0.8 during stage 2,
past the reward's break-even, which made stage 3 trade accuracy for tokens).  A heuristic's miss
is learnt as the answer and the truth gets no probability, so only thinking fixes it, as for an
R1 model.  Easy problems, where an R1 model has seen the most direct answers, are the most
frequent in the warm start
(:data:`TRAIN_LEVEL_WEIGHTS`).  Under the reference rewards a direct answer is worth 3p − 1 and a
think answer q (p, q the accuracies of the two modes), so the break-even, p ≈ 0.67, falls between
the easy levels (p = 1) and the hard ones (level 3: 0.44).  Think traces are always exact.  The RL
stages are told none of this: they must discover from rewards alone when thinking pays (down to
the problem: a level-3 problem whose last digit is small can be answered directly) and that the
re-checks are wasted.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from autothink.prompting import THINK_CLOSE, build_prompt

LEVELS = tuple(range(1, 9))


@dataclass(frozen=True)
class ToyProblem:
    problem: str
    answer: str
    level: int
    digits: tuple[int, ...]


@dataclass(frozen=True)
class GlanceRule:
    """How the warm start's direct answers are made (see the module docstring): the first ``span``
    digits are added exactly; a later digit counts only if it is at most ``small``."""

    span: int = 3
    small: int = 4

    def __post_init__(self) -> None:
        if self.span < 1 or not 0 <= self.small <= 9:
            raise ValueError(f"glance rule needs span >= 1 and 0 <= small <= 9, got span={self.span} small={self.small}")

    def value(self, digits: tuple[int, ...]) -> int:
        """The heuristic's answer.

        >>> GlanceRule().value((3, 5, 7)), GlanceRule().value((3, 5, 7, 2)), GlanceRule().value((3, 5, 7, 8, 1))
        (15, 17, 16)
        """
        return sum(digits[: self.span]) + sum(d for d in digits[self.span:] if d <= self.small)

    def exact_rate(self, level: int) -> float:
        """Share of ``level``'s problems (digits uniform on 1..9) whose heuristic answer is exact.

        >>> [round(GlanceRule().exact_rate(l), 3) for l in range(1, 9)]
        [1.0, 1.0, 0.444, 0.198, 0.088, 0.039, 0.017, 0.008]
        """
        return (self.small / 9) ** max(0, level + 1 - self.span)


def make_problem(rng: random.Random, level: int) -> ToyProblem:
    digits = tuple(rng.randint(1, 9) for _ in range(level + 1))
    text = "What is the value of $" + "+".join(map(str, digits)) + "$?"
    return ToyProblem(text, str(sum(digits)), level, digits)


def think_trace(digits: tuple[int, ...]) -> str:
    """The running sum, one step per line.

    >>> print(think_trace((3, 5, 7)), end="")
    3+5=8
    8+7=15
    """
    lines, total = [], digits[0]
    for d in digits[1:]:
        lines.append(f"{total}+{d}={total + d}")
        total += d
    return "\n".join(lines) + "\n"


#: How an overthinking trace announces a re-verification pass (one drawn at random per pass).
RECHECK_PHRASES = ("Wait, let me check.", "Let me verify that again.", "Hmm, let me double-check.")


@dataclass(frozen=True)
class RecheckRule:
    """How many redundant re-verification passes a warm-start think trace carries.

    ``passes[k]`` is the probability of k passes, the same at every level and whatever the
    answer; each pass is a phrase from :data:`RECHECK_PHRASES` and the running sum again.
    """

    passes: tuple[float, ...] = (0.2, 0.4, 0.4)

    def __post_init__(self) -> None:
        if abs(sum(self.passes) - 1.0) > 1e-9 or any(p < 0 for p in self.passes):
            raise ValueError(f"recheck pass probabilities must be >= 0 and sum to 1, got {self.passes}")

    def mean(self) -> float:
        """Expected number of passes.

        >>> RecheckRule().mean()
        1.2
        """
        return round(sum(k * p for k, p in enumerate(self.passes)), 12)

    def draw(self, rng: random.Random) -> int:
        return rng.choices(range(len(self.passes)), weights=self.passes)[0]


def overthink_trace(digits: tuple[int, ...], passes: int, rng: random.Random) -> str:
    """The running sum, then ``passes`` redundant re-verifications of it.

    >>> print(overthink_trace((3, 5), 1, random.Random(0)), end="")
    3+5=8
    Let me verify that again.
    3+5=8
    """
    trace = think_trace(digits)
    return trace + "".join(rng.choice(RECHECK_PHRASES) + "\n" + trace for _ in range(passes))


ANSWER_PREFIX = "The answer is "


def final_answer(value: int) -> str:
    return f"{ANSWER_PREFIX}$\\boxed{{{value}}}$."


def think_response(p: ToyProblem, passes: int = 0, rng: random.Random | None = None) -> str:
    """A think answer: the running sum with ``passes`` re-checks (0: the minimal trace), then the
    boxed sum."""
    trace = overthink_trace(p.digits, passes, rng or random.Random(0)) if passes else think_trace(p.digits)
    return trace + f"{THINK_CLOSE}\n\n" + final_answer(sum(p.digits))


def sft_example(p: ToyProblem, rng: random.Random, rule: GlanceRule = GlanceRule(), p_think: float = 0.5,
                recheck: RecheckRule = RecheckRule()) -> tuple[str, str]:
    """(prompt, response) for the warm start.

    60% of examples use the ellipsis prompt, with the mode drawn independently of the level, so
    the untrained no-think rate is flat across difficulty, as for an R1 model.  The rest keep the
    other two prompts meaningful: 15% standard prompt with a think trace, 25% no-thinking prompt
    with a direct answer (direct answers are short, so this trains one-pass answering cheaply).
    """
    r = rng.random()
    if r < 0.6:
        strategy, think = "ellipsis", rng.random() < p_think
    elif r < 0.75:
        strategy, think = "standard", True
    else:
        strategy, think = "no_think", False
    if think:
        return build_prompt(p.problem, strategy), think_response(p, recheck.draw(rng), rng)
    direct = final_answer(rule.value(p.digits))  # the heuristic's, the same every time
    if strategy == "no_think":
        return build_prompt(p.problem, "no_think"), direct
    return build_prompt(p.problem, strategy), f"{THINK_CLOSE}\n\n" + direct


def is_direct(response: str) -> bool:
    """Whether a warm-start response is a direct (no-think) answer, under either prompt.

    >>> is_direct(THINK_CLOSE + final_answer(8)), is_direct(final_answer(8)), is_direct(think_response(make_problem(random.Random(0), 1)))
    (True, True, False)
    """
    return response.startswith((THINK_CLOSE, ANSWER_PREFIX))


def loss_weights(response: str, n_tokens: int, direct_weight: float) -> list[float]:
    """Per-token weights of a warm-start response's ``n_tokens`` tokens in the SFT loss.

    A direct answer's tokens weigh ``direct_weight`` (an R1 model's one-pass answers on easy
    problems are heavily pretrained; the toy's are a few percent of the warm start's tokens),
    except an ellipsis answer's first token, ``</think>``: that is the mode decision, and it keeps
    weight 1 so that the untrained no-think rate stays the demonstrations' mode mix.

    >>> loss_weights(THINK_CLOSE + "\\n\\n" + final_answer(8), 4, 3.0)
    [1.0, 3.0, 3.0, 3.0]
    >>> loss_weights(final_answer(8), 3, 3.0), loss_weights("3+5=8\\n" + THINK_CLOSE, 3, 3.0)
    ([3.0, 3.0, 3.0], [1.0, 1.0, 1.0])
    """
    if not is_direct(response):
        return [1.0] * n_tokens
    first = 1 if response.startswith(THINK_CLOSE) else 0
    return [1.0] * first + [float(direct_weight)] * (n_tokens - first)


def eval_split(seed: int, per_level: int) -> list[ToyProblem]:
    """Held-out problems, ``per_level`` for each level (fixed by ``seed``)."""
    rng = random.Random(f"toy-eval-{seed}")
    return [make_problem(rng, level) for level in LEVELS for _ in range(per_level)]


#: How often each level appears in the warm start's training data.  Easy problems are short
#: (cheap) and their direct answers must be near-perfect, as an R1 model's are, so they get more
#: weight: level 2 most, since its 729 problems must be generalised (level 1's 81 are all seen);
#: the mode mix is the same at every level whatever the weights.
TRAIN_LEVEL_WEIGHTS = (2, 4, 1, 1, 1, 1, 1, 1)


def train_split(seed: int, n: int, exclude: set[str], weights: tuple[int, ...] = TRAIN_LEVEL_WEIGHTS) -> list[ToyProblem]:
    """Training problems, levels drawn by ``weights``, none equal to an excluded (eval) problem.

    Level 1 has only 81 distinct problems, so it is exempt from the exclusion.
    """
    rng = random.Random(f"toy-train-{seed}")
    out: list[ToyProblem] = []
    while len(out) < n:
        p = make_problem(rng, rng.choices(LEVELS, weights=weights)[0])
        if p.level == 1 or p.problem not in exclude:
            out.append(p)
    return out

