"""`autothink learner-probe`: does an experiment's learner fit, and how fast is it?

A researcher runs it before renting a cluster.  It runs one real GRPO update — the old log-prob
pass, the loss, backward and the optimizer step — with the experiment's optimizer and DeepSpeed
settings, on synthetic samples of the response lengths asked for (a prompt of typical length is
added to each), and reports peak memory, tokens, micro-batches and time.  It is the learner's own
code path (services.learner.trainer), so what fits here fits in training.

    python -m services.learner.probe --random-model r1-vocab-tiny --lengths 30x256,2x8192
    torchrun --nproc_per_node 2 -m services.learner.probe --model DIR --experiment paper --lengths 4x16384

The last line of output is one JSON object (``peak_memory_bytes``, ``real_tokens``,
``computed_tokens``, ``micro_batches``, ``seconds``, ``device`` and more); the lines above it are
for people.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

#: Model shapes ``--random-model`` knows by name (Qwen2 architecture, random weights).
SHAPES: dict[str, dict[str, int]] = {
    # the CPU check: the R1 vocabulary on a 2-layer toy body (the LM head dominates)
    "r1-vocab-tiny": {"layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2, "intermediate": 128, "vocab": 151_936},
    # DeepSeek-R1-Distill-Qwen-1.5B's shape
    "r1-distill-1.5b": {"layers": 28, "hidden": 1536, "heads": 12, "kv_heads": 2, "intermediate": 8960, "vocab": 151_936},
}
SHAPE_KEYS = ("layers", "hidden", "heads", "kv_heads", "intermediate", "vocab")
#: Peak dense bf16 FLOP/s of GPUs the MFU figure knows (vendor datasheets, without sparsity).
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def parse_lengths(text: str) -> list[int]:
    """``"30x256,2x8192"`` -> 30 times 256 then 2 times 8192; a bare ``LEN`` is one sample.

    >>> parse_lengths("2x3,5")
    [3, 3, 5]
    """
    out: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        m = re.fullmatch(r"(?:(\d+)\s*[xX*]\s*)?(\d+)", part)
        if not m or int(m.group(2)) < 1 or (m.group(1) is not None and int(m.group(1)) < 1):
            raise argparse.ArgumentTypeError(f"--lengths: {part!r} is not LEN or COUNTxLEN (positive integers)")
        out += [int(m.group(2))] * int(m.group(1) or 1)
    return out


def parse_shape(text: str) -> dict[str, int]:
    """A named shape, or ``layers=2,hidden=64,...`` over the tiny shape's defaults.

    >>> parse_shape("r1-distill-1.5b")["layers"], parse_shape("layers=4,vocab=1000")["vocab"]
    (28, 1000)
    """
    if text in SHAPES:
        return dict(SHAPES[text])
    shape = dict(SHAPES["r1-vocab-tiny"])
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or key.strip() not in SHAPE_KEYS or not value.strip().isdigit():
            raise argparse.ArgumentTypeError(
                f"--random-model: {item!r}; use a name ({', '.join(SHAPES)}) or KEY=INT with KEY in {', '.join(SHAPE_KEYS)}")
        shape[key.strip()] = int(value)
    return shape


def write_random_model(out: Path, shape: dict[str, int], seed: int = 0, dtype: str = "float32") -> Path:
    """A Qwen2 causal LM with random weights (untied head, as R1-Distill-1.5B) saved in ``out``."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=shape["vocab"], hidden_size=shape["hidden"], intermediate_size=shape["intermediate"],
        num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"], num_key_value_heads=shape["kv_heads"],
        max_position_embeddings=131_072, tie_word_embeddings=False, use_cache=False,
    )
    torch.manual_seed(seed)
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"  # each rank its own GPU
    with torch.device(device):
        model = Qwen2ForCausalLM(cfg).to(getattr(torch, dtype))
    model.save_pretrained(str(out), safe_serialization=True)
    return out


def synthetic_batch(lengths: list[int], prompt_length: int, vocab: int, group_size: int, seed: int = 0) -> Any:
    """Samples of these response lengths after ``prompt_length``-token prompts, random token ids,
    in groups of ``group_size`` with advantages of both signs (so the update moves the weights)."""
    import random

    from autothink.batching import TrainBatch, TrainSample

    rng = random.Random(seed)
    samples, adv = [], []
    for k, n in enumerate(lengths):
        prompt = [rng.randrange(vocab) for _ in range(prompt_length)]
        response = [rng.randrange(vocab) for _ in range(n)]
        samples.append(TrainSample(f"g{k // group_size}", prompt, response, [], True, k % 2 == 0, n, float(k % 2 == 0), 0))
        adv.append(1.0 if k % 2 == 0 else -1.0)
    return TrainBatch(samples, [float(a) for a in adv], adv)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="autothink learner-probe",
        description="Run one real GRPO update (old log-probs, loss, backward, optimizer step) with an experiment's\n"
        "optimizer and DeepSpeed settings on synthetic samples of the given response lengths, and report\n"
        "peak memory, tokens, micro-batches and time: does the experiment fit, and how fast is it?\n"
        "Works on CPU (gloo) and GPU, and under torchrun for several ranks. The last line of output is\n"
        "one JSON object (peak_memory_bytes, real_tokens, computed_tokens, micro_batches, seconds, device, ...).",
        epilog="examples:\n"
        "  autothink learner-probe --random-model r1-vocab-tiny --lengths 8192\n"
        "  autothink learner-probe --model /models/DeepSeek-R1-Distill-Qwen-1.5B --experiment paper --stage stage3 "
        "--lengths 8x24576,56x600\n"
        "  torchrun --nproc_per_node 8 -m services.learner.probe --model DIR --experiment paper --lengths 64x8192",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", type=Path, help="Hugging Face folder of the policy (weights are loaded; no tokenizer is needed)")
    src.add_argument("--random-model", type=parse_shape, metavar="SHAPE",
                     help=f"a Qwen2 with random weights instead: {' or '.join(SHAPES)}, or KEY=INT,... with keys "
                     f"{', '.join(SHAPE_KEYS)} (written to a temporary folder)")
    p.add_argument("--experiment", default="toy", help="experiment YAML file or preset name (default: toy)")
    p.add_argument("--stage", help="stage whose temperature and group size to use (default: the first)")
    p.add_argument("--lengths", type=parse_lengths, required=True,
                   help="response lengths: a comma list of LEN or COUNTxLEN, e.g. 30x256,2x8192")
    p.add_argument("--prompt-length", type=int, default=128, help="prompt tokens added to every sample (default: 128)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override an experiment setting, e.g. optim.max_tokens_per_micro_batch=16384 (repeatable)")
    p.add_argument("--plain-logprobs", action="store_true",
                   help="compute full-vocabulary logits instead of the chunked LM head (the old path, for comparison)")
    p.add_argument("--chunk-tokens", type=int, help="tokens per chunk of the LM head (default: ~256 MB of fp32 logits)")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.prompt_length < 1:
        print("--prompt-length must be at least 1", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s probe %(levelname)s %(message)s")

    from autothink.config import ConfigError, load_config

    model_dir = args.model
    try:
        run = load_config(args.experiment, [*args.set, f"model.path={model_dir or '.'}"])
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    stages = {s.name: s for s in run.stages}
    if args.stage is not None and args.stage not in stages:
        print(f"--stage: no stage {args.stage!r} in {args.experiment}; stages: {', '.join(stages)}", file=sys.stderr)
        return 2
    stage = stages[args.stage] if args.stage else run.stages[0]
    if model_dir is not None and not (model_dir / "config.json").is_file():
        print(f"--model: {model_dir} has no config.json", file=sys.stderr)
        return 2

    import torch

    tmp = None
    if model_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="learner-probe-")
        dtype = "bfloat16" if run.deepspeed.dtype == "bfloat16" or (run.deepspeed.dtype == "auto" and torch.cuda.is_available()) else "float32"
        model_dir = write_random_model(Path(tmp.name), args.random_model, args.seed, dtype)

    from services.learner.trainer import GRPOTrainer, peak_memory_bytes

    try:
        trainer = GRPOTrainer(model_dir, run.optim.model_copy(update={"epochs": 1}), run.deepspeed, run.seed,
                              chunked_logprobs=not args.plain_logprobs, logprob_chunk_tokens=args.chunk_tokens)
        trainer.reuse_logprobs_for_one_update = False  # measure the old log-prob pass as training runs it
        load_peak = trainer._global_max(float(peak_memory_bytes()))
        module = trainer.engine.module
        vocab = int(module.config.vocab_size)
        n_params = sum(int(getattr(p, "ds_numel", p.numel())) for p in module.parameters())  # ZeRO-3 shards report 0
        batch = synthetic_batch(args.lengths, args.prompt_length, vocab, stage.samples_per_prompt, args.seed)
        groups = len({s.group_id for s in batch.samples})
        stats = trainer.train(batch, groups_per_mini_batch=groups, temperature=stage.temperature)
    finally:
        if tmp is not None:
            tmp.cleanup()

    on_gpu = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if on_gpu else "cpu"
    peak = stats["peak_memory_bytes"] if on_gpu else max(stats["peak_memory_bytes"], load_peak)
    # 6 N per trained token (forward 2N + backward 4N) plus 2N for the old log-prob pass
    flops = 8.0 * n_params * stats["real_tokens"] / max(stats["seconds"], 1e-9)
    peak_flops = next((v for k, v in PEAK_BF16_FLOPS.items() if k in device), None) if on_gpu else None
    budget = run.optim.max_tokens_per_micro_batch
    over = [n for n in args.lengths if n + args.prompt_length > budget]
    result = {
        "peak_memory_bytes": int(peak),
        "update_peak_memory_bytes": int(stats["peak_memory_bytes"]),
        "real_tokens": int(stats["real_tokens"]),
        "computed_tokens": int(stats["computed_tokens"]),
        "padding_fraction": round(stats["padding_fraction"], 4),
        "micro_batches": int(stats["micro_batches"]),
        "seconds": round(stats["seconds"], 3),
        "tokens_per_s": round(stats["tokens_per_s"], 1),
        "device": device,
        "world_size": trainer.world,
        "zero_stage": run.deepspeed.zero_stage,
        "dtype": str(trainer.dtype).replace("torch.", ""),
        "logprobs": "plain" if args.plain_logprobs else "chunked",
        "layout": "packed" if trainer.packed else "padded",
        "max_tokens_per_micro_batch": budget,
        "samples": len(args.lengths),
        "parameters": n_params,
        "model_flops_per_s": round(flops),
        "mfu": round(flops / (peak_flops * trainer.world), 4) if peak_flops else None,
    }
    if trainer.rank == 0:
        gib = 1024**3
        what = "GPU allocator peak" if on_gpu else "process peak resident memory"
        print(f"learner-probe: {trainer.world} rank(s) on {device}, {result['dtype']}, ZeRO-{run.deepspeed.zero_stage}, "
              f"{result['logprobs']} log-probs, {result['layout']} micro-batches, {n_params / 1e6:.1f} M parameters")
        print(f"samples: {len(args.lengths)} ({args.prompt_length}-token prompts), {result['real_tokens']} real tokens; "
              f"stage {stage.name} (temperature {stage.temperature})")
        print(f"micro-batches: {result['micro_batches']} per rank within {budget} tokens; {result['computed_tokens']} tokens "
              f"computed, {100 * result['padding_fraction']:.1f} % padding")
        if over:
            print(f"warning: {len(over)} sample(s) longer than the token budget ran in micro-batches of their own")
        print(f"update: {result['seconds']:.2f} s, {result['tokens_per_s']:.0f} tokens/s; peak memory {peak / gib:.2f} GiB ({what})"
              + (f"; MFU {100 * result['mfu']:.1f} %" if result["mfu"] is not None else ""))
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
