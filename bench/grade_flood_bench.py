"""The M1 flood of issue #39 against a real reward service: /health latency and training-group
latency, before and during a flood of slow ad-hoc grades.

    .venv/bin/python bench/grade_flood_bench.py [--clients 44] [--seconds 20] [--code DIR]

A private redis-server on a free port and ``python -m services.reward`` as its own process, with
an API key, one training grader and one ad-hoc grader worker (the service's defaults otherwise:
``adhoc_queue`` 8, ``adhoc_max_wait_s`` 5 s, wall clock 10 s).  The flood: ``--clients`` threads, each posting the slow case
of the issue -- response ``\\boxed{(x+1)^{30}(x-1)^{30}}`` against 2,000 ground truths
``(x^2-1)^{30}+k`` (each request with other constants, so none is answered from the grader's
cache) -- again as soon as its last answer came back, 429 or not (a client that ignores
Retry-After: the worst case; ``--respect-retry-after`` for clients that wait as told).  Meanwhile, once a second, the bench times ``GET /health`` and one
training group (two correct samples, published to the rollouts stream) from XADD until its scored
group is in the scored stream.  The same probes before the flood are the baseline.

``--code DIR`` runs the service from another checkout (e.g. ``git archive <commit> | tar -x -C DIR``)
for a before/after comparison on the same machine.  Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KEY = "bench-key"


def m1_body(offset: int = 0) -> dict:
    """The issue's slow case; ``offset`` shifts the constants so that no two requests are the same
    comparison (the grader caches verdicts, and a flood of one request would be graded once)."""
    return {"response": "</think>\n\n\\boxed{(x+1)^{30}(x-1)^{30}}",
            "ground_truth": [f"(x^2-1)^{{30}}+{k + offset}" for k in range(1, 2001)]}


def _summary(xs: list[float]) -> dict:
    if not xs:
        return {"n": 0}
    xs = sorted(xs)
    return {"n": len(xs), "p50_ms": round(1000 * statistics.median(xs), 1),
            "p95_ms": round(1000 * xs[min(len(xs) - 1, int(0.95 * len(xs)))], 1), "max_ms": round(1000 * xs[-1], 1)}


class Probe:
    def __init__(self, base: str, bus):
        import httpx

        self.http = httpx.Client(timeout=120)
        self.base, self.bus = base, bus
        self.last_id = "0-0"
        self.count = 0

    def health(self) -> float:
        t0 = time.perf_counter()
        r = self.http.get(f"{self.base}/health")
        r.raise_for_status()
        return time.perf_counter() - t0

    def training_group(self, timeout: float = 300) -> float:
        from autothink.bus.messages import PromptMsg, RolloutGroup, Sample, decode

        self.count += 1
        gid = f"probe-{self.count}"
        group = RolloutGroup(PromptMsg(gid, "What is 5+7?", "12", n=2), 0,
                             [Sample("</think>\n\n\\boxed{12}", [1, 2], [-0.5, -0.5]),
                              Sample("5+7=12\n</think>\n\n\\boxed{12}", [1, 2, 3], [-0.5, -0.5, -0.5])])
        t0 = time.perf_counter()
        self.bus.publish(self.bus.names.rollouts, group)
        while time.perf_counter() - t0 < timeout:
            for _stream, entries in self.bus.client.xread({self.bus.names.scored: self.last_id}, block=100) or []:
                for entry_id, fields in entries:
                    self.last_id = entry_id
                    if decode(fields, "scored").group_id == gid:
                        return time.perf_counter() - t0
        raise TimeoutError(f"{gid} not scored within {timeout} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=44)
    ap.add_argument("--seconds", type=float, default=20.0, help="how long the flood lasts")
    ap.add_argument("--probes", type=int, default=10, help="baseline probes before the flood")
    ap.add_argument("--code", default=str(ROOT), help="checkout to run the service from")
    ap.add_argument("--respect-retry-after", action="store_true",
                    help="clients wait Retry-After seconds after a 429 (default: they post again at once, the worst case)")
    args = ap.parse_args(argv)

    import httpx

    from autothink.bus.streams import RedisBus
    from tests.conftest import RedisServer, free_port, wait_healthy

    work = Path(tempfile.mkdtemp(prefix="flood-bench-"))
    redis = RedisServer(work)
    redis.start()
    port = free_port()
    env = {**os.environ, "AUTOTHINK_REWARD_REDIS__URL": redis.url, "AUTOTHINK_REWARD_RUN_ID": "flood",
           "AUTOTHINK_REWARD_PORT": str(port), "AUTOTHINK_REWARD_API_KEY": KEY, "AUTOTHINK_REWARD_GRADER_WORKERS": "1",
           "PYTHONPATH": args.code}
    import subprocess

    log = open(work / "reward.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "services.reward"], cwd=args.code, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {KEY}"}
    try:
        wait_healthy(f"{base}/health", proc)
        bus = RedisBus(redis.url, "flood")
        probe = Probe(base, bus)
        # warm both pools: the first grade of a worker waits for it to import sympy
        httpx.post(f"{base}/grade", json={"response": "</think>\n\n\\boxed{1}", "ground_truth": "1"}, headers=auth, timeout=300)
        probe.training_group()
        baseline_health = [probe.health() for _ in range(args.probes)]
        baseline_train = [probe.training_group() for _ in range(args.probes)]

        stop = threading.Event()
        replies: list[tuple[int, float, dict]] = []
        lock = threading.Lock()

        sent = iter(range(1, 10**9))

        def client() -> None:
            with httpx.Client(timeout=600) as http:
                while not stop.is_set():
                    body = m1_body(1000 * next(sent))
                    t0 = time.perf_counter()
                    try:
                        r = http.post(f"{base}/grade", json=body, headers=auth)
                        body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
                        item = (r.status_code, time.perf_counter() - t0, body)
                    except httpx.HTTPError as e:
                        item = (-1, time.perf_counter() - t0, {"error": type(e).__name__})
                    with lock:
                        replies.append(item)
                    if args.respect_retry_after and item[0] == 429:
                        stop.wait(float(r.headers.get("Retry-After", "1")))

        threads = [threading.Thread(target=client, daemon=True) for _ in range(args.clients)]
        t_flood = time.perf_counter()
        for t in threads:
            t.start()
        time.sleep(1.0)  # let the flood build up
        flood_health, flood_train = [], []
        while time.perf_counter() - t_flood < args.seconds:
            t_tick = time.perf_counter()
            flood_health.append(probe.health())
            flood_train.append(probe.training_group())
            time.sleep(max(0.0, 1.0 - (time.perf_counter() - t_tick)))
        stop.set()
        for t in threads:
            t.join(timeout=300)
        flood_s = time.perf_counter() - t_flood

        admitted = [(s, b) for c, s, b in replies if c == 200]
        out = {
            "code": args.code, "clients": args.clients, "flood_s": round(flood_s, 1),
            "clients_respect_retry_after": args.respect_retry_after, "load_average_1m": round(os.getloadavg()[0], 1),
            "health_baseline": _summary(baseline_health), "health_flood": _summary(flood_health),
            "training_group_baseline": _summary(baseline_train), "training_group_flood": _summary(flood_train),
            "flood_replies": {str(c): sum(1 for x in replies if x[0] == c) for c in sorted({x[0] for x in replies})},
            "admitted_request_latency": _summary([s for s, _ in admitted]),
            "admitted_grade_ms": _summary([b.get("grade_ms", 0) / 1000 for _, b in admitted]),
            "admitted_statuses": {st: sum(1 for _, b in admitted if b.get("status") == st) for st in {b.get("status") for _, b in admitted}},
            "refused_latency": _summary([s for c, s, _ in replies if c == 429]),
        }
        print(json.dumps(out, indent=2))
        return 0
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        redis.stop()


if __name__ == "__main__":
    sys.exit(main())
