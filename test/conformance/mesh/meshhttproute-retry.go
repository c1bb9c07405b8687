/*
Copyright 2026 The Kubernetes Authors.

Licensed under the Apache License, Version 2.0 (the "License");
you may not use this file except in compliance with the License.
You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software
distributed under the License is distributed on an "AS IS" BASIS,
WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
See the License for the specific language governing permissions and
limitations under the License.
*/

package meshtests

import (
	"fmt"
	"testing"

	"sigs.k8s.io/gateway-api/conformance/utils/echo"
	"sigs.k8s.io/gateway-api/conformance/utils/http"
	"sigs.k8s.io/gateway-api/conformance/utils/suite"
	"sigs.k8s.io/gateway-api/conformance/utils/tlog"
	"sigs.k8s.io/gateway-api/pkg/features"
)

// SupportMeshHTTPRouteRetry: an HTTPRoute's retry (codes, attempts, backoff) on a mesh route. Upstream, it would sit
// in pkg/features/mesh.go among the MESH-HTTP extended features.
const SupportMeshHTTPRouteRetry features.FeatureName = "MeshHTTPRouteRetry"

func init() {
	MeshConformanceTests = append(MeshConformanceTests, MeshHTTPRouteRetry)
}

// The echo app (echo-advanced, Istio's echo) answers `?codes=503:1,200:1` with 503 or 200, each drawn at random
// with even odds, and keeps no state between requests: so what retries do is read from the share of failures in a
// sample. Without a retry half the answers are 503; with `attempts: 2` a request fails only when all three tries do,
// 1 in 8. A sample of retrySample requests falls on the wrong side of retrySplit in fewer than 1 in 10^4 samples.
//
// The requests go retryConcurrency at a time: an implementation may bound the retries in flight to a backend (a
// retry budget, GEP-3388; Envoy's circuit breaker allows 3 by default), and a burst of failing requests above that
// bound would see fewer retries than attempts allows, which is not what this test checks.
const (
	retrySample      = 99
	retryConcurrency = 3
	retrySplit       = 0.3
)

var MeshHTTPRouteRetry = suite.ConformanceTest{
	ShortName:   "MeshHTTPRouteRetry",
	Description: "An HTTPRoute on a Service with a retry policy retries the codes it names, up to its attempts, and no others",
	Manifests:   []string{"tests/mesh/meshhttproute-retry.yaml"},
	Features: []features.FeatureName{
		features.SupportMesh,
		features.SupportHTTPRoute,
		SupportMeshHTTPRouteRetry,
	},
	Test: func(t *testing.T, s *suite.ConformanceTestSuite) {
		ns := suite.MeshNamespace
		client := echo.ConnectToApp(t, s, echo.MeshAppEchoV1)

		// The route is in force: both rules reach echo-v1.
		for _, path := range []string{"/retry", "/no-retry"} {
			client.MakeRequestAndExpectEventuallyConsistentResponse(t, http.ExpectedResponse{
				Request:   http.Request{Host: "echo", Path: path},
				Response:  http.Response{StatusCode: 200},
				Backend:   "echo-v1",
				Namespace: ns,
			}, s.TimeoutConfig)
		}

		t.Run("a backend that answers 503 every time: the client gets the 503 once the attempts are spent", func(t *testing.T) {
			client.MakeRequestAndExpectEventuallyConsistentResponse(t, http.ExpectedResponse{
				Request:   http.Request{Host: "echo", Path: "/retry?codes=503"},
				Response:  http.Response{StatusCode: 503},
				Backend:   "echo-v1",
				Namespace: ns,
			}, s.TimeoutConfig)
		})

		cases := []struct {
			name, path string
			code       int
			retried    bool
		}{
			{"503 is retried", "/retry?codes=503:1,200:1", 503, true},
			{"503 without a retry policy is not retried", "/no-retry?codes=503:1,200:1", 503, false},
			{"500, a code the policy does not name, is not retried", "/retry?codes=500:1,200:1", 500, false},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				expectFailureShare(t, client, tc.path, tc.code, tc.retried)
			})
		}
	},
}

// expectFailureShare sends retrySample requests to path, retryConcurrency at a time, and expects the share of `code`
// answers below retrySplit when retried, above it when not. The route is in force already (the test checked it), so
// one sample decides.
func expectFailureShare(t *testing.T, client echo.MeshPod, path string, code int, retried bool) {
	t.Helper()
	responses := requestsInTurn(t, client, path, retrySample)
	failed := 0
	for _, r := range responses {
		switch r.Code {
		case "200":
		case fmt.Sprint(code):
			failed++
		default:
			tlog.Fatalf(t, "%s answered %s, want 200 or %d", path, r.Code, code)
		}
	}
	share := float64(failed) / float64(len(responses))
	want := map[bool]string{true: "below", false: "above"}[retried]
	if retried != (share < retrySplit) {
		tlog.Fatalf(t, "%s: %d of %d answered %d, want a share %s %.2f", path, failed, len(responses), code, want, retrySplit)
	}
	tlog.Logf(t, "%s: %d of %d answered %d (a share %s %.2f)", path, failed, len(responses), code, want, retrySplit)
}

// requestsInTurn sends n requests from the client pod to echo at path, in batches of retryConcurrency, one batch
// after the other; a batch that fails to run (the client's exec or its output) fails the test.
func requestsInTurn(t *testing.T, client echo.MeshPod, path string, n int) []echo.Response {
	t.Helper()
	var all []echo.Response
	for len(all) < n {
		count := min(retryConcurrency, n-len(all))
		rs, err := client.RequestBatch(t, http.ExpectedResponse{
			Request:   http.Request{Host: "echo", Path: path},
			Namespace: suite.MeshNamespace,
		}, count)
		if err != nil {
			tlog.Fatalf(t, "%s: %v", path, err)
		}
		all = append(all, rs...)
	}
	return all
}
