"""Rollout-service tokens/s against bare ``vllm.LLM.generate`` over the same requests, in one run.

    .venv/bin/python bench/rollout_bench.py 

Two workloads, each timed for the bare engine (one synchronous ``LLM.generate`` over every
request, the way the service used to work) and for the service (publish every prompt message on
Redis, read every rollout group back):

* **uniform** -- toy eval problems under the ellipsis prompt, n=8, temperature 0.6, at most 96
  tokens: the toy model's own short answers.
* **bimodal** -- AutoThink's length profile at the paper's scale, shrunk: most requests short
  (no-think answers), a few running to the end of the context (think answers).  A model with the
  toy's architecture and tokenizer but *random weights* stands in, so a sample's length is its
  ``max_tokens`` (random weights rarely pick the end-of-sentence token) and the workload is exactly
  the one asked for.  Besides tokens/s it reports how long the first group takes to be written:
  a synchronous batch writes nothing until its longest request ends.

Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autothink.config import embedded_toy_path  # noqa: E402


@dataclass
class Request:
    group_id: str
    problem: str
    n: int
    max_tokens: int
    temperature: float


def bare(model: str, context: int, prompts: list[str], reqs: list[Request], repeats: int) -> list[dict]:
    """One synchronous generate over all requests: every group is done when the longest is."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams

    llm = LLM(model=model, max_model_len=context, enforce_eager=True, seed=0)
    params = [SamplingParams(n=r.n, temperature=r.temperature, max_tokens=r.max_tokens, logprobs=0) for r in reqs]
    llm.generate(prompts[:4], params[:4], use_tqdm=False)  # warm up
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        dt = time.perf_counter() - t0
        runs.append({"tokens_per_s": sum(len(c.token_ids) for o in outs for c in o.outputs) / dt, "first_group_s": dt, "seconds": dt})
    llm.llm_engine.engine_core.shutdown()
    return runs


def service(model: str, context: int, reqs: list[Request], repeats: int) -> list[dict]:
    from autothink.bus.messages import PromptMsg, decode
    from autothink.bus.streams import RedisBus
    from tests.conftest import RedisServer, free_port, wait_healthy

    work = Path(tempfile.mkdtemp())
    redis = RedisServer(work)
    redis.start()
    port = free_port()
    env = {**os.environ, "AUTOTHINK_ROLLOUT_MODEL": model, "AUTOTHINK_ROLLOUT_REDIS__URL": redis.url,
           "AUTOTHINK_ROLLOUT_RUN_ID": "bench", "AUTOTHINK_ROLLOUT_PORT": str(port), "AUTOTHINK_ROLLOUT_MAX_MODEL_LEN": str(context),
           "AUTOTHINK_ROLLOUT_FOLLOW_WEIGHTS": "false", "AUTOTHINK_ROLLOUT_MAX_INFLIGHT_PROMPTS": str(len(reqs))}
    proc = subprocess.Popen([sys.executable, "-m", "services.rollout"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        bus = RedisBus(redis.url, "bench")
        wait_healthy(f"http://127.0.0.1:{port}/health", proc)
        runs = []
        for r in range(repeats + 1):
            todo = reqs if r else reqs[:4]  # the first round warms the engine up
            msgs = [PromptMsg(group_id=f"r{r}-{q.group_id}", problem=q.problem, n=q.n, temperature=q.temperature,
                              max_tokens=q.max_tokens) for q in todo]
            start_id = bus.client.xinfo_stream(bus.names.rollouts)["last-generated-id"] if bus.length(bus.names.rollouts) else "0-0"
            t0 = time.perf_counter()
            for m in msgs:
                bus.publish(bus.names.prompts, m)
            got, last, first = {}, start_id, None
            while len(got) < len(msgs):
                resp = bus.client.xread({bus.names.rollouts: last}, block=1000, count=1000) or []
                for _, items in resp:
                    for entry_id, fields in items:
                        last = entry_id
                        g = decode(fields, "rollout")
                        got[g.group_id] = sum(len(s.token_ids) for s in g.samples)
                        first = first if first is not None else time.perf_counter() - t0
            dt = time.perf_counter() - t0
            if r:
                runs.append({"tokens_per_s": sum(got.values()) / dt, "first_group_s": first, "seconds": dt})
        return runs
    finally:
        proc.terminate()
        proc.wait(30)
        redis.stop()


def random_proxy(toy: Path, context: int) -> Path:
    """The toy's architecture and tokenizer with random weights and ``context`` positions."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    out = Path(tempfile.mkdtemp(prefix="rollout-bench-proxy-"))
    for f in toy.iterdir():
        if f.is_file() and f.name.startswith(("tokenizer", "special_tokens", "chat_template", "generation_config")):
            shutil.copy(f, out / f.name)
    cfg = AutoConfig.from_pretrained(toy)
    cfg.max_position_embeddings = context
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
    return out


def summary(name: str, b: list[dict], s: list[dict], reqs: list[Request]) -> dict:
    med = lambda runs, k: statistics.median(x[k] for x in runs)  # noqa: E731
    return {
        "workload": name, "requests": len(reqs), "samples": sum(r.n for r in reqs),
        "max_tokens": sorted({r.max_tokens for r in reqs}),
        "bare_tokens_per_s": round(med(b, "tokens_per_s"), 1), "service_tokens_per_s": round(med(s, "tokens_per_s"), 1),
        "ratio": round(med(s, "tokens_per_s") / med(b, "tokens_per_s"), 3),
        "bare_first_group_s": round(med(b, "first_group_s"), 2), "service_first_group_s": round(med(s, "first_group_s"), 2),
        "first_group_ratio": round(med(s, "first_group_s") / med(b, "first_group_s"), 3),
        "bare_runs": [round(x["tokens_per_s"], 1) for x in b], "service_runs": [round(x["tokens_per_s"], 1) for x in s],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=embedded_toy_path())
    ap.add_argument("--prompts", type=int, default=64, help="requests per workload")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--context", type=int, default=1024, help="context length of the bimodal proxy")
    ap.add_argument("--long-every", type=int, default=8, help="one request in this many runs to the end of the context")
    ap.add_argument("--workloads", default="uniform,bimodal")
    args = ap.parse_args()
    from autothink.prompting import build_prompt
    from autothink.toy.task import eval_split

    problems = eval_split(0, 8)[: args.prompts]
    results = {}
    if "uniform" in args.workloads:
        reqs = [Request(f"u{i}", p.problem, 8, 96, 0.6) for i, p in enumerate(problems)]
        prompts = [build_prompt(p.problem, "ellipsis") for p in problems]
        results["uniform"] = summary("uniform", bare(args.model, 256, prompts, reqs, args.repeats),
                                     service(args.model, 256, reqs, args.repeats), reqs)
    if "bimodal" in args.workloads:
        proxy = random_proxy(Path(args.model), args.context)
        try:
            long_tokens = args.context - 64  # the prompt takes the rest
            reqs = [Request(f"b{i}", p.problem, 8, long_tokens if i % args.long_every == 0 else 32, 1.0) for i, p in enumerate(problems)]
            reqs = reqs[1:] + reqs[:1]  # a long request is not first in line
            prompts = [build_prompt(r.problem, "ellipsis") for r in reqs]
            results["bimodal"] = summary("bimodal", bare(str(proxy), args.context, prompts, reqs, args.repeats),
                                         service(str(proxy), args.context, reqs, args.repeats), reqs)
        finally:
            shutil.rmtree(proxy, ignore_errors=True)
    print(json.dumps({"repeats": args.repeats, **results}))


if __name__ == "__main__":
    main()
