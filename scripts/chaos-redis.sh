#!/usr/bin/env bash
# Longer exactly-once runs against a Redis that loses acknowledged writes, repeated to catch flakes.
#
# Each run streams STREAMJOB_CHAOS_EVENTS events (default 300000) through a standalone worker
# (2 taskmanagers) that is SIGKILLed STREAMJOB_CHAOS_KILLS times (default 8) while:
#   - rollback: redis-server is restarted from an RDB snapshot taken earlier in the same run,
#     once under a running worker and once while the worker is down;
#   - failover: a primary, a replica and three sentinels; the replica is paused (kill -STOP)
#     while the primary takes writes, the primary is SIGKILLed and the sentinels promote the
#     lagging replica.
# At the end the whole Redis state is compared with the model of the data set (every counter,
# every list's content, every TTL, every dead letter), and the log must show the rewind.
#
# Usage: [STREAMJOB_CHAOS_TESTS='test …'] scripts/chaos-redis.sh [RUNS]   (default 10). A failure prints STREAMJOB_SEED to replay.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.local/bin:$PWD/.local/venv/bin:$PATH"
runs="${1:-10}"
export STREAMJOB_CHAOS_EVENTS="${STREAMJOB_CHAOS_EVENTS:-300000}"
export STREAMJOB_CHAOS_KILLS="${STREAMJOB_CHAOS_KILLS:-8}"
# STREAMJOB_CHAOS_TESTS: a space-separated subset of these (default: both).
read -r -a tests <<<"${STREAMJOB_CHAOS_TESTS:-redis_restored_from_an_earlier_snapshot_mid_run_rewinds_and_applies_every_event_once a_sentinel_failover_to_a_lagging_replica_rewinds_and_applies_every_event_once}"

cargo build --quiet -p streamjob-worker --bin streamjob-worker
# Run the test binary itself: a `cargo test` per run would wait for any other cargo command
# holding the target directory's lock.
test_bin=$(cargo test --quiet -p streamjob-tests --test exactly_once --no-run --message-format=json |
  python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "exactly_once":
        print(m["executable"])')
log_dir="$(mktemp -d -t chaos-redis-XXXX)"
failed=0
for run in $(seq 1 "$runs"); do
  for test in "${tests[@]}"; do
    log="$log_dir/$run-$test.log"
    start=$(date +%s)
    if (cd tests && "$test_bin" --exact "$test" --nocapture) >"$log" 2>&1; then
      result=ok
    else
      result=FAILED
      failed=$((failed + 1))
    fi
    seed=$(grep -o 'seed [0-9]*' "$log" | head -1 || true)
    rewinds=$(grep -o '[0-9]* rewind log lines' "$log" | head -1 || true)
    printf '%2d %-80s %-6s %4ss  %s  %s\n' "$run" "$test" "$result" "$(( $(date +%s) - start ))" \
      "$seed" "$rewinds"
  done
done
echo "logs: $log_dir; failures: $failed"
[ "$failed" -eq 0 ]
