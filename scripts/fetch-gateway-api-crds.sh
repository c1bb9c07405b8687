#!/usr/bin/env bash
# The Gateway API CRDs mesh-xds installs (HTTPRoute and GRPCRoute, Standard channel), taken byte for byte from the
# Go module sigs.k8s.io/gateway-api through the Go module proxy (`go mod download`, which checks the module's
# checksum against the checksum database), never retyped. deploy/crds/gateway-api.sha256 pins each file's sha256;
# deploy/crds/README.md says where they come from.
#   scripts/fetch-gateway-api-crds.sh            fetch and compare with deploy/crds/ (exit 1 on any difference)
#   scripts/fetch-gateway-api-crds.sh --write    fetch and (re)write deploy/crds/ and the pins (an upgrade: change
#                                                VERSION first, then update README.md and the docs)
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=v1.7.0
MODULE=sigs.k8s.io/gateway-api
FILES=(gateway.networking.k8s.io_httproutes.yaml gateway.networking.k8s.io_grpcroutes.yaml)
PINS=deploy/crds/gateway-api.sha256

# v1.7.0's go.mod asks for Go 1.27: `go mod download` still fetches and verifies the zip, then reports that the
# module needs a newer Go to build (it is not built here), so the zip's path is taken from its JSON answer.
json=$(GOTOOLCHAIN=local GOFLAGS=-mod=mod go mod download -json "$MODULE@$VERSION" || true)
zip=$(printf '%s' "$json" | sed -n 's/^[[:space:]]*"Zip": "\(.*\)",\{0,1\}$/\1/p')
sum=$(printf '%s' "$json" | sed -n 's/^[[:space:]]*"Sum": "\(.*\)",\{0,1\}$/\1/p')
if [ -z "$zip" ] || [ ! -f "$zip" ] || [ ! -f "${zip%.zip}.ziphash" ]; then
  echo "fetch-gateway-api-crds: go mod download $MODULE@$VERSION gave no verified zip:" >&2
  printf '%s\n' "$json" >&2
  exit 1
fi
echo "fetch-gateway-api-crds: $MODULE@$VERSION ($sum)"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for f in "${FILES[@]}"; do
  unzip -p "$zip" "$MODULE@$VERSION/config/crd/standard/$f" > "$tmp/$f"
  grep -q "^    gateway.networking.k8s.io/bundle-version: $VERSION\$" "$tmp/$f" || { echo "fetch-gateway-api-crds: $f has no bundle-version $VERSION" >&2; exit 1; }
  grep -q '^    gateway.networking.k8s.io/channel: standard$' "$tmp/$f" || { echo "fetch-gateway-api-crds: $f is not of the standard channel" >&2; exit 1; }
done
(cd "$tmp" && sha256sum "${FILES[@]}") > "$tmp/pins"

if [ "${1:-}" = --write ]; then
  for f in "${FILES[@]}"; do cp "$tmp/$f" "deploy/crds/$f"; done
  cp "$tmp/pins" "$PINS"
  echo "fetch-gateway-api-crds: wrote ${FILES[*]} and $PINS"
  exit 0
fi
status=0
cmp -s "$tmp/pins" "$PINS" || { echo "fetch-gateway-api-crds: $PINS differs from $MODULE@$VERSION:" >&2; diff "$PINS" "$tmp/pins" >&2 || true; status=1; }
for f in "${FILES[@]}"; do
  cmp -s "$tmp/$f" "deploy/crds/$f" || { echo "fetch-gateway-api-crds: deploy/crds/$f differs from $MODULE@$VERSION" >&2; status=1; }
done
[ $status = 0 ] && echo "fetch-gateway-api-crds: deploy/crds/ holds $MODULE@$VERSION's files unchanged"
exit $status
