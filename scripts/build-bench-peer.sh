#!/usr/bin/env bash
# Builds the Go side of the side-by-side benchmark (bench/peer: go-control-plane's server, and the ADS clients)
# into .cache/bench-peer, pinned by bench/peer/go.mod and go.sum. Go's build cache makes a second run quick.
set -euo pipefail
cd "$(dirname "$0")/.."
out=.cache/bench-peer
mkdir -p "$out"
cd bench/peer
go build -trimpath -o "../../$out/gcp-server" ./gcp-server
go build -trimpath -o "../../$out/clients" ./clients
