// Package udpechoserver holds the answer the conformance suite's UDPRoute test (Gateway only) parses. Written here,
// not copied; mesh-xds runs no test that uses it.
package udpechoserver

// EchoResponse is the JSON a UDP echo server answers with.
type EchoResponse struct {
	Namespace string `json:"namespace"`
	Pod       string `json:"pod"`
}
