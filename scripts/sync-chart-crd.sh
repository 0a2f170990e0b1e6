#!/usr/bin/env bash
# Copies the generated CRD (crds/streamjob.yaml, the source of truth: `streamjob-operator crd`)
# into the Helm chart, which cannot read files outside its own directory. Run it after
# regenerating the CRD; tests/python/test_chart.py fails while the two differ.
#
#   scripts/sync-chart-crd.sh           copy
#   scripts/sync-chart-crd.sh --check   exit 1 (and say so) when the chart's copy is stale
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=crds/streamjob.yaml
DST=charts/streamjob-operator/files/crds/streamjob.yaml
if [ ! -f "$SRC" ]; then
  echo "$SRC is missing: generate it first (cargo run -p streamjob-operator -- crd > $SRC)" >&2
  exit 1
fi
if [ "${1:-}" = "--check" ]; then
  if cmp -s "$SRC" "$DST"; then
    echo "$DST is up to date"
    exit 0
  fi
  echo "$DST differs from $SRC: run scripts/sync-chart-crd.sh" >&2
  exit 1
fi
mkdir -p "$(dirname "$DST")"
cp "$SRC" "$DST"
echo "copied $SRC -> $DST"
