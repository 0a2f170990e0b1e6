#!/usr/bin/env bash
# jobmanager benchmark — a command, not a test. Re-runnable on a fresh machine:
#
#   scripts/bench-jobmanager.sh                          # 10 rescales, 10 savepoints, 5 runs x 300k events
#   scripts/bench-jobmanager.sh --rescales 20 --runs 7 --events 500000 --rate 8000
#   scripts/bench-jobmanager.sh --rescales 0             # checkpoint overhead only
#   scripts/bench-jobmanager.sh --rolling 3              # rolling upgrades of 4 taskmanagers + a savepoint upgrade (issue #26)
#
# Real processes: one `streamjob-worker jobmanager`, 2-3 `streamjob-worker taskmanager`, a
# redis-server, librdkafka's mock cluster as the broker. Prints the machine, then the figures the
# "jobmanager" section of BENCHMARKS.md copies. Method: worker/examples/bench_jobmanager.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
cargo build --release --locked -q -p streamjob-worker --features testkit --bin streamjob-worker --example bench_jobmanager

scripts/machine-info.sh
STREAMJOB_WORKER_BIN="$PWD/target/release/streamjob-worker" target/release/examples/bench_jobmanager "$@"
