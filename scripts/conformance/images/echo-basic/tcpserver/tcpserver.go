// Package tcpserver holds what the conformance suite's TCP client (utils/tcp, Gateway TCPRoute/TLSRoute tests only)
// reads from the echo-basic TCP server: its greeting and the JSON it answers TEST with. Written here, not copied;
// mesh-xds runs no test that uses it.
package tcpserver

// WelcomeMessage is the line the server greets each connection with.
const WelcomeMessage = "Gateway API Test TCP Server\n"

// TLSAssertions is what the server saw of a TLS handshake.
type TLSAssertions struct {
	ServerName         string `json:"serverName"`
	NegotiatedProtocol string `json:"negotiatedProtocol"`
}

// TCPAssertions is the server's answer to TEST.
type TCPAssertions struct {
	Namespace    string        `json:"namespace"`
	Pod          string        `json:"pod"`
	TLSAssertion TLSAssertions `json:"tls"`
}
