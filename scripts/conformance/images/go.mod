// A stand-in for sigs.k8s.io/gateway-api-conformance-images, which the Go module proxy refuses ("This module version
// is not available"). The suite's shared code imports three of its packages only for the Gateway (not Mesh) tests'
// clients: echo-basic/grpcechoserver (copied by build.sh from sigs.k8s.io/gateway-api@v1.4.1, where the same generated
// code shipped), and the two small types below. No Mesh test calls any of them.
module sigs.k8s.io/gateway-api-conformance-images

go 1.26.4

require (
	google.golang.org/grpc v1.84.0
	google.golang.org/protobuf v1.36.12
)
