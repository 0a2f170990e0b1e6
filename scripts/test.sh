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
cargo nextest run --workspace --locked --profile ci
if compgen -G "tests/python/test_*.py" >/dev/null; then
  step "pytest tests/python"
  pytest -q tests/python
fi
