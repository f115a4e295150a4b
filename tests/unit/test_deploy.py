"""Deployment files checked without a Docker engine or a cluster: every command, flag, environment
variable and port in docker-compose*.yml and in the Kubernetes manifests must exist in the real
CLI and settings; the kustomize overlays must render offline and validate against the Kubernetes
schemas; references (selectors, ports, Secrets, ConfigMaps, claims) must hold."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from autothink.config import RunConfig
from services.gateway.config import GatewayConfig
from services.learner.config import LearnerServiceConfig
from services.reward.config import RewardServiceConfig
from services.rollout.config import RolloutServiceConfig

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {"reward": RewardServiceConfig, "rollout": RolloutServiceConfig, "learner": LearnerServiceConfig, "gateway": GatewayConfig}
PORT_FIELD = {"reward": "port", "rollout": "port", "learner": "metrics_port", "gateway": "port"}
needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")


# ---------------------------------------------------------------- shared checks


def unknown_env(env: dict[str, str]) -> list[str]:
    """AUTOTHINK_* names that no settings model has (the loaders ignore them silently)."""
    bad = []
    for name in env:
        if not name.startswith("AUTOTHINK_"):
            continue
        rest = name[len("AUTOTHINK_") :]
        svc = next((s for s in SERVICES if rest.startswith(s.upper() + "_")), None)
        model, key = (SERVICES[svc], rest[len(svc) + 1 :]) if svc else (RunConfig, rest)
        if key.split("__")[0].lower() not in model.model_fields:
            bad.append(name)
    return bad


def service_of(argv: list[str]) -> tuple[str, list[str]]:
    """(service, its extra flags) for `python -m services.X ...`, `autothink gateway ...`, torchrun."""
    if argv[:2] == ["sh", "-c"]:
        argv = shlex.split(argv[2])
        if argv[0] == "exec":
            argv = argv[1:]
    if argv[0] == "autothink" and argv[1] == "gateway":
        return "gateway", argv[2:]
    if "-m" in argv:
        i = argv.index("-m")
        module = argv[i + 1]
        assert module.startswith("services."), argv
        return module.split(".")[1], argv[i + 2 :]
    raise AssertionError(f"unrecognised command {argv}")


def print_config(service: str, flags: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run the real entry point with --print-config: unknown flags or bad values exit non-zero."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AUTOTHINK_")}
    r = subprocess.run([sys.executable, "-m", f"services.{service}", *flags, "--print-config"], env={**clean, **env},
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, f"{service} {flags}: {r.stderr[-2000:]}"
    shown = json.loads(r.stdout)
    return shown.get("learner", shown)


def check_container(service: str, flags: list[str], env: dict[str, str], ports: set[int], tmp: Path, experiment: str | None = None) -> dict:
    assert not unknown_env(env), f"{service}: unknown settings {unknown_env(env)}"
    if experiment is not None:
        path = tmp / "experiment.yaml"
        path.write_text(experiment)
        if service == "learner":
            env = {**env, "AUTOTHINK_LEARNER_EXPERIMENT": str(path)}
        # the pod's mounted experiment (the ConfigMap) is this file here
        flags = [str(path) if f == "/etc/autothink/experiment.yaml" else f for f in flags]
    shown = print_config(service, flags, env)
    assert shown[PORT_FIELD[service]] in ports, f"{service} listens on {shown[PORT_FIELD[service]]}, the deployment exposes {ports}"
    return shown


# ---------------------------------------------------------------- docker compose


def _interpolate(value: Any) -> str:
    """Compose's ${VAR:-default} / ${VAR:?message} with defaults or a stand-in."""
    return re.sub(r"\$\{(\w+)(?::?[-?]([^}]*))?\}", lambda m: m.group(2) if m.group(2) and ":-" in m.group(0) else "x", str(value))


def _merge(a: Any, b: Any) -> Any:
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: _merge(a[k], b[k]) if k in a and k in b else b.get(k, a.get(k)) for k in {**a, **b}}
    return b


def _compose(*files: str) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for f in files:
        data = _merge(data, yaml.safe_load((ROOT / f).read_text()))
    return data


@pytest.mark.parametrize("files", [("docker-compose.yml",), ("docker-compose.yml", "docker-compose.gpu.yml")], ids=["cpu", "gpu"])
def test_compose_matches_the_code(files, tmp_path) -> None:
    compose = _compose(*files)
    services = compose["services"]
    assert set(services) == {"redis", "reward", "rollout", "learner", "gateway"}
    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services and cond["condition"] in ("service_healthy", "service_started", "service_completed_successfully")
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}'s health, which has no check"
        if name == "redis":
            continue
        assert svc["image"].startswith("autothink:") and "healthcheck" in svc
        env = {k: _interpolate(v) for k, v in svc["environment"].items()}
        health = " ".join(svc["healthcheck"]["test"])
        health_port = int(re.search(r"127\.0\.0\.1:(\d+)/", health).group(1))
        published = {int(p.rsplit(":", 1)[1]) for p in svc.get("ports", [])}
        service, flags = service_of(svc["command"])
        assert service == name
        shown = check_container(service, flags, env, {health_port}, tmp_path)
        assert published <= {health_port}
        if name == "gateway":
            assert shown["host"] == "0.0.0.0" and all(p.startswith("127.0.0.1:") for p in svc["ports"])  # no key: loopback only
            assert ("/ready" in health) and shown["follow_weights"]["address"] == "learner:50051"
        if name == "rollout":
            assert shown["weights"]["address"] == "learner:50051"
        if name == "learner":
            from autothink.config import load_config

            run = load_config(env["AUTOTHINK_LEARNER_EXPERIMENT"], environ=env)
            assert run.redis.url.startswith("redis://:") and "@redis:6379" in run.redis.url
            assert shown["weights_bind"].endswith(":50051")
        if "redis" in (svc.get("depends_on") or {}) or name != "gateway":
            url = env.get(f"AUTOTHINK_{name.upper()}_REDIS__URL") or env.get("AUTOTHINK_REDIS__URL")
            assert url and "@redis:6379" in url, f"{name} has no password-protected redis URL"


def test_compose_redis_is_protected_and_persistent() -> None:
    redis = _compose("docker-compose.yml")["services"]["redis"]
    cmd = " ".join(redis["command"])
    assert "--requirepass" in cmd and "--appendonly yes" in cmd and any(v.endswith(":/data") for v in redis["volumes"])
    assert "ports" not in redis  # not published on the host


def test_dockerfiles_run_as_non_root() -> None:
    for f in ("docker/Dockerfile", "docker/Dockerfile.cuda"):
        text = (ROOT / f).read_text()
        assert re.search(r"^USER autothink$", text, re.M), f
        assert "pip install --no-build-isolation deepspeed" in text


# ---------------------------------------------------------------- Kubernetes


def _render(overlay: str) -> list[dict[str, Any]]:
    r = subprocess.run(["kubectl", "kustomize", str(ROOT / "deploy" / "overlays" / overlay)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def _pod_templates(docs: list[dict]) -> list[tuple[dict, dict]]:
    out = []
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "Job"):
            labels = dict(d["spec"]["template"]["metadata"]["labels"])
            if d["kind"] == "Job" and d["spec"].get("completionMode") == "Indexed":
                labels["batch.kubernetes.io/job-completion-index"] = "*"  # set by Kubernetes per pod
            out.append((d, labels))
    return out


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) in (v, "*") for k, v in selector.items())


@needs_kubectl
@pytest.mark.parametrize("overlay", ["cpu-toy", "gpu"])
def test_overlays_render_and_validate(overlay) -> None:
    import kubernetes_validate

    docs = _render(overlay)
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "ConfigMap", "Secret", "StatefulSet", "Job", "Deployment", "Service", "HorizontalPodAutoscaler",
            "PodDisruptionBudget", "PersistentVolumeClaim"} <= kinds
    for d in docs:
        kubernetes_validate.validate(d, "1.30", strict=True)
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == "autothink"


@needs_kubectl
@pytest.mark.parametrize("overlay", ["cpu-toy", "gpu"])
def test_manifest_references_hold(overlay) -> None:
    docs = _render(overlay)
    by_kind: dict[str, dict[str, dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    pods = _pod_templates(docs)
    for svc in by_kind["Service"].values():
        matched = [(w, labels) for w, labels in pods if _matches(svc["spec"]["selector"], labels)]
        assert matched, f"Service {svc['metadata']['name']} selects no pods"
        for port in svc["spec"]["ports"]:
            for w, _ in matched:
                names = {p.get("name") for c in w["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
                numbers = {p["containerPort"] for c in w["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
                assert port["targetPort"] in names | numbers, f"Service {svc['metadata']['name']} targets {port['targetPort']}"
    for w, labels in pods:
        assert _matches(w["spec"]["selector"]["matchLabels"], labels) if "selector" in w["spec"] else True
        spec = w["spec"]["template"]["spec"]
        claims = {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}
        for v in spec.get("volumes", []):
            if "configMap" in v:
                assert v["configMap"]["name"] in by_kind["ConfigMap"]
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in by_kind["PersistentVolumeClaim"]
            claims.add(v["name"])
        for c in spec["containers"]:
            ports = {p.get("name") for p in c.get("ports", [])} | {p["containerPort"] for p in c.get("ports", [])}
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                for kind in ("httpGet", "tcpSocket"):
                    if probe in c and kind in c[probe]:
                        assert c[probe][kind]["port"] in ports, f"{c['name']} {probe} port"
            for m in c.get("volumeMounts", []):
                assert m["name"] in claims, f"{c['name']} mounts unknown volume {m['name']}"
            for e in c.get("env", []):
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    secret = by_kind["Secret"][ref["name"]]
                    assert ref["key"] in (secret.get("data") or {}) | (secret.get("stringData") or {})
    for kind in ("HorizontalPodAutoscaler",):
        for h in by_kind[kind].values():
            assert h["spec"]["scaleTargetRef"]["name"] in by_kind[h["spec"]["scaleTargetRef"]["kind"]]
    for pdb in by_kind["PodDisruptionBudget"].values():
        assert any(_matches(pdb["spec"]["selector"]["matchLabels"], labels) for _, labels in pods)


@needs_kubectl
@pytest.mark.parametrize("overlay", ["cpu-toy", "gpu"])
def test_manifest_commands_env_and_ports_match_the_code(overlay, tmp_path) -> None:
    docs = _render(overlay)
    experiment = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("autothink-experiment"))
    run_yaml = experiment["data"]["experiment.yaml"]
    seen = set()
    for w, _ in _pod_templates(docs):
        for c in w["spec"]["template"]["spec"]["containers"]:
            if not c["image"].startswith("autothink:"):
                continue
            env = {}
            for e in c.get("env", []):
                value = "secret" if "valueFrom" in e else e["value"]
                env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m, env=env: env.get(m.group(1), "x"), value)
            service, flags = service_of(c["command"])
            seen.add(service)
            ports = {p["containerPort"] for p in c.get("ports", [])}
            if service in ("reward", "rollout"):  # they take their sections of the same manifest
                assert flags[:2] == ["--experiment", "/etc/autothink/experiment.yaml"], (service, flags)
            shown = check_container(service, flags, env, ports, tmp_path, run_yaml)
            if service in ("rollout", "gateway"):
                address = shown["weights"]["address"] if service == "rollout" else shown["follow_weights"]["address"]
                assert address == "learner-weights:50051"
            if service == "gateway":
                assert shown["api_key"] == "***"  # on 0.0.0.0 it needs one, and has one
    assert seen == set(SERVICES)
    from autothink.config import load_config

    path = tmp_path / "run.yaml"
    path.write_text(run_yaml)
    run = load_config(str(path), environ={})
    assert [s.name for s in run.stages] == ["stage1", "stage2", "stage3"]


@needs_kubectl
def test_rendered_manifest_is_up_to_date() -> None:
    """deploy/autothink.yaml is the cpu-toy overlay rendered (what `kubectl apply -f deploy/` applies)."""
    r = subprocess.run(["kubectl", "kustomize", str(ROOT / "deploy" / "overlays" / "cpu-toy")], capture_output=True, text=True, timeout=60)
    checked_in = (ROOT / "deploy" / "autothink.yaml").read_text()
    body = "\n".join(line for line in checked_in.splitlines() if not line.startswith("# Rendered")) + "\n"
    assert body == r.stdout, "deploy/autothink.yaml is stale: run `make deploy`"
    top = [p.name for p in (ROOT / "deploy").iterdir() if p.is_file()]
    assert top == ["autothink.yaml"], "kubectl apply -f deploy/ applies every file at the top of deploy/"


def test_the_clusters_experiment_is_the_toy_preset() -> None:
    """deploy/base/experiment.yaml is generated from the preset (`make deploy`): the cluster's stage
    schedule cannot drift from the demo's."""
    from entrypoints.deploy_experiment import render

    assert (ROOT / "deploy" / "base" / "experiment.yaml").read_text() == render(), "stale: run `make deploy`"


def test_unknown_env_is_caught() -> None:
    assert unknown_env({"AUTOTHINK_ROLLOUT_MODLE": "x", "AUTOTHINK_OPTIM__LR": "1", "AUTOTHINK_GATEWAY_PORT": "1"}) == ["AUTOTHINK_ROLLOUT_MODLE"]
