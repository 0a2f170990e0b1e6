#!/usr/bin/env bash
# Prints the "## machine" header every benchmark script puts above its results: CPUs, memory,
# Redis/OS/rustc versions, and the commit measured (flagged when the tree has local changes).
set -euo pipefail
echo "## machine"
echo "- $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "- memory: $(awk '/MemTotal/ {printf "%.1f GB", $2/1048576}' /proc/meminfo)"
echo "- $(redis-server --version | cut -d' ' -f1-3), $(. /etc/os-release && echo "$PRETTY_NAME"), $(rustc --version)"
echo "- commit $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (+ local changes)'), $(date -u +%Y-%m-%dT%H:%MZ)"
echo
