"""Learner steps per hour with max_staleness 0 (on-policy) and 1 (generate step k+1 while step k
trains), on the toy preset, through the real services, in one run.

    .venv/bin/python bench/staleness_bench.py  --steps 8

Four runs: each staleness with every service on all cores ("shared") and with the rollout
service and the learner on disjoint halves of the cores ("split", AUTOTHINK_CPUS as `autothink
up` sets it; the CPU analogue of each role having its own GPUs).  One redis-server serves all;
each run has fresh reward, rollout and learner processes on its own run id.  A step's time is the
wall time between consecutive metrics.jsonl rows (the first step, which includes start-up, is
dropped); the learner's own split of it (waiting for rollouts / training / publishing) is its
median per run.  Prints JSON.
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

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autothink.config import embedded_toy_path  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=embedded_toy_path())
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    from autothink.config import load_config
    from tests.conftest import RedisServer, free_port, wait_healthy

    work = Path(tempfile.mkdtemp())
    redis = RedisServer(work)
    redis.start()
    procs: list[subprocess.Popen] = []

    def start(module: str, env: dict[str, str], log: str) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-m", module], cwd=ROOT, env={**os.environ, **env},
                             stdout=open(work / log, "wb"), stderr=subprocess.STDOUT)
        procs.append(p)
        return p

    from autothink.cpus import ENV, plan_cpus

    split_plan = plan_cpus(sorted(os.sched_getaffinity(0)), max_staleness=1, on_gpu=False)
    results = {}
    try:
        for layout, staleness in (("shared", 0), ("shared", 1), ("split", 0), ("split", 1)):
            cores = {name: {ENV: cpus} for name, cpus in split_plan.items()} if layout == "split" else {}
            run_id = f"{layout}{staleness}"
            weights = f"127.0.0.1:{free_port()}"
            cfg = load_config("toy", environ={}).model_dump(mode="json")
            cfg["model"]["path"] = str(Path(args.model).resolve())
            cfg["stages"] = [dict(cfg["stages"][0], steps=args.steps)]
            cfg.update(max_staleness=staleness, output_dir=str(work / run_id), redis={"url": redis.url}, weights={"address": weights})
            (work / f"{run_id}.yaml").write_text(yaml.safe_dump(cfg))
            rport, oport = free_port(), free_port()
            reward = start("services.reward", {"AUTOTHINK_REWARD_REDIS__URL": redis.url, "AUTOTHINK_REWARD_RUN_ID": run_id,
                                               "AUTOTHINK_REWARD_PORT": str(rport), "AUTOTHINK_REWARD_GRADER_WORKERS": "1"}, f"reward-{run_id}.log")
            rollout = start("services.rollout", {"AUTOTHINK_ROLLOUT_MODEL": cfg["model"]["path"], "AUTOTHINK_ROLLOUT_REDIS__URL": redis.url,
                                                 "AUTOTHINK_ROLLOUT_RUN_ID": run_id, "AUTOTHINK_ROLLOUT_PORT": str(oport),
                                                 "AUTOTHINK_ROLLOUT_MAX_MODEL_LEN": "512", "AUTOTHINK_ROLLOUT_WEIGHTS__ADDRESS": weights,
                                                 **cores.get("rollout", {})}, f"rollout-{run_id}.log")
            for port, proc in ((rport, reward), (oport, rollout)):
                wait_healthy(f"http://127.0.0.1:{port}/health", proc)
            rows_path = work / run_id / "metrics.jsonl"
            learner = start("services.learner", {"AUTOTHINK_LEARNER_EXPERIMENT": str(work / f"{run_id}.yaml"), "AUTOTHINK_LEARNER_RUN_ID": run_id,
                                                 "AUTOTHINK_LEARNER_WEIGHTS_BIND": weights, "AUTOTHINK_LEARNER_METRICS_PORT": str(free_port()),
                                                 "AUTOTHINK_LEARNER_CHECKPOINT_EVERY": "0", **cores.get("learner", {})}, f"learner-{run_id}.log")
            stamps: list[float] = []
            seen = 0
            while learner.poll() is None:
                if rows_path.exists():
                    n = len(rows_path.read_text().splitlines())
                    stamps += [time.perf_counter()] * (n - seen)
                    seen = n
                time.sleep(0.05)
            if learner.returncode != 0:
                raise RuntimeError((work / f"learner-{run_id}.log").read_text()[-3000:])
            step_s = [b - a for a, b in zip(stamps, stamps[1:])]
            rows = [json.loads(line) for line in rows_path.read_text().splitlines()][1:]
            results[run_id] = {
                "median_step_s": round(statistics.median(step_s), 3), "steps_per_hour": round(3600 / statistics.median(step_s), 1),
                **{k: round(statistics.median(r[f"time_{k}_s"] for r in rows), 3) for k in ("wait", "train", "publish")},
            }
            for p in (reward, rollout):
                p.terminate()
                p.wait(30)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        redis.stop()
    def ratio(a: str, b: str) -> float:
        return round(results[a]["steps_per_hour"] / results[b]["steps_per_hour"], 3)

    print(json.dumps({
        "steps": args.steps, "prompts_per_step": 16, "samples_per_prompt": 8, "split": split_plan, "runs": results,
        "ratio_split": ratio("split1", "split0"),  # each role on its own cores in both runs
        "ratio_shared": ratio("shared1", "shared0"),  # everything on every core in both runs
        "ratio_best": ratio("split1", "shared0"),  # what `autothink up` picks for each setting by default
    }))


if __name__ == "__main__":
    main()
