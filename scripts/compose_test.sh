#!/usr/bin/env bash
# `make compose-test`: docker-compose.yml for real, in containers. Builds the CPU image, runs
# `docker compose up`, waits for every healthcheck, watches the learner through the three toy
# stages, crashes the learner mid-run (restart policy + --resume) and `docker kill`s the rollout
# container, asks the gateway (POST /generate and the OpenAI API) on its published port and checks
# the answer comes from the final policy version, then `docker compose down` and checks nothing of
# the project is left. A summary goes to $COMPOSE_TEST_OUT/summary.txt (default runs/compose-test).
#
# What it needs, and what it does when something is missing (exit 3 = cannot run here, and why):
#   a Docker engine     `docker info` must answer. If it does not and COMPOSE_TEST_START_ENGINE=1
#                       (the make target's default) and we are root: installs Debian's docker.io
#                       and docker-compose when dockerd is missing, starts dockerd, stops it at the end.
#   Compose             `docker compose` (v2) where available, `docker-compose` (v1) otherwise.
#   base images         $BASE_IMAGE (python:3.11-slim) and $REDIS_IMAGE (redis:7): present, pulled,
#                       or, where no registry answers, local stand-ins built from Debian bookworm
#                       with debootstrap (docker/standin/, root only).
#   the CPU torch wheel $TORCH_INDEX_URL, else download.pytorch.org, else a torch-2.13.0+cpu wheel
#                       file in $TORCH_WHEEL_DIR (default /opt/wheels) served to the build on loopback.
#   the toy model       the embedded one (autothink/toy/model), copied into the image.
# Knobs: GATEWAY_PORT (host port of the gateway; default a free one), COMPOSE_TEST_STEPS (steps a
# stage, default 6), COMPOSE_TEST_FULL=1 (the whole toy preset, 110 steps, no kills before step 6),
# COMPOSE_PROJECT_NAME, COMPOSE_TEST_NICE (default 15), COMPOSE_TEST_KEEP=1 (leave the stack up).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${COMPOSE_TEST_OUT:-runs/compose-test}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG=$OUT/compose-test.log
SUMMARY=$OUT/summary.txt
: > "$LOG"
: > "$SUMMARY"
PROJECT=${COMPOSE_PROJECT_NAME:-autothink-compose-test}
NICE=(nice -n "${COMPOSE_TEST_NICE:-15}")
START_ENGINE=${COMPOSE_TEST_START_ENGINE:-1}
export BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim}
export REDIS_IMAGE=${REDIS_IMAGE:-redis:7}
export PIP_INDEX_URL=${PIP_INDEX_URL:-https://pypi.org/simple}
export COMPOSE_TEST_STEPS=${COMPOSE_TEST_STEPS:-6}
IMAGE=autothink:cpu
T_START=$(date +%s)

say() { printf '[compose-test %s] %s\n' "$(date -u +%T)" "$*" | tee -a "$LOG" >&2; }
note() { say "$*"; echo "$*" >> "$SUMMARY"; }
die() { say "FAILED: $*"; echo "FAILED: $*" >> "$SUMMARY"; exit 1; }
cannot() { say "CANNOT RUN: $*"; echo "cannot run: $*" >> "$SUMMARY"; exit 3; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export GATEWAY_PORT=${GATEWAY_PORT:-$(free_port)}

DOCKERD_PID=""
INDEX_PID=""
STACK_UP=0
cleanup() {
  local rc=$?
  if [ "$STACK_UP" = 1 ]; then
    dc logs --no-color > "$OUT/stack.log" 2>&1 || true
    if [ "${COMPOSE_TEST_KEEP:-0}" = 1 ]; then
      say "leaving the stack up (COMPOSE_TEST_KEEP=1): ${COMPOSE[*]} -p $PROJECT down -v"
    else
      dc down -v --remove-orphans >> "$LOG" 2>&1 || true
    fi
  fi
  [ -n "$INDEX_PID" ] && kill "$INDEX_PID" 2>/dev/null || true
  if [ -n "$DOCKERD_PID" ] && [ "${COMPOSE_TEST_KEEP:-0}" != 1 ]; then
    say "stopping the dockerd this script started (pid $DOCKERD_PID)"
    kill "$DOCKERD_PID" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 1; done
  fi
  [ "$rc" = 0 ] || say "exit $rc; logs in $OUT (compose-test.log, build.log, stack.log)"
}
trap cleanup EXIT

# ------------------------------------------------------------------ 1. the engine and Compose
engine_up() { timeout 20 docker info >/dev/null 2>&1; }
if ! command -v docker >/dev/null 2>&1 || ! engine_up; then
  [ "$START_ENGINE" = 1 ] || cannot "no Docker engine answers ('docker info' failed); start one, or run 'make compose-test'"
  [ "$(id -u)" = 0 ] || cannot "no Docker engine answers and starting one needs root: start dockerd (or the docker service) and rerun"
  if ! command -v dockerd >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || cannot "no dockerd and no apt-get to install Debian's docker.io"
    say "installing Debian's docker.io and docker-compose (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker.io docker-compose >> "$LOG" 2>&1 \
      || cannot "apt-get install docker.io docker-compose failed (see $LOG)"
  fi
  say "starting dockerd (log $OUT/dockerd.log); stopped again at the end"
  # niced: the builds and the containers are its descendants and inherit it
  "${NICE[@]}" dockerd > "$OUT/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  for _ in $(seq 60); do engine_up && break; sleep 1; done
  engine_up || cannot "dockerd did not come up in 60 s (see $OUT/dockerd.log)"
fi
if docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  COMPOSE=(docker-compose)
elif [ "$START_ENGINE" = 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  say "installing Debian's docker-compose (apt-get)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker-compose >> "$LOG" 2>&1 \
    || cannot "apt-get install docker-compose failed"
  COMPOSE=(docker-compose)
else
  cannot "neither 'docker compose' (v2) nor 'docker-compose' (v1) is installed"
fi
FILES=(-f docker-compose.yml)
[ "${COMPOSE_TEST_FULL:-0}" = 1 ] || FILES+=(-f docker/compose.test.yml)
dc() { "${COMPOSE[@]}" -p "$PROJECT" "${FILES[@]}" "$@"; }
note "engine: $(docker version --format 'server {{.Server.Version}}, client {{.Client.Version}}'); compose: $("${COMPOSE[@]}" version 2>/dev/null | head -1)"
dc config -q || cannot "the compose files do not validate"

# ------------------------------------------------------------------ 2. base images
ensure_debian_standin() {
  docker image inspect debian:bookworm-standin >/dev/null 2>&1 && return 0
  [ "$(id -u)" = 0 ] || cannot "no registry answers for the base images and building stand-ins (debootstrap) needs root"
  if ! command -v debootstrap >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || cannot "debootstrap is missing"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends debootstrap >> "$LOG" 2>&1 || cannot "apt-get install debootstrap failed"
  fi
  local root=$OUT/rootfs t=$(date +%s)
  rm -rf "$root"
  say "debootstrap of Debian bookworm (minbase) for the stand-in base images"
  "${NICE[@]}" debootstrap --variant=minbase bookworm "$root" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >> "$LOG" 2>&1 \
    || cannot "debootstrap failed (see $LOG)"
  tar -C "$root" -c . | docker import -c 'CMD ["bash"]' -c 'ENV LANG=C.UTF-8' - debian:bookworm-standin >> "$LOG"
  rm -rf "$root"
  note "debian:bookworm-standin: debootstrap + import in $(( $(date +%s) - t )) s"
}
ensure_base() {  # image, stand-in Dockerfile
  docker image inspect "$1" >/dev/null 2>&1 && { say "base image $1: present"; return 0; }
  say "pulling $1"
  if timeout 120 docker pull "$1" >> "$LOG" 2>&1; then note "base image $1: pulled"; return 0; fi
  say "cannot pull $1; building a local stand-in from Debian packages ($2)"
  ensure_debian_standin
  local t=$(date +%s)
  "${NICE[@]}" docker build --network host -f "$2" -t "$1" docker/standin >> "$OUT/build.log" 2>&1 \
    || cannot "the stand-in $1 did not build (see $OUT/build.log)"
  note "base image $1: local stand-in ($2) built in $(( $(date +%s) - t )) s"
}
ensure_base "$BASE_IMAGE" docker/standin/python.Dockerfile
ensure_base "$REDIS_IMAGE" docker/standin/redis.Dockerfile

# ------------------------------------------------------------------ 3. the CPU image
if [ -z "${TORCH_INDEX_URL:-}" ]; then
  if curl -sf --max-time 15 -o /dev/null https://download.pytorch.org/whl/cpu/torch/; then
    TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
  else
    wheel=$(find "${TORCH_WHEEL_DIR:-/opt/wheels}" -maxdepth 1 -name 'torch-2.13.0+cpu-cp311-*.whl' 2>/dev/null | head -1)
    [ -n "$wheel" ] || cannot "download.pytorch.org is unreachable and no torch-2.13.0+cpu wheel for Python 3.11 is in ${TORCH_WHEEL_DIR:-/opt/wheels}: set TORCH_INDEX_URL to a mirror of the PyTorch CPU index"
    rm -rf "$OUT/torch-index"
    mkdir -p "$OUT/torch-index/simple/torch"
    ln -s "$wheel" "$OUT/torch-index/simple/torch/"
    # a fixed port: the URL is a build argument, so a different one each run would miss the layer
    # cache from the first RUN on (the whole 9-minute Python install again)
    port=${COMPOSE_TEST_INDEX_PORT:-18765}
    if python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1)' "$port" 2>/dev/null; then
      say "port $port is taken: serving the wheel on another port (the build's Python layers will not come from the cache)"
      port=$(free_port)
    fi
    python3 -m http.server "$port" --bind 127.0.0.1 --directory "$OUT/torch-index" > "$OUT/torch-index.log" 2>&1 &
    INDEX_PID=$!
    TORCH_INDEX_URL=http://127.0.0.1:$port/simple
    for _ in $(seq 20); do curl -sf -o /dev/null "$TORCH_INDEX_URL/torch/" && break; sleep 0.5; done
    say "download.pytorch.org is unreachable: serving $wheel to the build as $TORCH_INDEX_URL"
  fi
fi
export TORCH_INDEX_URL
# A TLS-inspecting proxy: the build trusts the CA certificates this machine added (docker/certs/).
for crt in /usr/local/share/ca-certificates/*.crt; do
  if [ -f "$crt" ] && ! cmp -s "$crt" "docker/certs/$(basename "$crt")"; then
    cp "$crt" docker/certs/ && say "build trusts $crt (copied to docker/certs/)"
  fi
done
note "toy model: the embedded one (autothink/toy/model), copied into the image and checked against its manifest"
say "building $IMAGE (docker/Dockerfile, log $OUT/build.log)"
t=$(date +%s)
# --shm-size: kept from when the image built and evaluated the toy (vLLM needs 160+ MiB of /dev/shm)
"${NICE[@]}" docker build --network host --shm-size 2g -f docker/Dockerfile -t "$IMAGE" \
  --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg PIP_INDEX_URL="$PIP_INDEX_URL" --build-arg TORCH_INDEX_URL="$TORCH_INDEX_URL" \
  . >> "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log" >&2; die "$IMAGE did not build (see $OUT/build.log)"; }
note "image $IMAGE built in $(( $(date +%s) - t )) s ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.2f GB", $1/1e9}'))"
info=$(docker run --rm "$IMAGE" sh -c 'id -un; id -u; python -c "import torch, vllm; print(torch.__version__, vllm.__version__)"; pip list 2>/dev/null | grep -ci "^nvidia-" || true')
user=$(echo "$info" | sed -n 1p); uid=$(echo "$info" | sed -n 2p)
[ -n "$uid" ] && [ "$uid" != 0 ] || die "the image runs as root (or did not run: $info)"
[ "$(echo "$info" | sed -n 4p)" = 0 ] || die "nvidia-* packages in the CPU image"
note "image runs as $user (uid $uid); torch, vllm: $(echo "$info" | sed -n 3p); no nvidia-* packages"

# The CUDA image cannot be built here (vLLM's CUDA base image, GPUs): its steps run on the CPU
# image's build stage instead (pip, DeepSpeed, the package, the user), then its `autothink` answers.
if [ "${COMPOSE_TEST_CUDA_STEPS:-1}" = 1 ]; then
  t=$(date +%s)
  if "${NICE[@]}" docker build --network host -f docker/Dockerfile --target build -t autothink:cpu-build \
       --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg PIP_INDEX_URL="$PIP_INDEX_URL" --build-arg TORCH_INDEX_URL="$TORCH_INDEX_URL" \
       . >> "$OUT/build.log" 2>&1 \
     && "${NICE[@]}" docker build --network host -f docker/Dockerfile.cuda -t autothink:cuda-steps \
       --build-arg VLLM_IMAGE=autothink:cpu-build --build-arg PIP_INDEX_URL="$PIP_INDEX_URL" . >> "$OUT/build.log" 2>&1 \
     && docker run --rm autothink:cuda-steps sh -c 'test "$(id -u)" = 10001 && autothink --help >/dev/null'; then
    note "docker/Dockerfile.cuda: its steps build and run on the CPU build stage instead of vLLM's CUDA image ($(( $(date +%s) - t )) s); the CUDA image itself is not built here"
  else
    die "docker/Dockerfile.cuda's steps failed on the CPU build stage (see $OUT/build.log)"
  fi
  docker rmi autothink:cuda-steps autothink:cpu-build > /dev/null 2>&1 || true
fi

# ------------------------------------------------------------------ 4. up, healthy
SERVICES=(redis reward rollout learner gateway)
cid() { dc ps -q "$1" 2>/dev/null | head -1; }
state() { local c; c=$(cid "$1"); [ -n "$c" ] && docker inspect -f '{{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{end}}/{{.RestartCount}}' "$c" 2>/dev/null; }
wait_healthy() {  # timeout, services...
  local limit=$1 t0=$(date +%s); shift
  while :; do
    local all=1 line=""
    for s in "$@"; do
      local st; st=$(state "$s" || true)
      line+=" $s=${st:-none}"
      [[ "$st" == running/healthy/* ]] || all=0
    done
    [ "$all" = 1 ] && return 0
    (( $(date +%s) - t0 < limit )) || { say "not healthy after ${limit} s:$line"; return 1; }
    (( ($(date +%s) - t0) % 30 < 5 )) && say "waiting:$line"
    sleep 5
  done
}
learner_health() {
  docker exec "$(cid learner)" python -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8003/health', timeout=5).read().decode())" 2>/dev/null
}
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2" 2>/dev/null; }
wait_step() {  # step, timeout: until the learner has finished that many steps
  local want=$1 limit=$2 t0=$(date +%s) last=""
  while :; do
    local h; h=$(learner_health || true)
    local step; step=$(field "$h" step || true)
    if [ -n "$step" ] && [ "$step" != "$last" ]; then say "learner: step $step/$(field "$h" steps), policy version $(field "$h" policy_version)"; last=$step; fi
    if [ -n "$step" ] && [ "$step" -ge "$want" ]; then echo "$h"; return 0; fi
    (( $(date +%s) - t0 < limit )) || { say "the learner did not reach step $want in ${limit} s (last: ${h:-no answer})"; return 1; }
    sleep 2
  done
}

dc down -v --remove-orphans >> "$LOG" 2>&1 || true  # what a previous, interrupted run left
say "docker compose up (project $PROJECT, gateway published on 127.0.0.1:$GATEWAY_PORT)"
T_UP=$(date +%s)
STACK_UP=1
"${NICE[@]}" "${COMPOSE[@]}" -p "$PROJECT" "${FILES[@]}" up -d --no-build >> "$LOG" 2>&1 || die "docker compose up failed (see $LOG)"
wait_healthy 900 "${SERVICES[@]}" || die "the stack did not become healthy"
note "all 5 services healthy $(( $(date +%s) - T_UP )) s after 'up' (gateway: http://127.0.0.1:$GATEWAY_PORT)"
users=""
for s in "${SERVICES[@]}"; do
  u=$(docker exec "$(cid "$s")" sh -c 'echo "$(id -un) (uid $(id -u))"') || die "docker exec in $s failed"
  case "$u" in *"(uid 0)"*) die "$s runs as root";; esac
  users+=" $s=$u"
done
note "containers run as:$users"

# ------------------------------------------------------------------ 5. training, with a learner crash
h=$(learner_health) || die "the learner's /health does not answer"
TOTAL=$(field "$h" steps)
note "learner schedule: $TOTAL steps"
KILL_AT=$(( COMPOSE_TEST_STEPS > 3 ? 3 : 1 ))
[ "${COMPOSE_TEST_FULL:-0}" = 1 ] && KILL_AT=15
h=$(wait_step "$KILL_AT" 900) || die "no training progress"
c=$(cid learner); before=$(docker inspect -f '{{.RestartCount}}' "$c"); step=$(field "$h" step)
kill -9 "$(docker inspect -f '{{.State.Pid}}' "$c")"
T_KILL=$(date +%s)
say "learner crashed on purpose (kill -9 of its main process) after step $step"
for _ in $(seq 120); do
  [ "$(docker inspect -f '{{.RestartCount}}' "$c")" -gt "$before" ] && break; sleep 1
done
[ "$(docker inspect -f '{{.RestartCount}}' "$c")" -gt "$before" ] || die "the restart policy did not restart the learner"
wait_healthy 600 learner || die "the learner did not come back"
resumed=$(docker logs "$c" 2>&1 | grep -o 'resumed at step [0-9]*, policy version [0-9]*' | tail -1 || true)
[ -n "$resumed" ] || die "the restarted learner did not resume from a checkpoint (--resume)"
wait_step $(( step + 1 )) 900 > /dev/null || die "no progress after the learner's restart"
note "learner killed (kill -9) after step $step: restarted by the restart policy, $resumed, training again $(( $(date +%s) - T_KILL )) s after the kill"

# ------------------------------------------------------------------ 6. docker kill of the rollout container
c=$(cid rollout)
h=$(learner_health) || die "the learner's /health does not answer"; step=$(field "$h" step)
docker kill "$c" > /dev/null
T_KILL=$(date +%s)
sleep 5
st=$(state rollout || true)
say "rollout after 'docker kill': $st (Docker does not apply a restart policy to a container it was told to kill)"
"${COMPOSE[@]}" -p "$PROJECT" "${FILES[@]}" up -d --no-build --no-deps rollout >> "$LOG" 2>&1 || die "compose up -d rollout failed"
wait_healthy 600 rollout || die "the rollout service did not come back"
if [ "$step" -lt "$TOTAL" ]; then
  wait_step $(( step + 1 )) 900 > /dev/null || die "no training progress after the rollout's restart"
fi
note "rollout killed ('docker kill') at step $step: state then '$st'; 'docker compose up -d rollout' brought it back, healthy $(( $(date +%s) - T_KILL )) s after the kill, and training went on"

# ------------------------------------------------------------------ 7. the end of the schedule
h=$(wait_step "$TOTAL" 3600) || die "the schedule did not finish"
for _ in $(seq 60); do [ "$(field "$(learner_health)" finished)" = True ] && break; sleep 2; done
h=$(learner_health) || die "the learner's /health does not answer"
FINAL=$(field "$h" policy_version)
note "schedule finished: $(field "$h" step) steps, final policy version $FINAL, $(( $(date +%s) - T_UP )) s after 'up'"
docker exec "$(cid learner)" cat /data/runs/toy/metrics.jsonl > "$OUT/metrics.jsonl"
python3 - "$OUT/metrics.jsonl" "$TOTAL" >> "$SUMMARY" <<'PY' || die "metrics.jsonl does not show the three stages in order"
import json, sys
rows = [json.loads(x) for x in open(sys.argv[1]) if x.strip()]
total = int(sys.argv[2])
assert [r["step"] for r in rows] == list(range(total)), [r["step"] for r in rows]
stages = [r["stage"] for r in rows]
order = [s for i, s in enumerate(stages) if i == 0 or stages[i - 1] != s]
assert order == ["stage1", "stage2", "stage3"], order
for name in order:
    last = [r for r in rows if r["stage"] == name][-1]
    print(f"  {name}: {stages.count(name)} steps; at its last step reward {last['reward_shaped']:.2f}, "
          f"think rate {last['think_rate']:.2f}, accuracy {last['accuracy']:.2f}, policy version {last['policy_version']}")
PY
say "$(tail -3 "$SUMMARY")"

# ------------------------------------------------------------------ 8. the gateway on its published port
URL=http://127.0.0.1:$GATEWAY_PORT
ok=0
for _ in $(seq 60); do
  body=$(curl -sf --max-time 60 "$URL/generate" -H 'content-type: application/json' \
    -d '{"prompt": "What is the value of $3+4+8$?", "max_tokens": 96}' || true)
  v=$(field "$body" policy_version || true)
  [ "$v" = "$FINAL" ] && { ok=1; break; }
  say "gateway answered with policy version ${v:-none}, waiting for $FINAL"
  sleep 2
done
[ "$ok" = 1 ] || die "the gateway never answered with the final policy version $FINAL"
echo "$body" > "$OUT/generate.json"
gen=$(python3 - "$OUT/generate.json" <<'PY'
import json, sys
b = json.load(open(sys.argv[1]))  # (no backslashes inside f-string braces: Python 3.11)
answer, thought, p, text = b.get("answer"), b.get("thought"), b.get("think_probability") or 0.0, b.get("text")
print(f"answer {answer!r}, thought {thought}, think_probability {p:.2f}, policy version {b['policy_version']}, "
      f"reasoning {b.get('reasoning')!r}, text {text!r}")
PY
) || die "the /generate answer does not parse"
note "POST $URL/generate -> $gen"
curl -sf "$URL/v1/models" > "$OUT/models.json" || die "GET /v1/models failed"
model=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["data"][0]["id"])' "$OUT/models.json")
curl -sf --max-time 60 "$URL/v1/chat/completions" -H 'content-type: application/json' \
  -d "{\"model\": \"$model\", \"messages\": [{\"role\": \"user\", \"content\": \"What is the value of \$2+9+4+7\$?\"}], \"max_tokens\": 96}" \
  > "$OUT/chat.json" || die "POST /v1/chat/completions failed"
python3 - "$OUT/chat.json" "$FINAL" >> "$SUMMARY" <<'PY' || die "the chat completion is not from the final policy"
import json, sys
b = json.load(open(sys.argv[1]))
msg = b["choices"][0]["message"]
assert b["object"] == "chat.completion" and (msg.get("content") or msg.get("reasoning_content"))
assert b.get("policy_version") == int(sys.argv[2]), b.get("policy_version")
print(f"POST /v1/chat/completions (model {b['model']}) -> content {msg.get('content')!r}, "
      f"reasoning {msg.get('reasoning_content')!r}, system_fingerprint {b.get('system_fingerprint')}, policy version {b['policy_version']}")
PY
say "$(tail -1 "$SUMMARY")"

# ------------------------------------------------------------------ 9. down
dc logs --no-color > "$OUT/stack.log" 2>&1 || true
if [ "${COMPOSE_TEST_KEEP:-0}" = 1 ]; then
  note "left running (COMPOSE_TEST_KEEP=1)"; STACK_UP=0; exit 0
fi
t=$(date +%s)
dc down -v --remove-orphans >> "$LOG" 2>&1 || die "docker compose down failed"
STACK_UP=0
left=$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT"; \
       docker network ls -q --filter "label=com.docker.compose.project=$PROJECT"; \
       docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT")
[ -z "$left" ] || die "after 'down' the project still has: $left"
note "docker compose down -v: $(( $(date +%s) - t )) s; no container, network or volume of the project left"
note "compose-test passed in $(( $(date +%s) - T_START )) s"
