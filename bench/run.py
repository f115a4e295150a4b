"""`make bench`: run every benchmark and rewrite BENCHMARKS.md from what they print.

Each figure is a ratio against a baseline measured in the same run, on this machine.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # bench.* (the section renderers) and tests.* (fixtures the benchmarks reuse)


def run_json(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, check=True)
    text = out.stdout.strip()
    if text.startswith("{") and text.endswith("}"):
        return json.loads(text)
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])  # vLLM logs to stdout


def grader_section(g: dict) -> str:
    from bench.grader_bench import parity_markdown

    rows = []
    for name, label in (
        ("self", "MATH500 answers vs themselves"),
        ("rewritten", "MATH500 answers rewritten (\\dfrac, $…$, spacing, x =, period, \\left)"),
        ("arithmetic", "MATH500 integer/fraction answers as unreduced fractions (needs parsing)"),
    ):
        r = g[name]
        rows.append(
            f"| {label} | {r['ours_grades_per_s']:.0f} | {r['math_verify_grades_per_s']:.0f} | **{r['speed_ratio']:.1f}×** "
            f"| {r['ours_accepted']}/{r['count']} | {r['math_verify_accepted']}/{r['count']} "
            f"| {r['ours_worst_s'] * 1000:.1f} ms | {r['math_verify_worst_s'] * 1000:.1f} ms |"
        )
    adv = "\n".join(
        f"| `{a['input']}` | {a['ours_s'] * 1000:.0f} ms ({a['ours_status']}) | {a['math_verify_s'] * 1000:.0f} ms ({a['math_verify']}) |"
        for a in g["adversarial"]
    )
    return f"""## Grader (`bench/grader_bench.py`)

Baseline: math-verify {g.get('math_verify_version', '')} on the same inputs, same process, single thread
(median of {g['repeats']} passes; our comparison cache is cleared before every grade, so repeated
answers are not free). "Accepted" counts grades judged correct: every input here is correct.

| inputs | ours grades/s | math-verify grades/s | speed | ours accepted | math-verify accepted | ours worst | math-verify worst |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Through the process pool (hard 2 s limit per grade, 2 workers, IPC included):
{g['pool_2_workers_grades_per_s']:.0f} grades/s on the rewritten set.

Adversarial inputs (graded against "1"; ours through the pool, math-verify in a child process
stopped after 10 s). Worst case: ours {g['ours_worst_adversarial_s'] * 1000:.0f} ms, math-verify
{g['math_verify_worst_adversarial_s'] * 1000:.0f} ms.

| input | ours | math-verify |
|---|---|---|
{adv}

{parity_markdown(g)}"""


def rollout_section(r: dict) -> str:
    u, b = r["uniform"], r["bimodal"]
    return f"""## Rollout service vs bare vLLM (`bench/rollout_bench.py`)

The service runs vLLM's async engine with every prompt its own request (continuous generation);
the baseline is one synchronous `vllm.LLM.generate` over the same requests with the same engine
settings.  The service is timed from publishing the prompt messages on Redis to the last rollout
group read back (median of {r['repeats']} runs after a warm-up).

| workload | bare tokens/s | service tokens/s | **ratio** (goal ≥ 1.0×) | first group written: bare | service | ratio |
|---|---|---|---|---|---|---|
| uniform: {u['requests']} toy prompts × n=8, ≤ 96 tokens | {u['bare_tokens_per_s']:.0f} | {u['service_tokens_per_s']:.0f} | **{u['ratio']:.2f}×** | {u['bare_first_group_s']:.1f} s | {u['service_first_group_s']:.1f} s | {u['first_group_ratio']:.2f}× |
| bimodal: {b['requests']} requests × n=8, max tokens {b['max_tokens']} | {b['bare_tokens_per_s']:.0f} | {b['service_tokens_per_s']:.0f} | **{b['ratio']:.2f}×** | {b['bare_first_group_s']:.1f} s | {b['service_first_group_s']:.1f} s | {b['first_group_ratio']:.2f}× |

Runs (tokens/s): uniform bare {u['bare_runs']}, service {u['service_runs']}; bimodal bare
{b['bare_runs']}, service {b['service_runs']}.  The bimodal workload uses the toy's architecture
with random weights (a sample's length is then its `max_tokens`): one request in eight runs to
the end of the context, the rest stop at 32 tokens, as AutoThink's think / no-think answers do.
A synchronous batch writes its first group when its longest request ends; the service writes
each group the moment it is done.
"""

def weights_section(w: dict) -> str:
    return f"""## Weight sync vs raw loopback TCP (`bench/weight_sync_bench.py`)

A 1.5B-parameter-sized bf16 state dict ({w['bytes'] / 1e9:.1f} GB) fetched over loopback against the
same bytes over one raw TCP socket into a pre-allocated buffer (median of {w['repeats']}; client and
service in one process, as in the benchmark's baseline).

| | GB/s | seconds |
|---|---|---|
| raw TCP | {w['raw_tcp_gb_per_s']:.2f} | {w['raw_tcp_s']} |
| weight service, bulk port (manifest + checksums over gRPC, bytes over TCP, xxh3-128 per tensor) | {w['bulk_gb_per_s']:.2f} | {w['bulk_s']} |
| weight service, gRPC chunk stream only (4 MiB chunks, sha256 per tensor; the fallback) | {w['grpc_gb_per_s']:.2f} | {w['grpc_s']} |
| **ratio, bulk port** | **{w['ratio']:.2f}×** | goal ≥ 0.7× |
| ratio, gRPC stream | {w['stream_ratio']:.2f}× | |

The median is the steady state: a consumer fetches every version of the same model, and the
client reuses its receive buffer once nothing views the previous version's tensors (as the raw
TCP baseline reuses its pre-allocated buffer). The first fetch of a run allocates the 3 GB buffer
(~1 s of page zeroing here): {w['first_bulk_gb_per_s']:.2f} GB/s.

The gRPC stream alone tops out at ~0.4 GB/s here (Python gRPC's per-message cost), so the bytes
travel over the bulk port: `FetchManifest` returns every tensor's place in one contiguous, 64-byte
aligned blob with its sha256 and xxh3-128 and a one-time ticket; the client presents the ticket on
the bulk port, receives the blob straight into one buffer, checks each tensor's xxh3-128 (~23 GB/s,
where sha256 runs at ~1-1.7 GB/s) and views the tensors in place. Without a bulk port (or when
it is unreachable) the client uses the stream.
"""


def staleness_section(r: dict) -> str:
    runs = r["runs"]

    def row(key: str, label: str) -> str:
        x = runs[key]
        return f"| {label} | {x['median_step_s']:.2f} s | {x['steps_per_hour']:.0f} | {x['wait']:.2f} s | {x['train']:.2f} s |"

    return f"""## Learner steps/h: max_staleness 1 vs 0 (`bench/staleness_bench.py`)

Toy preset stage ({r['prompts_per_step']} prompts × {r['samples_per_prompt']} samples a step), {r['steps']} steps a
run, through redis + reward + rollout (vLLM) + learner (DeepSpeed) on this machine; median
wall time between consecutive steps (first step dropped), and the learner's median time waiting
for rollouts and training.  "split": the rollout service on cores {r['split'].get('rollout')}, the learner on
{r['split'].get('learner')} (`AUTOTHINK_CPUS`, what `autothink up` does when max_staleness ≥ 1 on a CPU-only machine);
"shared": every process on every core.

| | median step | steps/h | waiting | training |
|---|---|---|---|---|
{row("split0", "split, max_staleness 0 (on-policy)")}
{row("split1", "split, max_staleness 1 (generate k+1 while training k)")}
{row("shared0", "shared, max_staleness 0")}
{row("shared1", "shared, max_staleness 1")}

| ratio (steps/h) | |
|---|---|
| max_staleness 1 vs 0, each role on its own cores (goal ≥ 1.5×) | **{r['ratio_split']:.2f}×** |
| max_staleness 1 vs 0, everything sharing every core | {r['ratio_shared']:.2f}× |
| best of each: split + max_staleness 1 vs shared + max_staleness 0 | {r['ratio_best']:.2f}× |

With its own resources per role -- the setting max_staleness is for, and what GPUs or Kubernetes
CPU limits give -- overlapping generation with training meets the goal: the learner no longer
waits for rollouts.  On this 2-core machine as a whole the gain is smaller: on-policy on shared
cores gives each phase both cores in turn, so it wastes far less than on-policy on split cores,
and the best layout for each setting differs by much less than 1.5× (last row).  Sharing cores with
max_staleness 1 is the worst layout: two OpenMP pools oversubscribe the cores.
"""


def gateway_section(g: dict) -> str:
    def row(label: str, key: str) -> str:
        ratio = f" | **{g[key + '_throughput_ratio']:.2f}×** | **{g[key + '_p50_ratio']:.2f}×**" if key != "vllm_serve" else " | baseline | baseline"
        cpu = g.get(key + "_frontend_cpu_ms_per_request")
        return (f"| {label} | {g[key + '_tokens_per_s']:.0f} | {g[key + '_p50_s'] * 1000:.0f} ms{ratio} | "
                f"{'-' if cpu is None else f'{cpu:.1f} ms'} | {g['spread'][key]} |")

    rows = [row("`vllm serve` /v1/completions", "vllm_serve"), row("gateway /v1/completions (same bodies)", "gateway_completions"),
            row("gateway POST /generate, mode=auto (think probability in the sampling step + split)", "gateway_generate_auto")]
    if "before_gateway_completions_tokens_per_s" in g:  # --before: the previous gateway in the same run
        rows += [row("previous gateway /v1/completions", "before_gateway_completions"),
                 row("previous gateway POST /generate, mode=auto", "before_gateway_generate_auto")]
    table = "\n".join(rows)
    paired = "; ".join(f"{k} {g[k + '_paired_throughput_ratio']:.2f}× / {g[k + '_paired_p50_ratio']:.2f}×"
                       for k in ("gateway_completions", "gateway_generate_auto") if k + "_paired_throughput_ratio" in g)
    return f"""## Gateway vs `vllm serve` (`bench/gateway_bench.py`)

The toy model behind each server, same engine settings, servers started once; {g['concurrency']} concurrent clients send
{g['requests']} requests (toy eval problems under the ellipsis prompt, temperature 0.6, top-p 0.95, max {g['max_tokens']}
tokens, a seed per request); median of {g['rounds']} rounds, the servers' order flipped every round.
Front-end CPU: the serving process's CPU time per request (the engine's own processes excluded).

| server / endpoint | tokens/s | p50 latency | throughput ratio | p50 ratio | front-end CPU / request | tokens/s per round |
|---|---|---|---|---|---|---|
{table}

Per-round ratios (gateway / `vllm serve`, throughput and p50): {g['round_ratios']}; their medians
(the paired figure, robust to load that drifts between rounds): {paired}.
Time to first token, `think_threshold=0.5` against plain auto (streaming `/generate`): **{g['ttft_threshold_ratio']:.2f}×**
({g['ttft_p50_think_threshold_s'] * 1000:.0f} vs {g['ttft_p50_auto_s'] * 1000:.0f} ms p50).

Goals (issue #21): `/generate` auto ≥ 0.95× throughput and ≤ 1.05× p50. With a 0.64 M-parameter
model the engine's compute is small, so this measures the serving path (HTTP, tokenisation, the
async engine client) more than the model; on a GPU with a 1.5B model both servers are bound by
the same engine.
"""


def bus_section(b: dict) -> str:
    return f"""## Bus: 8k-token trajectories on Redis streams (`bench/bus_bench.py`)

{b['groups']} rollout groups of {b['samples_per_group']} samples × {b['tokens_per_sample']:,} token ids + log-probs
({b['mb']} MB on the wire), XADD → XREADGROUP → XACK through a private redis-server; median of
{b['repeats']} runs.

| | MB/s | runs |
|---|---|---|
| raw redis-py, pre-encoded bytes, no decoding | {b['raw_mb_per_s']} | {b['raw_runs_mb_per_s']} |
| `RedisBus` publish → read → decode → ack | {b['ours_mb_per_s']} ({b['trajectories_per_s']:.0f} trajectories/s) | {b['ours_runs_mb_per_s']} |
| **ratio** | **{b['ratio']:.2f}×** | |

The difference is the codec: turning 65k Python ints and floats into int32/float32 bytes and
back costs ~6 ms each way per group (numpy; `array` is only ~20 % faster). Redis itself is not
the bottleneck: at {b['trajectories_per_s']:.0f} trajectories/s the bus moves far more than the rollout
service produces on any machine we have measured.
"""


def demo_section(d: dict) -> str:
    return f"""## The demo's wall time (`autothink demo --no-serve`)

| | seconds | budget |
|---|---|---|
| whole demo on the embedded toy (no build step) | {d['seconds']:.0f} | 900 (15 min on 2 cores) |

{_demo_verdict(d)}
"""


def _demo_verdict(d: dict) -> str:
    """The demo against the issue's 15 minutes for a fresh machine (the toy is committed: no build).

    >>> _demo_verdict({"seconds": 747})
    'The demo (747 s) stays under the 15-minute budget for a fresh machine.'
    >>> _demo_verdict({"seconds": 986})
    'The demo (986 s) is **over** the 15-minute budget for a fresh machine.'
    """
    total = d["seconds"]
    return f"The demo ({total:.0f} s) {'stays under' if total <= 900 else 'is **over**'} the 15-minute budget for a fresh machine."


def demo_time() -> dict:

    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    t0 = time.time()
    subprocess.run([str(Path(sys.executable).with_name("autothink")), "demo", "--no-serve", "--out", str(ROOT / "reports" / "bench-demo"), "--port", str(port)],
                   cwd=ROOT, check=True, capture_output=True)
    return {"seconds": time.time() - t0}


def learner_section(bench: dict, probes: list[tuple[str, dict]]) -> str:
    from bench.learner_bench import markdown_rows

    rows = "\n".join(
        f"| `{lengths}` | {p['peak_memory_bytes'] / 2**30:.2f} GiB | {p['real_tokens']:,} | {p['computed_tokens']:,} | "
        f"**{p['computed_tokens'] / p['real_tokens']:.2f}** | {p['micro_batches']} | {p['seconds']:.0f} s |"
        for lengths, p in probes
    )
    return f"""## Learner at long responses: chunked LM head vs full-vocabulary logits (`bench/learner_bench.py`)

One GRPO update per measurement (`learner-probe`: old log-prob pass, loss with entropy, backward,
AdamW step; toy preset settings: fp32, ZeRO-0), each in a process of its own so the peak is that
measurement's alone (CPU: the process's peak resident memory). Model: 2-layer Qwen2, hidden 64,
the R1 vocabulary (151,936, untied head), random weights; a 128-token prompt plus the response.
Baseline: the same update computing `[T, V]` logits (`--plain-logprobs`), same run ({bench.get('device', '?')}).

| response tokens | plain peak | chunked peak | memory ratio | plain tokens/s | chunked tokens/s | speed ratio |
|---|---|---|---|---|---|---|
{markdown_rows(bench)}

`learner-probe` at the issue's sizes, same model (chunked, token budget 32,768):

| `--lengths` | peak memory | real tokens | computed tokens | computed / real | micro-batches | update |
|---|---|---|---|---|---|---|
{rows}

The 1.5B-shaped runs need a GPU (`--random-model r1-distill-1.5b`, bf16, 8k and 16k tokens):
`python -m services.learner.probe --random-model r1-distill-1.5b --experiment paper --stage stage3 --lengths 8192`.
"""


def probe(lengths: str) -> dict:
    return run_json(["-m", "services.learner.probe", "--random-model", "r1-vocab-tiny", "--lengths", lengths])


def main() -> None:
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    grader = run_json(["bench/grader_bench.py", "--data", sys.argv[1] if len(sys.argv) > 1 else "../shared/data/benchmarks/math.json"])
    from autothink.config import embedded_toy_path

    model = Path(embedded_toy_path())
    rollout = run_json(["bench/rollout_bench.py", "--model", str(model)])
    weights = run_json(["bench/weight_sync_bench.py", "--params", "1.5e9", "--repeats", "4"])
    staleness = run_json(["bench/staleness_bench.py", "--model", str(model)])
    gateway = run_json(["bench/gateway_bench.py", "--model", str(model)])
    bus = run_json(["bench/bus_bench.py"])
    demo = demo_time()
    learner = run_json(["bench/learner_bench.py", "--lengths", "256,1024,8192", "--plain-max", "1024"])
    probes = [(lengths, probe(lengths)) for lengths in ("8192", "30x256,2x8192")]
    text = f"""# Benchmarks

Written by `make bench` on {started} ({platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores).
Every figure is measured against its baseline in the same run; machines here are noisy, so
compare ratios, not absolute numbers.

{grader_section(grader)}
{rollout_section(rollout)}
{weights_section(weights)}
{staleness_section(staleness)}
{gateway_section(gateway)}
{bus_section(bus)}
{demo_section(demo)}
{learner_section(learner, probes)}"""
    from bench.seeds_bench import BEGIN, END

    old = (ROOT / "BENCHMARKS.md").read_text() if (ROOT / "BENCHMARKS.md").exists() else ""
    if BEGIN in old and END in old:  # the seeds section is an hour of its own (make bench-seeds): keep it
        text += "\n" + BEGIN + old.split(BEGIN, 1)[1].split(END, 1)[0] + END + "\n"
    (ROOT / "BENCHMARKS.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
