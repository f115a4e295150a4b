"""Rollout-service tokens/s against bare ``vllm.LLM.generate`` on the same prompts, in one run.

    .venv/bin/python bench/rollout_bench.py --model .cache/toy-model

Same model, prompts (toy eval problems under the ellipsis prompt), sampling parameters
(n=8, temperature 0.6, max_tokens 96, log-probs of the sampled tokens) and engine settings.
The service is timed end to end: from publishing the prompt messages on Redis to having every
rollout group back on the rollouts stream. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def bare(model: str, prompts: list[str], n: int, max_tokens: int, repeats: int) -> list[float]:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams

    llm = LLM(model=model, max_model_len=256, enforce_eager=True, seed=0)
    params = SamplingParams(n=n, temperature=0.6, max_tokens=max_tokens, logprobs=0)
    llm.generate(prompts[:4], params, use_tqdm=False)  # warm up
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        dt = time.perf_counter() - t0
        rates.append(sum(len(c.token_ids) for o in outs for c in o.outputs) / dt)
    llm.llm_engine.engine_core.shutdown()
    return rates


def service(model: str, problems: list, n: int, max_tokens: int, repeats: int) -> list[float]:
    from autothink.bus.messages import PromptMsg, decode
    from autothink.bus.streams import RedisBus
    from tests.conftest import RedisServer, free_port, wait_healthy

    work = Path(tempfile.mkdtemp())
    redis = RedisServer(work)
    redis.start()
    port = free_port()
    env = {**os.environ, "AUTOTHINK_ROLLOUT_MODEL": model, "AUTOTHINK_ROLLOUT_REDIS__URL": redis.url,
           "AUTOTHINK_ROLLOUT_RUN_ID": "bench", "AUTOTHINK_ROLLOUT_PORT": str(port), "AUTOTHINK_ROLLOUT_MAX_MODEL_LEN": "256",
           "AUTOTHINK_ROLLOUT_FOLLOW_WEIGHTS": "false", "AUTOTHINK_ROLLOUT_PROMPTS_PER_GENERATE": str(len(problems))}
    proc = subprocess.Popen([sys.executable, "-m", "services.rollout"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        bus = RedisBus(redis.url, "bench")
        wait_healthy(f"http://127.0.0.1:{port}/health", proc)
        rates = []
        for r in range(repeats + 1):
            msgs = [PromptMsg(group_id=f"r{r}-{i}", problem=p.problem, answer=p.answer, n=n, temperature=0.6, max_tokens=max_tokens)
                    for i, p in enumerate(problems if r else problems[:4])]
            start_id = bus.client.xinfo_stream(bus.names.rollouts)["last-generated-id"] if bus.length(bus.names.rollouts) else "0-0"
            t0 = time.perf_counter()
            for m in msgs:
                bus.publish(bus.names.prompts, m)
            got, last = {}, start_id
            while len(got) < len(msgs):
                resp = bus.client.xread({bus.names.rollouts: last}, block=1000, count=1000) or []
                for _, items in resp:
                    for entry_id, fields in items:
                        last = entry_id
                        g = decode(fields, "rollout")
                        got[g.group_id] = sum(len(s.token_ids) for s in g.samples)
            dt = time.perf_counter() - t0
            if r:  # the first round warms the engine up
                rates.append(sum(got.values()) / dt)
        return rates
    finally:
        proc.terminate()
        proc.wait(30)
        redis.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=".cache/toy-model")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from autothink.prompting import build_prompt
    from autothink.toy.task import eval_split

    problems = eval_split(0, 8)[: args.prompts]
    b = bare(args.model, [build_prompt(p.problem, "ellipsis") for p in problems], 8, 96, args.repeats)
    s = service(args.model, problems, 8, 96, args.repeats)
    print(json.dumps({
        "prompts": len(problems), "n": 8, "repeats": args.repeats,
        "bare_tokens_per_s": round(statistics.median(b), 1), "service_tokens_per_s": round(statistics.median(s), 1),
        "ratio": round(statistics.median(s) / statistics.median(b), 3),
        "bare_runs": [round(x, 1) for x in b], "service_runs": [round(x, 1) for x in s],
    }))


if __name__ == "__main__":
    main()
