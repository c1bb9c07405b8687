#!/usr/bin/env bash
# Builds the Gateway API conformance suite (sigs.k8s.io/gateway-api/conformance v1.7.0, unchanged, pinned by
# scripts/conformance/suite/go.sum) into .cache/conformance/conformance.test, and echo-parse (the suite's own echo
# output parser, for test/conformance/echo.test.ts) beside it. Once per stamp (go.sum and the sources here): a no-op
# when both are there. `--check` only says (exit status) whether they are.
#
# v1.7.0 needs Go 1.27: the go command fetches go1.27.3 from the Go module proxy (GOTOOLCHAIN below, as every shell
# that builds it needs). The suite's shared code imports sigs.k8s.io/gateway-api-conformance-images, which the proxy
# refuses ("not available"); scripts/conformance/images is the stand-in (see its go.mod), assembled here under
# .cache/conformance/images with the generated gRPC echo client code of sigs.k8s.io/gateway-api@v1.4.1.
set -uo pipefail
cd "$(dirname "$0")/../.."
export GOTOOLCHAIN=go1.27.3
OUT=.cache/conformance
stamp() { echo "$OUT/.built-$(cat scripts/conformance/suite/go.sum scripts/conformance/suite/go.mod scripts/conformance/suite/*.go test/conformance/mesh/go.mod test/conformance/mesh/*.go test/conformance/mesh/*.yaml scripts/conformance/suite/echoparse/*.go scripts/conformance/images/go.mod scripts/conformance/images/echo-basic/*/*.go | sha256sum | cut -c1-16)"; }
built() { [ -x "$OUT/conformance.test" ] && [ -x "$OUT/echo-parse" ] && [ -f "$OUT/manifests/mesh.yaml" ] && [ -f "$(stamp)" ]; }
if [ "${1:-}" = --check ]; then built; exit; fi
built && { echo "conformance suite: built ($OUT/conformance.test)"; exit 0; }
# One build at a time (install-real-parts.sh's in the background, `npm run conformance`'s in the foreground): the
# second waits for the first, then finds the suite built.
mkdir -p "$OUT"
exec 9> "$OUT/.lock"
flock 9
built && { echo "conformance suite: built ($OUT/conformance.test)"; exit 0; }

started=$SECONDS
mkdir -p "$OUT"
echo "building the conformance suite at $(date +%s)"
rm -rf "$OUT/images"
cp -r scripts/conformance/images "$OUT/images"
tmp=$(mktemp -d)
v141=$(cd "$tmp" && go mod download -json sigs.k8s.io/gateway-api@v1.4.1 | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
rmdir "$tmp"
[ -d "$v141/conformance/echo-basic/grpcechoserver" ] || { echo "building the conformance suite failed: sigs.k8s.io/gateway-api@v1.4.1 did not download"; exit 1; }
mkdir -p "$OUT/images/echo-basic/grpcechoserver"
cp "$v141"/conformance/echo-basic/grpcechoserver/*.go "$OUT/images/echo-basic/grpcechoserver/"
chmod -R u+w "$OUT/images"

cd scripts/conformance/suite
export GOFLAGS=-mod=readonly
go test -c -trimpath -ldflags="-s -w" -o "../../../$OUT/conformance.test" . || { echo "building the conformance suite failed"; exit 1; }
go build -trimpath -ldflags="-s -w" -o "../../../$OUT/echo-parse" ./echoparse || { echo "building echo-parse failed"; exit 1; }
# The suite's mesh manifests (embedded in the binary), also as files: test/conformance/kube-mesh.test.ts applies them.
suite_dir=$(go list -m -f '{{.Dir}}' sigs.k8s.io/gateway-api/conformance) || { echo "go list of the suite's module failed"; exit 1; }
rm -rf "../../../$OUT/manifests" && mkdir -p "../../../$OUT/manifests/tests"
cp "$suite_dir/mesh/manifests.yaml" "../../../$OUT/manifests/mesh.yaml" && cp "$suite_dir"/tests/mesh/*.yaml "../../../$OUT/manifests/tests/"
chmod -R u+w "../../../$OUT/manifests"
cd ../../..
rm -f "$OUT"/.built-*
touch "$(stamp)"
echo "conformance $((SECONDS - started))" >> "$OUT/build-times"
echo "built the conformance suite in $((SECONDS - started)) s"
