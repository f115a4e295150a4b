#!/usr/bin/env bash
# Regenerate the Python gRPC code from proto/ (the single source of the wire format).
#   scripts/gen_proto.sh [OUT_DIR]    default: the repository root (writes autothink/v1/*_pb2*.py)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.}
PY=${PYTHON:-.venv/bin/python}
"$PY" -m grpc_tools.protoc -I proto --python_out="$out" --grpc_python_out="$out" proto/autothink/v1/weights.proto
