"""The command line as a user meets it: help, config commands, service entry points."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
AUTOTHINK = str(Path(sys.executable).with_name("autothink"))


def run(*args, env=None, check=False):
    return subprocess.run(list(args), capture_output=True, text=True, cwd=ROOT, env={**os.environ, **(env or {})}, check=check)


def test_help_lists_subcommands():
    r = run(AUTOTHINK, "--help", check=True)
    for sub in ("demo", "selfcheck", "config"):
        assert sub in r.stdout


def test_config_show_applies_overrides():
    r = run(AUTOTHINK, "config", "show", "toy", "--json", "--set", "stages.0.steps=4", env={"AUTOTHINK_OPTIM__LR": "3e-5"}, check=True)
    data = json.loads(r.stdout)
    assert data["stages"][0]["steps"] == 4 and data["optim"]["lr"] == 3e-5


def test_config_validate_reports_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {path: x}\nstages: []\n")
    r = run(AUTOTHINK, "config", "validate", str(bad))
    assert r.returncode == 2
    assert "stages: List should have at least 1 item" in r.stderr
    assert run(AUTOTHINK, "config", "validate", "paper").returncode == 0


@pytest.mark.parametrize("service", ["rollout", "reward", "learner", "gateway"])
def test_service_entry_points(service):
    r = run(sys.executable, "-m", f"services.{service}", "--help", check=True)
    assert "environment variables" in " ".join(r.stdout.split())  # argparse wraps to the terminal width
    r = run(sys.executable, "-m", f"services.{service}", "--print-config", check=True)
    assert isinstance(json.loads(r.stdout), dict)


def test_service_rejects_bad_environment():
    r = run(sys.executable, "-m", "services.gateway", "--print-config", env={"AUTOTHINK_GATEWAY_PORT": "not-a-port"})
    assert r.returncode == 2 and "port: Input should be a valid integer" in r.stderr


@pytest.mark.slow
def test_selfcheck_passes_on_the_installed_stack():
    r = run(AUTOTHINK, "selfcheck")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "self-check passed" in r.stdout
    # the worked example shows stage-1 balance moving the over-represented no-think samples
    assert "stage1" in r.stdout and "adv(stage2)" in r.stdout


def test_the_demo_sends_engine_output_to_a_log_and_keeps_its_own_lines_on_the_terminal(tmp_path):
    """The demo's evaluation runs vLLM in this process, whose engine processes inherit fds 1 and
    2: `_output_to` moves both (a child process's output too) to the log; the yielded stream
    still reaches the terminal."""
    import subprocess
    import sys

    code = f"""
import subprocess, sys
from pathlib import Path
from entrypoints.cli import _output_to
with _output_to(Path({str(tmp_path / 'logs' / 'eval.log')!r})) as terminal:
    print("python stdout"); print("python stderr", file=sys.stderr)
    subprocess.run([sys.executable, "-c", "import sys; print('child'); print('child err', file=sys.stderr)"])
    print("for the user", file=terminal)
print("after")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(ROOT), timeout=60)
    assert r.returncode == 0, r.stderr
    log = (tmp_path / "logs" / "eval.log").read_text()
    for line in ("python stdout", "python stderr", "child", "child err"):
        assert line in log and line not in r.stdout + r.stderr.replace("for the user", "")
    assert "for the user" in r.stderr and r.stdout.strip() == "after"


def test_a_stale_extension_lock_is_cleared_and_a_busy_one_is_kept(tmp_path):
    """A learner killed while DeepSpeed built or loaded its comm op leaves BUILD_DIR/lock, and
    torch waits on it forever (seen: every later learner hung at start).  An old lock that no
    compiling process names is removed; one a running process names is kept."""
    import time

    from autothink.procs import clear_stale_extension_locks, stale_extension_locks

    for name in ("stale", "busy", "compiling", "fresh"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "lock").touch()
    old = time.time() - 120
    for name in ("stale", "busy", "compiling"):
        os.utime(tmp_path / name / "lock", (old, old))
    builder = subprocess.Popen([sys.executable, "-c", "import time, sys; time.sleep(60)", str(tmp_path / "busy")])
    # ninja and the compilers run inside the build folder without naming it
    ninja = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], cwd=tmp_path / "compiling")
    try:
        found = stale_extension_locks(tmp_path, min_age_s=30)
        assert found == [str(tmp_path / "stale" / "lock")]
        os.environ["TORCH_EXTENSIONS_DIR"] = str(tmp_path)
        try:
            assert clear_stale_extension_locks(min_age_s=30) == found
        finally:
            del os.environ["TORCH_EXTENSIONS_DIR"]
        assert not (tmp_path / "stale" / "lock").exists() and (tmp_path / "busy" / "lock").exists()
        assert (tmp_path / "compiling" / "lock").exists()
        assert (tmp_path / "fresh" / "lock").exists()  # younger than 30 s: a loader may be holding it
    finally:
        for p in (builder, ninja):
            p.kill()
            p.wait()
