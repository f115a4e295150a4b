"""`autothink up`: the whole system on one machine, without Docker.

A :class:`Supervisor` starts each service as a child process in its own process group (so a
stop takes the vLLM engine processes and DeepSpeed workers with it), copies its output into
``RUN/logs/NAME.log`` and, unless quiet, onto the console with a ``[name]`` prefix, waits for its
health check, and notices at once when one dies.  :func:`train` runs the stages: redis-server
(unless one is given), reward, rollout, gateway and learner; it returns when the learner has
finished and the gateway serves the final policy, then stops everything but the gateway.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from autothink.config import RunConfig
from services.manifest import service_slice, write_slice

COLORS = {"redis": 31, "reward": 33, "rollout": 36, "learner": 35, "gateway": 32}


class ServiceDied(RuntimeError):
    def __init__(self, name: str, code: int | None, tail: str):
        what = f"the {name} service exited with code {code}"
        if name == "learner" and code == 3:  # services.learner.worker.EXIT_STOPPED
            what += " (stopped by the degeneration alarm, monitor.on_degeneration: stop; a checkpoint was written)"
        super().__init__(what)
        self.name, self.code, self.tail = name, code, tail


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Service:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    ready_url: str | None = None
    ready: Callable[[], bool] | None = None  # when there is no URL (redis)
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    stopping: bool = False
    pump: threading.Thread | None = None  # copies the output into log_path


class Supervisor:
    def __init__(self, log_dir: Path, echo: bool = True, write: Callable[[str], None] | None = None):
        self.log_dir = log_dir
        self.echo = echo
        self.write = write or (lambda line: print(line, flush=True))
        self.services: list[Service] = []
        self._color = sys.stdout.isatty()
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, svc: Service) -> Service:
        svc.log_path = self.log_dir / f"{svc.name}.log"
        env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1", **svc.env}
        svc.proc = subprocess.Popen(svc.argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        svc.pump = threading.Thread(target=self._pump, args=(svc, svc.proc.stdout, open(svc.log_path, "ab")), daemon=True)
        svc.pump.start()
        self.services.append(svc)
        return svc

    def _pump(self, svc: Service, stream: IO[bytes], log: IO[bytes]) -> None:
        prefix = f"[{svc.name}]".ljust(10)
        if self._color:
            prefix = f"\033[{COLORS.get(svc.name, 37)}m{prefix}\033[0m"
        with log:
            for raw in iter(stream.readline, b""):
                log.write(raw)
                log.flush()
                if self.echo:
                    self.write(f"{prefix} {raw.decode(errors='replace').rstrip()}")

    def check(self) -> None:
        """Raise :class:`ServiceDied` if a service exited without being asked to."""
        for svc in self.services:
            if not svc.stopping and svc.proc is not None and svc.proc.poll() is not None:
                if svc.pump is not None:  # the last lines (the error) may still be in the pipe
                    svc.pump.join(timeout=5.0)
                raise ServiceDied(svc.name, svc.proc.returncode, self.tail(svc))

    def tail(self, svc: Service, lines: int = 30) -> str:
        if svc.log_path is None or not svc.log_path.exists():
            return ""
        return "\n".join(svc.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, svcs: list[Service], timeout: float = 600.0) -> None:
        import httpx

        pending = list(svcs)
        deadline = time.monotonic() + timeout
        while pending:
            self.check()
            for svc in list(pending):
                try:
                    ok = svc.ready() if svc.ready is not None else httpx.get(svc.ready_url, timeout=2).status_code == 200  # type: ignore[arg-type]
                except Exception:
                    ok = False
                if ok:
                    pending.remove(svc)
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"not healthy after {timeout:.0f} s: {', '.join(s.name for s in pending)}")
            time.sleep(0.3)

    def stop(self, svc: Service, timeout: float = 20.0) -> None:
        svc.stopping = True
        proc = svc.proc
        if proc is None:
            return
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
        _signal_group(proc, signal.SIGKILL)  # whatever the service left behind in its group

    def stop_all(self) -> None:
        for svc in reversed(self.services):
            self.stop(svc)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class UpOptions:
    run_id: str = "up"
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8000
    api_key: str = ""
    redis_url: str | None = None
    learner_procs: int = 1
    cpu_split: bool | None = None  # rollout and learner on disjoint cores; None: when they overlap on a CPU-only machine
    resume: bool = False
    echo: bool = True


@dataclass
class Stack:
    sup: Supervisor
    gateway: Service
    gateway_url: str
    run_dir: Path
    final_version: int
    metrics: list[dict[str, Any]]


def _max_model_len(run: RunConfig) -> int:
    """Room for the longest response plus a prompt, within what the model's positions allow."""
    from autothink.engine import context_length

    return context_length(run.model.path, max(s.max_response_tokens for s in run.stages) + 1024)


def _cores(run: RunConfig, opts: UpOptions, write: Callable[[str], None]) -> dict[str, dict[str, str]]:
    """AUTOTHINK_CPUS for the rollout service and the learner (autothink.cpus.plan_cpus), by service."""
    from autothink.cpus import ENV, plan_cpus

    on_gpu = False
    if opts.cpu_split is None and run.max_staleness >= 1:
        import torch

        on_gpu = torch.cuda.is_available()
    plan = plan_cpus(sorted(os.sched_getaffinity(0)), run.max_staleness, on_gpu, opts.cpu_split)
    if plan:
        write(f"cores: rollout {plan['rollout']}, learner {plan['learner']} (max_staleness {run.max_staleness}: "
              "generation overlaps training; --no-cpu-split shares them)")
    return {name: {ENV: cpus} for name, cpus in plan.items()}


def start_redis(sup: Supervisor, run_dir: Path) -> tuple[Service, str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed: install it (apt-get install redis-server) or pass --redis-url")
    port = free_port()
    data = run_dir / "redis"
    data.mkdir(parents=True, exist_ok=True)
    url = f"redis://127.0.0.1:{port}/0"

    def ping() -> bool:
        import redis

        return bool(redis.Redis(port=port, socket_timeout=1).ping())

    svc = sup.start(Service("redis", [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                      "--dir", str(data)], ready=ping))
    return svc, url


def train(run: RunConfig, opts: UpOptions, progress: Callable[[dict[str, Any]], None] | None = None,
          write: Callable[[str], None] | None = None) -> Stack:
    """Start the services, run the stage schedule, and return once the gateway serves the final
    policy; the training services are stopped then, the gateway keeps running.  On any failure
    every process started here is stopped before the exception propagates."""
    import httpx

    run_dir = Path(run.output_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    sup = Supervisor(run_dir / "logs", echo=opts.echo, write=write)
    py = sys.executable
    try:
        training: list[Service] = []
        redis_url = opts.redis_url
        if redis_url is None:
            redis_svc, redis_url = start_redis(sup, run_dir)
            sup.wait_ready([redis_svc], timeout=30)
            training.append(redis_svc)
        weights = f"127.0.0.1:{free_port()}"
        token = secrets.token_hex(16)
        data = run.model_dump(mode="json")
        data["redis"]["url"] = redis_url
        data["weights"].update(address=weights, token=token)
        data["output_dir"] = str(run_dir)
        if not opts.resume and (run_dir / "metrics.jsonl").exists():
            (run_dir / "metrics.jsonl").unlink()  # a fresh run's log
        exp = run_dir / "experiment.yaml"
        exp.write_text(yaml.safe_dump(data, sort_keys=False))
        model = str(Path(run.model.path).resolve())
        max_len = str(_max_model_len(run))
        cores = _cores(run, opts, sup.write)
        reward_port, rollout_port, learner_port = free_port(), free_port(), free_port()
        # each service's settings: its slice of the experiment plus what only the launcher knows,
        # validated here before anything starts (services/manifest.py)
        slices = {
            "reward": service_slice("reward", data, run_id=opts.run_id, port=reward_port, grader_workers=1),
            "rollout": service_slice("rollout", data, run_id=opts.run_id, port=rollout_port, model=model, max_model_len=int(max_len)),
        }
        config = {name: write_slice(run_dir / "config", name, s) for name, s in slices.items()}
        reward = sup.start(Service("reward", [py, "-m", "services.reward", "--config", str(config["reward"])], {},
                                   f"http://127.0.0.1:{reward_port}/health"))
        rollout = sup.start(Service("rollout", [py, "-m", "services.rollout", "--config", str(config["rollout"])], cores.get("rollout", {}),
                                    f"http://127.0.0.1:{rollout_port}/health"))
        gw_argv = [py, "-m", "services.gateway", "--model", model, "--host", opts.gateway_host, "--port", str(opts.gateway_port),
                   "--max-model-len", max_len, "--follow", weights]
        # secrets through the environment, not the command line (visible in `ps`)
        gw_env = {"AUTOTHINK_GATEWAY_FOLLOW_WEIGHTS__TOKEN": token}
        if opts.api_key:
            gw_env["AUTOTHINK_GATEWAY_API_KEY"] = opts.api_key
        gateway_url = f"http://{'127.0.0.1' if opts.gateway_host in ('0.0.0.0', '::') else opts.gateway_host}:{opts.gateway_port}"
        gateway = sup.start(Service("gateway", gw_argv, gw_env, f"{gateway_url}/ready"))
        training += [reward, rollout]
        sup.wait_ready([reward, rollout, gateway])

        learner_argv = [py, "-m", "services.learner"]
        if opts.learner_procs > 1:
            learner_argv = [str(Path(py).with_name("torchrun")), "--standalone", f"--nproc_per_node={opts.learner_procs}", "-m", "services.learner"]
        if opts.resume:
            learner_argv.append("--resume")
        learner = sup.start(Service("learner", learner_argv, {
            "AUTOTHINK_LEARNER_EXPERIMENT": str(exp), "AUTOTHINK_LEARNER_RUN_ID": opts.run_id,
            "AUTOTHINK_LEARNER_WEIGHTS_BIND": weights, "AUTOTHINK_LEARNER_METRICS_PORT": str(learner_port),
            "AUTOTHINK_LEARNER_SERVE_AFTER_FINISH": "true", **cores.get("learner", {}),
        }, f"http://127.0.0.1:{learner_port}/health"))
        training.insert(0, learner)
        sup.wait_ready([learner])
        sup.write(f"dashboard: http://127.0.0.1:{learner_port}/dashboard (live while training; think rate by level, mode-collapse alarm)")

        status: dict[str, Any] = {}
        while True:
            sup.check()
            try:
                status = httpx.get(learner.ready_url, timeout=2).json()  # type: ignore[arg-type]
            except (httpx.HTTPError, ValueError):
                pass
            if progress is not None and status:
                progress({**status, "last": _last_row(run_dir / "metrics.jsonl")})
            if status.get("finished"):
                break
            time.sleep(1.0)
        final = int(status["policy_version"])
        deadline = time.monotonic() + 300
        while httpx.get(gateway.ready_url, timeout=5).json().get("policy_version") != final:  # type: ignore[arg-type]
            sup.check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"the gateway did not pick up the final policy version {final}")
            time.sleep(0.5)
        for svc in training:
            sup.stop(svc)
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
        return Stack(sup, gateway, gateway_url, run_dir, final, metrics)
    except BaseException:
        sup.stop_all()
        raise


def _last_row(path: Path) -> dict[str, Any]:
    try:
        lines = path.read_text().splitlines()
        return json.loads(lines[-1]) if lines else {}
    except (OSError, ValueError):
        return {}


def serve_forever(stack: Stack, write: Callable[[str], None] = print) -> int:
    """Keep the gateway up until Ctrl-C / SIGTERM (0) or until it dies (1)."""
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.is_set():
            try:
                stack.sup.check()
            except ServiceDied as e:
                write(f"error: {e}\n{e.tail}")
                return 1
            stop.wait(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        write("stopping the gateway ...")
        stack.sup.stop_all()
    return 0


def curl_example(url: str, api_key: str = "") -> str:
    auth = f" \\\n  -H 'Authorization: Bearer {api_key}'" if api_key else ""
    return (f"curl -s {url}/generate -H 'Content-Type: application/json'{auth} \\\n"
            "  -d '{\"prompt\": \"What is the value of $3+4+8+1+6$?\", \"mode\": \"auto\"}'")
