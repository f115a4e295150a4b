"""A short real run (`autothink up` on three short stages) with every installed tracker on, then each
tracker's own reader loads what the learner wrote: TensorBoard's event reader, the W&B offline run
folder (its LevelDB-style record log, parsed with W&B's own protobuf), MLflow's client on the file
store.  A tracker whose package is missing is skipped with the extra to install."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, free_port, short_experiment

pytestmark = pytest.mark.slow
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}  # tracker -> module


def _installed(name: str) -> bool:
    return importlib.util.find_spec(TRACKERS[name]) is not None


def _need(name: str) -> None:
    if not _installed(name):
        pytest.skip(f"{name} is not installed: pip install 'autothink-services[{name}]'")


@pytest.fixture(scope="module")
def tracked_run(toy_model, tmp_path_factory) -> tuple[Path, list[dict], str]:
    """(run folder, metrics.jsonl rows, learner log) of a 6-step run with the installed trackers."""
    trackers = [t for t in TRACKERS if _installed(t)]
    if not trackers:
        pytest.skip("no tracker installed: pip install 'autothink-services[tensorboard,wandb,mlflow]'")
    tmp = tmp_path_factory.mktemp("trackers")
    exp = short_experiment(toy_model[0], tmp / "run", logging={"trackers": trackers, "project": "autothink-test"})
    (tmp / "exp.yaml").write_text(yaml.safe_dump(exp))
    autothink = str(Path(sys.executable).with_name("autothink"))
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("WANDB_")}  # offline by default
    r = subprocess.run([autothink, "up", str(tmp / "exp.yaml"), "--port", str(free_port()), "--run-id", "trackers",
                        "--quiet", "--exit-when-trained"], cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    learner_log = (tmp / "run" / "logs" / "learner.log").read_text(errors="replace")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:] + learner_log[-3000:]
    rows = [json.loads(x) for x in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["policy_version"] for row in rows] == [1, 2, 3, 4, 5, 6]
    return tmp / "run", rows, learner_log


def test_a_healthy_run_raises_no_collapse_alarm_and_logs_accuracy_by_mode(tracked_run):
    _, rows, learner_log = tracked_run
    assert not any(row["mode_collapse"] for row in rows) and "mode collapse" not in learner_log
    for row in rows:
        assert set(row["samples_by_level"]) == set(row["no_think_rate_by_level"]) and sum(row["samples_by_level"].values()) == row["samples"]
        modes = [row[f"accuracy_{m}"] for m in ("think", "no_think") if row[f"accuracy_{m}"] is not None]
        assert min(modes) <= row["accuracy"] + 1e-9 and row["accuracy"] <= max(modes) + 1e-9  # overall lies between the modes


def test_tensorboard_event_files_hold_every_step(tracked_run):
    _need("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, rows, _ = tracked_run
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()
    think = acc.Scalars("think_rate")
    assert [e.step for e in think] == [r["policy_version"] for r in rows]  # the policy version is the step axis
    assert [e.value for e in think] == pytest.approx([r["think_rate"] for r in rows])
    level = sorted(rows[-1]["no_think_rate_by_level"])[0]
    by_level = acc.Scalars(f"think_rate_by_level/{level}")
    assert by_level[-1].value == pytest.approx(1 - rows[-1]["no_think_rate_by_level"][level], abs=1e-6)
    assert {"reward_shaped", "accuracy", "staleness_max", "mode_collapse"} <= set(tags["scalars"])
    assert "experiment/text_summary" in tags["tensors"]  # the config, as YAML


def _wandb_records(path: Path):
    """The records of a .wandb file: a 7-byte header (":W&B", magic, version), then LevelDB log
    blocks of 32 KiB, each record a 7-byte header (crc32, length, type: 1 full, 2 first, 3 middle,
    4 last) and a chunk of a serialised wandb.proto Record."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:8]
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        room = block - pos % block
        if room < 7:  # a block's tail too short for a header is padding
            pos += room
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record


def test_wandb_offline_run_folder_holds_every_step_and_the_config(tracked_run):
    _need("wandb")
    run_dir, rows, learner_log = tracked_run
    folders = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(folders) == 1, folders  # offline, no account: `wandb sync` uploads it later
    history, config = [], {}
    for record in _wandb_records(next(folders[0].glob("run-*.wandb"))):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
        elif kind == "run":
            config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
        elif kind == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
    assert [h["_step"] for h in history] == [r["policy_version"] for r in rows]
    assert [h["think_rate"] for h in history] == pytest.approx([r["think_rate"] for r in rows])
    assert config["optim"]["lr"] == 5e-5 and [s["name"] for s in config["stages"]] == ["stage1", "stage2", "stage3"]


def test_mlflow_file_store_holds_every_step_and_the_config(tracked_run):
    _need("mlflow")
    import os

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    run_dir, rows, _ = tracked_run
    client = MlflowClient(tracking_uri=(run_dir / "mlruns").resolve().as_uri())
    exp = client.get_experiment_by_name("autothink-test")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "short"
    history = client.get_metric_history(run.info.run_id, "think_rate")
    assert [(m.step, m.value) for m in history] == [(r["policy_version"], pytest.approx(r["think_rate"])) for r in rows]
    level = sorted(rows[0]["no_think_rate_by_level"])[0]
    assert client.get_metric_history(run.info.run_id, f"no_think_rate_by_level.{level}")[0].value == pytest.approx(
        rows[0]["no_think_rate_by_level"][level])
    assert run.data.params["optim.lr"] == "5e-05" and run.data.params["stages.0.name"] == "stage1"
