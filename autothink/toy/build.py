"""``autothink toy build``: tokenizer, tiny Qwen2 model and data, deterministically, into one folder.

The folder is a Hugging Face model folder (config.json, model.safetensors, tokenizer files,
chat template) that transformers and vLLM load, plus ``data/`` (train and eval problems as
JSONL with problem, answer and level) and ``autothink_toy.json`` (settings and summary).  A
second call with the same settings finds that file and reuses the build.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from autothink.config import Strict
from autothink.toy.task import (
    LEVELS, GlanceRule, RecheckRule, ToyProblem, eval_split, loss_weights, sft_example, think_response, train_split,
)

MANIFEST = "autothink_toy.json"


class ToySettings(Strict):
    """Everything that determines the build; its hash keys the cache."""

    seed: int = 0
    train_problems: int = Field(40_000, ge=100)
    eval_per_level: int = Field(64, ge=1)
    vocab_size: int = Field(512, ge=300, description="BPE vocabulary (the 256-byte alphabet plus merges).")
    hidden_size: int = 128
    num_layers: int = 3
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 384
    sft_steps: int = Field(1600, ge=1, description="800 left think mode weak at levels 7-8 (0.12-0.73 across machines); 1600: 0.94+ (BENCHMARKS: bench-toy-build)")
    batch_size: int = Field(64, ge=1)
    lr: float = 2e-3
    micro_batches: int = Field(4, ge=1, description="Length-sorted pieces of each batch (less padding, same gradient).")
    warmup_steps: int = 50
    p_think: float = Field(0.5, gt=0, lt=1, description="Share of think-mode demonstrations, at every level.")
    glance: dict[str, int] = Field(
        default_factory=lambda: {"span": 3, "small": 4},
        description="The direct demonstrations' heuristic: the first `span` digits added exactly, a later digit only if "
        "<= `small` (levels 1-2 exact, level 3 4/9 of the time, level 8 almost never).")
    recheck_passes: tuple[float, ...] = Field(
        (0.2, 0.4, 0.4), description="Probability of 0, 1, 2 ... redundant re-verification passes in a think demonstration.")
    direct_weight: float = Field(
        4.0, ge=1.0,
        description="Loss weight of a direct answer's tokens after the mode decision (the mode token keeps weight 1, so "
        "the ellipsis no-think rate stays p_think's); an R1 model's one-pass answers are heavily pretrained, the toy's "
        "get ~1 % of the warm start's tokens.")
    eval_temperature: float = 0.6
    max_response_tokens: int = Field(256, description="Room for the longest overthinking trace (level 8, two re-checks: ~220 tokens).")

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(), sort_keys=True).encode()).hexdigest()[:16]

    def glance_rule(self) -> GlanceRule:
        return GlanceRule(**self.glance)

    def recheck_rule(self) -> RecheckRule:
        return RecheckRule(tuple(self.recheck_passes))


def easy_direct_acc(levels: list[dict[str, Any]]) -> float:
    """Levels 1-2's direct-answer accuracy where the RL stages meet it: under the ellipsis prompt,
    pooled over both levels (each level has only its ~30 no-think samples of 64, ±0.07 alone),
    weighted by their no-think rates.  Builds without that field: the no-thinking prompt's.

    >>> easy_direct_acc([{"level": 1, "ellipsis_direct_acc": 1.0, "ellipsis_no_think_rate": 0.6},
    ...                  {"level": 2, "ellipsis_direct_acc": 0.75, "ellipsis_no_think_rate": 0.2}])
    0.9375
    """
    easy = [r for r in levels if r["level"] <= 2]
    if any(r.get("ellipsis_direct_acc") is None for r in easy):
        return sum(r["no_think_acc"] for r in easy) / len(easy)
    weight = sum(r["ellipsis_no_think_rate"] for r in easy)
    return sum(r["ellipsis_direct_acc"] * r["ellipsis_no_think_rate"] for r in easy) / weight


def no_think_probability(row: dict[str, Any]) -> float:
    """A level's ellipsis no-think rate as the targets read it: the exact probability of closing
    ``</think>`` first (``ellipsis_no_think_p``, float32: the same on every machine to ~1e-6) where
    the evaluation has it, else the sampled rate (64 samples: +-0.06, and machine-dependent --
    a 0.3..0.7 band on it failed on a CI machine for a model whose sampled rates here were 0.48-0.64).

    >>> no_think_probability({"ellipsis_no_think_rate": 0.72, "ellipsis_no_think_p": 0.55})
    0.55
    >>> no_think_probability({"ellipsis_no_think_rate": 0.72})
    0.72
    """
    p = row.get("ellipsis_no_think_p")
    return row["ellipsis_no_think_rate"] if p is None else p


BUILD_TARGET = "build within 5 minutes"  # the one target about the machine, not the model


def check_targets(summary: dict[str, Any], max_seconds: float = 300.0) -> dict[str, bool]:
    """The toy model's acceptance targets, each by name (:data:`BUILD_TARGET` is the build's time;
    the others are the model's quality, which :func:`weak_model_targets` gates runs on).

    >>> lv = [{"level": l, "think_acc": 1.0, "no_think_acc": 1.0 if l < 3 else 0.2, "ellipsis_no_think_rate": 0.5,
    ...        "think_tokens": 30.0 * l, "minimal_think_tokens": 18.0 * l} for l in (1, 2, 8)]
    >>> all(check_targets({"levels": lv, "build_seconds": 200}).values())
    True
    >>> lv[1]["no_think_acc"] = 0.6  # level 2's direct answers too weak: the break-even falls at level 1
    >>> [name for name, ok in check_targets({"levels": lv, "build_seconds": 200}).items() if not ok]
    ['levels 1-2: think >= 0.9, direct answers >= 0.85']
    """
    levels = sorted(summary["levels"], key=lambda r: r["level"])
    last = levels[-1]
    easy = [r for r in levels if r["level"] <= 2]
    out = {
        BUILD_TARGET: summary["build_seconds"] <= max_seconds,
        "no-think rate 0.3..0.7 at every level": all(0.3 <= no_think_probability(r) <= 0.7 for r in levels),
        "levels 1-2: think >= 0.9, direct answers >= 0.85": all(r["think_acc"] >= 0.9 for r in easy) and easy_direct_acc(levels) >= 0.85,
        "hardest level: think beats no-think by >= 0.3": last["think_acc"] - last["no_think_acc"] >= 0.3,
    }
    if all("minimal_think_tokens" in r for r in levels):  # builds before the overthinking toy lack it
        think = sum(r["think_tokens"] for r in levels)
        minimal = sum(r["minimal_think_tokens"] for r in levels)
        out["standard prompt overthinks: >= 1.5x the minimal trace"] = think >= 1.5 * minimal
    return out


def weak_model_targets(model_dir: str | Path) -> list[str] | None:
    """The quality targets a toy build in ``model_dir`` missed, from its manifest (the build's own
    evaluation, on the machine that built it); None when the folder is not a toy build.  A run on
    such a model cannot show the method: the demo, ``up`` and the learner stop on it unless told
    ``--allow-weak-model``.

    >>> weak_model_targets("/nonexistent") is None
    True
    """
    manifest = Path(model_dir) / MANIFEST
    if not manifest.is_file():
        return None
    summary = json.loads(manifest.read_text()).get("summary") or {}
    if not summary.get("levels"):
        return ["the manifest has no evaluation summary (an interrupted build?)"]
    return [name for name, ok in check_targets(summary).items() if not ok and name != BUILD_TARGET]


FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
         "chat_template.jinja", "data/train.jsonl", "data/eval.jsonl")


def file_digests(out: Path) -> dict[str, str]:
    """sha256 of each file of the build that exists (what the manifest records and a check compares)."""
    return {name: hashlib.sha256((out / name).read_bytes()).hexdigest() for name in FILES if (out / name).is_file()}


def verify_files(out: str | Path) -> list[str]:
    """Files of a toy folder whose sha256 differs from its manifest's (missing ones included);
    empty when the folder is exactly what was built.  Raises ValueError on a manifest without digests."""
    out = Path(out)
    recorded = json.loads((out / MANIFEST).read_text()).get("files")
    if not recorded:
        raise ValueError(f"{out / MANIFEST} records no file digests (built before they were recorded)")
    now = file_digests(out)
    return sorted(name for name, digest in recorded.items() if now.get(name) != digest)


def cached_summary(out: Path, settings: ToySettings) -> dict[str, Any] | None:
    """The summary of an earlier build of the same settings in ``out``, if complete."""
    manifest = out / MANIFEST
    if not manifest.is_file() or not (out / "model.safetensors").is_file():
        return None
    data = json.loads(manifest.read_text())
    return data.get("summary") if data.get("settings_digest") == settings.digest() else None


def _write_jsonl(path: Path, problems: list[ToyProblem]) -> None:
    with path.open("w") as f:
        for p in problems:
            f.write(json.dumps({"problem": p.problem, "answer": p.answer, "level": p.level}) + "\n")


def _log(msg: str) -> None:
    print(f"[toy build] {msg}", flush=True)


def warm_start(out: Path, settings: ToySettings, train: list[ToyProblem], progress: bool = True) -> dict[str, float]:
    """Tokenizer + Qwen2 model, supervised on both modes; saves into ``out``."""
    import torch
    from tqdm import tqdm
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from autothink.toy.tokenizer import build_tokenizer

    rng = random.Random(f"toy-sft-{settings.seed}")
    rule = settings.glance_rule()
    examples = [sft_example(p, rng, rule, settings.p_think, settings.recheck_rule()) for p in train]
    corpus = [prompt + response for prompt, response in examples[:5000]]
    corpus += [think_response(p) for p in train[:2000]]
    build_tokenizer(corpus, settings.vocab_size, out)
    tok = AutoTokenizer.from_pretrained(str(out))

    prompts = tok([p for p, _ in examples], add_special_tokens=False)["input_ids"]
    responses = tok([r for _, r in examples], add_special_tokens=False)["input_ids"]
    seqs = [p + r + [tok.eos_token_id] for p, r in zip(prompts, responses)]
    starts = [len(p) for p in prompts]
    weights = [loss_weights(r, len(ids) + 1, settings.direct_weight) for (_, r), ids in zip(examples, responses)]  # + EOS

    torch.manual_seed(settings.seed)
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=settings.hidden_size,
        intermediate_size=settings.intermediate_size,
        num_hidden_layers=settings.num_layers,
        num_attention_heads=settings.num_heads,
        num_key_value_heads=settings.num_kv_heads,
        max_position_embeddings=1024,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        torch_dtype="float32",
    )
    model = Qwen2ForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    _log(f"model: Qwen2 {settings.num_layers}x{settings.hidden_size}, {n_params / 1e6:.2f} M parameters, vocab {len(tok)}")

    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.0, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to 10%
        if step < settings.warmup_steps:
            return (step + 1) / settings.warmup_steps
        t = (step - settings.warmup_steps) / max(1, settings.sft_steps - settings.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    g = torch.Generator().manual_seed(settings.seed)

    def padded(idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        # right padding needs no attention mask under a causal model: pads come after every real
        # token and carry weight 0
        T = max(len(seqs[i]) for i in idx)
        ids = torch.full((len(idx), T), tok.pad_token_id, dtype=torch.long)
        w = torch.zeros((len(idx), T), dtype=torch.float32)
        for row, i in enumerate(idx):
            s = seqs[i]
            ids[row, : len(s)] = torch.tensor(s)
            w[row, starts[i] : len(s)] = torch.tensor(weights[i])
        return ids, w

    model.train()
    losses: list[float] = []
    bar = tqdm(range(settings.sft_steps), desc="warm start (SFT)", disable=not progress, mininterval=1.0)
    for _ in bar:
        # A uniformly drawn batch, cut by length into micro-batches: the gradient is the batch's
        # (token-mean over the whole batch), but short examples are not padded to the longest.
        idx = sorted(torch.randint(len(seqs), (settings.batch_size,), generator=g).tolist(), key=lambda i: len(seqs[i]))
        n_tokens = sum(sum(weights[i]) for i in idx)  # the weighted token count: a weighted token-mean
        step = -(-len(idx) // settings.micro_batches)
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for k in range(0, len(idx), step):
            ids, w = padded(idx[k : k + step])
            logits = model(input_ids=ids).logits[:, :-1]
            ce = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
            loss = (ce * w[:, 1:].reshape(-1)).sum() / n_tokens
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(total)
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    model.save_pretrained(str(out), safe_serialization=True)
    first, last = losses[: min(20, len(losses))], losses[-min(20, len(losses)) :]
    return {"params_m": n_params / 1e6, "loss_first": sum(first) / len(first), "loss_last": sum(last) / len(last)}


def evaluate(model_dir: Path, problems: list[ToyProblem], settings: ToySettings) -> list[dict[str, Any]]:
    """Per-level accuracy under the three prompts, sampled with vLLM at the eval temperature, and
    the length of the minimal think answer (what a model that never re-checks would write), and
    the exact ellipsis no-think probability (:func:`no_think_probability`)."""
    from transformers import AutoTokenizer

    from autothink.evaluation import VLLMSampler, first_token_probability, level_table
    from autothink.prompting import THINK_CLOSE, build_prompt

    with VLLMSampler(model_dir, seed=settings.seed) as sampler:
        table = level_table(
            sampler,
            [{"problem": p.problem, "answer": p.answer, "level": p.level} for p in problems],
            temperature=settings.eval_temperature,
            max_tokens=settings.max_response_tokens,
        )
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    p_close = first_token_probability(
        model_dir, [build_prompt(p.problem, "ellipsis") for p in problems], THINK_CLOSE, settings.eval_temperature)
    for row in table:
        mine = [i for i, p in enumerate(problems) if p.level == row["level"]]
        lengths = [len(tok(think_response(problems[i]), add_special_tokens=False)["input_ids"]) + 1 for i in mine]  # + EOS
        row["minimal_think_tokens"] = round(sum(lengths) / len(lengths), 1)
        row["ellipsis_no_think_p"] = round(sum(p_close[i] for i in mine) / len(mine), 4)
    return table


def build(out: Path, settings: ToySettings = ToySettings(), progress: bool = True, force: bool = False) -> dict[str, Any]:
    """Build (or reuse) the toy folder and return the summary."""
    out = Path(out)
    if not force and (cached := cached_summary(out, settings)) is not None:
        _log(f"reusing the build in {out} (settings {settings.digest()})")
        return cached
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    # a rebuild starts from what a first build sees: a config.json left by the previous build
    # would change which tokenizer class AutoTokenizer picks while the model is being built
    for stale in (MANIFEST, "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                  "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        (out / stale).unlink(missing_ok=True)
    evals = eval_split(settings.seed, settings.eval_per_level)
    train = train_split(settings.seed, settings.train_problems, {p.problem for p in evals})
    (out / "data").mkdir(exist_ok=True)
    _write_jsonl(out / "data" / "train.jsonl", train)
    _write_jsonl(out / "data" / "eval.jsonl", evals)
    _log(f"data: {len(train)} train problems, {len(evals)} eval problems ({settings.eval_per_level} per level {LEVELS[0]}..{LEVELS[-1]})")
    t_sft = time.perf_counter()
    sft = warm_start(out, settings, train, progress)
    t_eval = time.perf_counter()
    _log(
        f"warm start done in {t_eval - t_sft:.0f} s: loss {sft['loss_first']:.3f} -> {sft['loss_last']:.3f}; "
        "evaluating with vLLM"
    )
    levels = evaluate(out, evals, settings)
    _log(f"evaluation done in {time.perf_counter() - t_eval:.0f} s")
    summary = {
        "levels": levels,
        "build_seconds": round(time.perf_counter() - t0, 1),
        "params_m": round(sft["params_m"], 3),
        "sft_loss": [round(sft["loss_first"], 4), round(sft["loss_last"], 4)],
    }
    (out / MANIFEST).write_text(json.dumps({
        "settings": settings.model_dump(), "settings_digest": settings.digest(), "summary": summary,
        "built_on": build_environment(), "files": file_digests(out)}, indent=2))
    return summary


def build_environment() -> dict[str, Any]:
    """What a build's floats depend on besides its settings: the library versions, the thread count
    and the CPU's vector extensions (torch picks its kernels by them)."""
    import platform

    import torch

    flags = ""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        pass
    isa = sorted({f for f in flags.split() if f.startswith(("avx", "amx", "fma"))})
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
            "cpu_isa": isa, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def set_threads() -> None:
    """Use every core for the warm start (torch defaults to physical cores), unless
    ``OMP_NUM_THREADS`` says otherwise: on a machine shared with other busy processes one thread
    is much faster than two that wait for each other at every operation."""
    import torch

    wanted = os.environ.get("OMP_NUM_THREADS", "")
    torch.set_num_threads(int(wanted) if wanted.isdigit() and int(wanted) > 0 else max(1, os.cpu_count() or 1))
