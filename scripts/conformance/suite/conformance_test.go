// The Gateway API conformance suite (sigs.k8s.io/gateway-api/conformance v1.7.0), unchanged: its own flags
// (--conformance-profiles, --supported-features, --namespace-labels, --report-output, ...) and its own tests, plus
// mesh-xds's own tests in the suite's style (test/conformance/mesh: MeshHTTPRouteRetry), appended to the suite's
// list and run the same way (their manifests served beside the suite's).
// scripts/conformance/build.sh compiles this into .cache/conformance/conformance.test; sandbox/conformance.ts runs it.
package conformance_test

import (
	"testing"

	"sigs.k8s.io/gateway-api/conformance"
	"sigs.k8s.io/gateway-api/conformance/tests"
	"sigs.k8s.io/gateway-api/conformance/utils/suite"

	meshtests "mesh-xds.local/conformance/meshtests"
)

func TestConformance(t *testing.T) {
	for _, test := range meshtests.MeshConformanceTests {
		if test.ShortName == meshtests.MeshHTTPRouteRetry.ShortName {
			// The portable test, then mesh-xds's companion check of the sidecar's counters (same route, same run).
			portable := test.Test
			test.Test = func(t *testing.T, s *suite.ConformanceTestSuite) {
				portable(t, s)
				meshtests.MeshXDSRetrySidecarStats(t, s)
			}
		}
		tests.ConformanceTests = append(tests.ConformanceTests, test)
	}
	opts := conformance.DefaultOptions(t)
	opts.ManifestFS = append(opts.ManifestFS, meshtests.Manifests)
	conformance.RunConformanceWithOptions(t, opts)
}
