// mesh-xds's own tests in the style of the Gateway API conformance suite (see main.go); the suite's build
// (scripts/conformance/suite/go.mod) uses this directory through a replace.
module mesh-xds.local/conformance/meshtests

go 1.27.0

require (
	sigs.k8s.io/gateway-api v1.7.0
	sigs.k8s.io/gateway-api/conformance v1.7.0
)
