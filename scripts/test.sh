#!/usr/bin/env bash
# Sets up what the tests need (scripts/setup.sh --test) and runs every test of the project:
# formatting, clippy, the Rust test suites (unit, integration and end-to-end, against a real
# redis-server and real Kafka-protocol brokers) and the Python checks of the chart, CRD and Dockerfile.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
export PATH="$PWD/.local/bin:$PWD/.local/venv/bin:$PATH"

step() { printf '\n\033[1;34m== %s\033[0m\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy (all targets, -D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings
step "cargo nextest (workspace)"
# The end-to-end tests run the worker and operator binaries that this very build makes (nextest
# builds every test first, and the packages' binaries with them). Left to themselves the tests
# would run `cargo build -p …`, whose features differ from the workspace's test build (no `cel` on
# kube, no engine in the operator's worker), so a second variant of kube and both crates would be
# compiled mid-run: minutes of a 2-core machine and hundreds of MB of disk.
bin_dir=$(realpath -m "${CARGO_TARGET_DIR:-target}/debug")
export STREAMJOB_WORKER_BIN="${STREAMJOB_WORKER_BIN:-$bin_dir/streamjob-worker}"
export STREAMJOB_OPERATOR_BIN="${STREAMJOB_OPERATOR_BIN:-$bin_dir/streamjob-operator}"
cargo nextest run --workspace --locked --profile ci
if compgen -G "tests/python/test_*.py" >/dev/null; then
  step "pytest tests/python"
  pytest -q tests/python
fi
