// The Gateway API conformance suite (sigs.k8s.io/gateway-api/conformance v1.7.0), unchanged: its own flags
// (--conformance-profiles, --supported-features, --namespace-labels, --report-output, ...) and its own tests.
// scripts/conformance/build.sh compiles this into .cache/conformance/conformance.test; scripts/conformance/run.ts runs it.
package conformance_test

import (
	"testing"

	"sigs.k8s.io/gateway-api/conformance"
)

func TestConformance(t *testing.T) {
	conformance.RunConformance(t)
}
