#!/usr/bin/env bash
# jobmanager benchmark — a command, not a test. Re-runnable on a fresh machine:
#
#   scripts/bench-jobmanager.sh                          # 10 rescales, 10 savepoints, 5 runs x 300k events
#   scripts/bench-jobmanager.sh --rescales 20 --runs 7 --events 500000 --rate 8000
#   scripts/bench-jobmanager.sh --rescales 0             # checkpoint overhead only
#
# Real processes: one `streamjob-worker jobmanager`, 2-3 `streamjob-worker taskmanager`, a
# redis-server, librdkafka's mock cluster as the broker. Prints the machine, then the figures the
# "jobmanager" section of BENCHMARKS.md copies. Method: worker/examples/bench_jobmanager.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
cargo build --release --locked -q -p streamjob-worker --features testkit --bin streamjob-worker --example bench_jobmanager

echo "## machine"
echo "- $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "- memory: $(awk '/MemTotal/ {printf "%.1f GB", $2/1048576}' /proc/meminfo)"
echo "- $(redis-server --version | cut -d' ' -f1-3), $(. /etc/os-release && echo "$PRETTY_NAME"), $(rustc --version)"
echo "- commit $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (+ local changes)'), $(date -u +%Y-%m-%dT%H:%MZ)"
echo
STREAMJOB_WORKER_BIN="$PWD/target/release/streamjob-worker" target/release/examples/bench_jobmanager "$@"
