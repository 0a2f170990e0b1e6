#!/usr/bin/env bash
# Worker pipeline benchmark — a command, not a test. Re-runnable by anyone on a fresh machine:
#
#   scripts/bench-worker.sh                       # 1,000,000 events, 3 runs, tansu broker (own process)
#   scripts/bench-worker.sh --broker mock --events 300000   # librdkafka's mock cluster in its own process
#                                                 # (it keeps at most 5 MB per partition: ~300k events)
#   scripts/bench-worker.sh --events 200000 --runs 5 --latency-rate 5000 --latency-secs 20
#   scripts/bench-worker.sh --shape lifecycle     # messages through their states (received, sent,
#                                                 # clicked) with the same receivers, instead of the
#                                                 # demo generator's independent events
#   scripts/bench-worker.sh --e2e-only --runs 3   # only streamjob and upstream's replay, alternating
#   scripts/bench-worker.sh --shape lifecycle --window-cost --runs 3   # the event-time series on vs off
#
# Prints the machine, then a Markdown table (the "Worker pipeline" section of BENCHMARKS.md is a
# copy of it). Method: see tests/src/bin/bench-worker.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test >/dev/null   # redis-server, redis-benchmark, tansu
cargo build --release --locked -q -p streamjob-worker --bin streamjob-worker -p streamjob-tests --bin bench-worker

scripts/machine-info.sh
STREAMJOB_WORKER_BIN="$PWD/target/release/streamjob-worker" target/release/bench-worker "$@"
