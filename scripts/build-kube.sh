#!/usr/bin/env bash
# Builds the real Kubernetes parts of the tests from the Go module proxy, pinned by scripts/kube/*/go.sum, into
# .cache/kube/bin: etcd (go.etcd.io/etcd/server/v3 v3.6.16), kube-apiserver and kube-controller-manager
# (k8s.io/kubernetes v1.34.4, as a dependency: scripts/kube/apiserver/go.mod replaces each staging module by its
# v0.34.4), and node-agent, the sandbox node's kubelet API (scripts/kube/node-agent: `kubectl exec` and `kubectl
# logs`, with k8s.io/kubelet v0.34.4's remotecommand server). Each is built once per go.sum (node-agent: and its
# main.go, the one source kept here). `--check` only says (exit status) whether all are there.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=.cache/kube/bin
stamp() {
  local src=("scripts/kube/$2/go.sum")
  [ "$2" = node-agent ] && src+=("scripts/kube/$2/main.go")
  echo "$BIN/.$1-$(cat "${src[@]}" | sha256sum | cut -c1-16)"
}
built() { [ -x "$BIN/$1" ] && [ -f "$(stamp "$1" "$2")" ]; }
if [ "${1:-}" = --check ]; then built etcd etcd && built kube-apiserver apiserver && built kube-controller-manager apiserver && built node-agent node-agent; exit; fi

build() { # binary, module folder, package, extra ldflags
  built "$1" "$2" && return 0
  mkdir -p "$BIN"
  # "building NAME at EPOCH": sandbox/kube.ts reads it to say what is building and for how long.
  echo "building $1 at $(date +%s)"
  local started=$SECONDS
  (cd "scripts/kube/$2" && GOFLAGS=-mod=readonly go build -trimpath -ldflags="-s -w $4" -o "../../../$BIN/$1" "$3") || { echo "building $1 failed"; exit 1; }
  rm -f "$BIN/.$1-"*
  touch "$(stamp "$1" "$2")"
  # The time it took, kept for the next build's estimate of what is left (sandbox/kube.ts).
  echo "$1 $((SECONDS - started))" >> .cache/kube/build-times
  echo "built $1 in $((SECONDS - started)) s"
}
build etcd etcd . ""
VERSION="-X k8s.io/component-base/version.gitVersion=v1.34.4 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=34"
build kube-apiserver apiserver k8s.io/kubernetes/cmd/kube-apiserver "$VERSION"
build kube-controller-manager apiserver k8s.io/kubernetes/cmd/kube-controller-manager "$VERSION"
build node-agent node-agent . ""
echo done
