#!/usr/bin/env bash
# The README's run command: the whole trace pipeline on this machine, with nothing running before.
#
#   scripts/run-local.sh                 # debug build (quickest first build)
#   scripts/run-local.sh --release       # optimised build
#   DEMO_RATE=5000 DURATION=60s TASKMANAGERS=2 scripts/run-local.sh
#
# Installs what it needs (scripts/setup.sh), builds streamjob-worker, starts its own redis-server on a
# free port, runs `streamjob-worker standalone --embedded-kafka --demo RATE --duration D` (an
# in-process Kafka-protocol broker, demo AnchorInfo traffic, the exactly-once pipeline), then shows
# what landed in Redis and stops the redis-server.
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=debug
[ "${1:-}" = "--release" ] && PROFILE=release
DEMO_RATE=${DEMO_RATE:-2000}
DURATION=${DURATION:-20s}
TASKMANAGERS=${TASKMANAGERS:-2}

say() { printf '\n\033[1;34m== %s\033[0m\n' "$*"; }

scripts/setup.sh
say "building streamjob-worker ($PROFILE)"
if [ "$PROFILE" = release ]; then
  cargo build --locked --release -p streamjob-worker --bin streamjob-worker
else
  cargo build --locked -p streamjob-worker --bin streamjob-worker
fi
BIN="${CARGO_TARGET_DIR:-$PWD/target}/$PROFILE/streamjob-worker"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
WORK=$(mktemp -d -t streamjob-local-XXXXXX)
REDIS_PORT=$(free_port)
METRICS_PORT=$(free_port)
JM_PORT=$(free_port)
# Stops the redis-server and waits until it has exited: it keeps writing redis.log until then, and
# removing $WORK under it failed with "rm: cannot remove …: Directory not empty".
stop_redis() {
  [ -f "$WORK/redis.pid" ] || return 0
  local pid
  pid=$(cat "$WORK/redis.pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    kill -9 "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  fi
  rm -f "$WORK/redis.pid"
}
cleanup() {
  stop_redis
  rm -rf "$WORK"
}
trap cleanup EXIT

say "starting redis-server on 127.0.0.1:$REDIS_PORT"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" \
  --daemonize yes --pidfile "$WORK/redis.pid" --logfile "$WORK/redis.log"
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
R() { redis-cli -p "$REDIS_PORT" "$@"; }

cat > "$WORK/job.yaml" <<YAML
job:
  name: trace
source:
  kafka:
    topic: austinTraceLog
sink:
  redis:
    url: redis://127.0.0.1:$REDIS_PORT/0
    timeZone: Asia/Shanghai
batch:
  maxEvents: 1000
  linger: 20ms
metrics:
  bind: 127.0.0.1:$METRICS_PORT
jobmanager:
  bind: 127.0.0.1:$JM_PORT
  url: http://127.0.0.1:$JM_PORT
checkpoint:
  dir: $WORK/state
YAML

say "running the pipeline for $DURATION ($DEMO_RATE demo events/s, $TASKMANAGERS in-process taskmanagers)"
echo "while it runs:  curl -s http://127.0.0.1:$METRICS_PORT/metrics | grep ^streamjob_"
echo "                curl -s http://127.0.0.1:$JM_PORT/jobs/trace      (jobmanager REST, when present)"
"$BIN" standalone --config "$WORK/job.yaml" --embedded-kafka --demo "$DEMO_RATE" \
  --duration "$DURATION" --taskmanagers "$TASKMANAGERS"

say "what landed in Redis ($(R dbsize) keys)"
user=$(R --scan --pattern '138*' | head -n 1 || true)
message=$(R --scan --pattern 'Austin:MessageId:*' | head -n 1 || true)
template=$(R --scan --pattern '[12]0000[0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]' | head -n 1 || true)
echo "user trace      LRANGE $user 0 -1   (TTL $(R ttl "$user") s, until midnight Asia/Shanghai)"
R lrange "$user" 0 -1
echo
echo "message trace   LRANGE $message 0 -1   (TTL $(R ttl "$message") s)"
R lrange "$message" 0 -1
echo
echo "template counts HGETALL $template   (state -> receivers; TTL $(R ttl "$template") s)"
R hgetall "$template" | paste - -
echo
echo "exactly-once fences (next offset per partition):"
for p in 0 1 2 3; do
  printf '  partition %s: %s\n' "$p" "$(R hget "streamjob:trace:fence:austinTraceLog:$p" next_offset)"
done
stop_redis
say "done; redis-server stopped"
