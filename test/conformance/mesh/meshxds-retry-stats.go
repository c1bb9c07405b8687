// mesh-xds only, not for upstream: MeshHTTPRouteRetry's companion check, read from the Envoy sidecar of the client
// pod (its admin on 127.0.0.1:15000 inside the pod, which the sidecar's iptables leave alone). Where the portable
// test can only read the share of failures, Envoy's counters say exactly how many retries were made and how long the
// backoff held the requests. scripts/conformance/suite/conformance_test.go runs it at the end of MeshHTTPRouteRetry.

package meshtests

import (
	"regexp"
	"strconv"
	"testing"
	"time"

	"sigs.k8s.io/gateway-api/conformance/utils/echo"
	"sigs.k8s.io/gateway-api/conformance/utils/http"
	"sigs.k8s.io/gateway-api/conformance/utils/suite"
	"sigs.k8s.io/gateway-api/conformance/utils/tlog"
)

const (
	sidecarAdmin = "127.0.0.1:15000"
	statsBatch   = 21
	// With backoff 100ms Envoy waits a random time below 100 ms before the first retry and below 300 ms before the
	// second: 200 ms on average. The mean latency of statsBatch requests that are retried twice stays above this
	// floor in all but about 1 in 10^6 batches (a lower bound only: a slow machine can only add to it).
	backoffFloor = 100 * time.Millisecond
)

var (
	retryCounter = regexp.MustCompile(`(?m)\] cluster\.[^ ]+\.upstream_rq_retry: (\d+)$`)
	latencyField = regexp.MustCompile(`(?m)^\[\d+\] Latency=(\S+)$`)
)

// MeshXDSRetrySidecarStats checks what the sidecar counts: two retries for each request answered 503 every time,
// none for one answered 500, and the requests held by the backoff. The requests go 3 at a time as in
// MeshHTTPRouteRetry: mesh-xds's default retry budget (20% of active requests, at least 3 retries in flight) would
// refuse some retries of a larger burst (upstream_rq_retry_overflow), as the first run of 20 at once showed.
func MeshXDSRetrySidecarStats(t *testing.T, s *suite.ConformanceTestSuite) {
	client := echo.ConnectToApp(t, s, echo.MeshAppEchoV1)
	retries := func() int {
		t.Helper()
		rs, err := client.RequestBatch(t, http.ExpectedResponse{
			Request:   http.Request{Host: sidecarAdmin, Path: "/stats?filter=upstream_rq_retry$"},
			Namespace: suite.MeshNamespace,
		}, 1)
		if err != nil {
			tlog.Fatalf(t, "reading the sidecar's stats: %v", err)
		}
		n := 0
		for _, m := range retryCounter.FindAllStringSubmatch(rs[0].RawContent, -1) {
			v, _ := strconv.Atoi(m[1])
			n += v
		}
		return n
	}
	send := func(path, code string) []echo.Response {
		t.Helper()
		rs := requestsInTurn(t, client, path, statsBatch)
		for _, r := range rs {
			if r.Code != code {
				tlog.Fatalf(t, "%s answered %s, want %s", path, r.Code, code)
			}
		}
		return rs
	}

	t.Run("sidecar stats: 503 every time is retried exactly attempts times, after the backoff", func(t *testing.T) {
		before := retries()
		rs := send("/retry?codes=503", "503")
		if got, want := retries()-before, 2*statsBatch; got != want {
			tlog.Fatalf(t, "upstream_rq_retry grew by %d for %d requests, want %d (attempts: 2)", got, statsBatch, want)
		}
		var total time.Duration
		for _, r := range rs {
			m := latencyField.FindStringSubmatch(r.RawContent)
			if m == nil {
				tlog.Fatalf(t, "no Latency= in %q", r.RawContent)
			}
			d, err := time.ParseDuration(m[1])
			if err != nil {
				tlog.Fatalf(t, "Latency=%s: %v", m[1], err)
			}
			total += d
		}
		if mean := total / time.Duration(len(rs)); mean < backoffFloor {
			tlog.Fatalf(t, "mean latency %v of requests retried twice, want at least %v (backoff: 100ms)", mean, backoffFloor)
		} else {
			tlog.Logf(t, "%d requests retried twice, mean latency %v", len(rs), mean)
		}
	})
	t.Run("sidecar stats: 500 is not retried", func(t *testing.T) {
		before := retries()
		send("/retry?codes=500", "500")
		if got := retries() - before; got != 0 {
			tlog.Fatalf(t, "upstream_rq_retry grew by %d for %d requests answered 500, want 0", got, statsBatch)
		}
	})
}
