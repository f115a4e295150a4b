"""Bus throughput for 8k-token trajectories with log-probs against raw Redis for the same bytes.

    .venv/bin/python bench/bus_bench.py

A private redis-server on a free port.  Ours: ``RedisBus.publish`` of rollout groups (8 samples of
8,192 token ids + log-probs, encoded to int32/float32 bytes) → ``read`` (XAUTOCLAIM + XREADGROUP)
→ ``decode`` → ``ack``.  Raw: redis-py XADD of the same encoded bytes → XREADGROUP → XACK, no
encoding or decoding.  Median of ``--repeats`` runs, with every run's figure.  Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_group(i: int, tokens: int, n: int):
    from autothink.bus.messages import PromptMsg, RolloutGroup, Sample

    rng = random.Random(i)
    samples = [Sample("x" * 200, [rng.randrange(150_000) for _ in range(tokens)], [-rng.random() for _ in range(tokens)], "length")
               for _ in range(n)]
    return RolloutGroup(PromptMsg(f"g{i}", "problem " * 20, "1", n=n), 1, samples, list(range(64)), "bench")


def ours(url: str, groups: list, batch: int) -> float:
    from autothink.bus.messages import decode
    from autothink.bus.streams import RedisBus

    bus = RedisBus(url, f"bench-{time.time_ns()}", max_stream_len=100_000)
    stream = bus.names.rollouts
    bus.ensure_group(stream, "g")
    t0 = time.perf_counter()
    for g in groups:
        bus.publish(stream, g)
    got = 0
    while got < len(groups):
        entries = bus.read(stream, "g", "c", count=batch, block_ms=1000)
        for e in entries:
            decode(e.fields, "rollout")
        bus.ack(stream, "g", *[e.id for e in entries])
        got += len(entries)
    return time.perf_counter() - t0


def raw(url: str, payloads: list[dict], batch: int) -> float:
    import redis

    r = redis.Redis.from_url(url)
    stream = f"raw-{time.time_ns()}"
    r.xgroup_create(stream, "g", id="0", mkstream=True)
    t0 = time.perf_counter()
    for p in payloads:
        r.xadd(stream, p, maxlen=100_000, approximate=True)
    got = 0
    while got < len(payloads):
        resp = r.xreadgroup("g", "c", {stream: ">"}, count=batch, block=1000)
        ids = [eid for _, entries in resp for eid, _ in entries]
        r.xack(stream, "g", *ids)
        got += len(ids)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--groups", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    from autothink.bus.messages import encode
    from tests.conftest import RedisServer

    groups = [make_group(i, args.tokens, args.n) for i in range(args.groups)]
    payloads = [encode(g) for g in groups]
    mb = sum(len(v) for p in payloads for v in p.values()) / 1e6
    server = RedisServer(Path(tempfile.mkdtemp()))
    server.start()
    try:
        ours(server.url, groups[:4], 16)
        raw(server.url, payloads[:4], 16)  # warm up
        t_ours, t_raw = [], []
        for _ in range(args.repeats):
            t_raw.append(raw(server.url, payloads, 16))
            t_ours.append(ours(server.url, groups, 16))
    finally:
        server.stop()
    out = {
        "groups": args.groups, "tokens_per_sample": args.tokens, "samples_per_group": args.n, "mb": round(mb, 1),
        "repeats": args.repeats,
        "raw_mb_per_s": round(mb / statistics.median(t_raw), 1), "ours_mb_per_s": round(mb / statistics.median(t_ours), 1),
        "raw_runs_mb_per_s": [round(mb / t, 1) for t in t_raw], "ours_runs_mb_per_s": [round(mb / t, 1) for t in t_ours],
        "trajectories_per_s": round(args.groups * args.n / statistics.median(t_ours), 1),
    }
    out["ratio"] = round(out["ours_mb_per_s"] / out["raw_mb_per_s"], 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
