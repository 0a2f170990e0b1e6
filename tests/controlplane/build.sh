#!/usr/bin/env bash
# Builds kube-apiserver and kube-controller-manager from the k8s.io/kubernetes module pinned in
# go.mod beside this script, into .local/bin (once per machine: ~5 minutes on 2 cores; skipped
# when binaries of this version are there). The Go module cache and build cache live in .local,
# on the project's disk. The operator's end-to-end tests run against these binaries
# (tests/src/controlplane), with etcd from Debian's etcd-server.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(cd ../.. && pwd)
VERSION=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' go.mod)
BIN="$ROOT/.local/bin"
STAMP="$BIN/.controlplane-version"
if [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/kube-controller-manager" ] \
  && [ "$(cat "$STAMP" 2>/dev/null)" = "$VERSION" ]; then
  echo "kube-apiserver and kube-controller-manager $VERSION present"
  exit 0
fi
export GOPATH="$ROOT/.local/go" GOCACHE="$ROOT/.local/go-cache" GOFLAGS=-mod=mod
mkdir -p "$BIN"
echo "building kube-apiserver and kube-controller-manager $VERSION (once per machine, ~5 min)"
# The version the binaries report (/version, kubectl, Helm's .Capabilities.KubeVersion): a module
# build has none of its own.
MINOR=$(echo "$VERSION" | cut -d. -f2)
V=k8s.io/component-base/version
LDFLAGS="-s -w -X $V.gitVersion=$VERSION -X $V.gitMajor=1 -X $V.gitMinor=$MINOR -X $V.gitTreeState=clean"
go build -tags providerless -ldflags "$LDFLAGS" -o "$BIN/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager
echo "$VERSION" > "$STAMP"
# The build cache is only worth keeping while iterating on this script.
go clean -cache >/dev/null 2>&1 || true
