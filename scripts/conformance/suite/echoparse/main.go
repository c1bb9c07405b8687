// echo-parse reads an echo client's output on stdin and prints, as JSON, what the conformance suite's own parser
// (sigs.k8s.io/gateway-api/conformance/utils/echo.ParseResponse) makes of it: one object for the whole output (what
// a single request's check reads) and one per blank-line-separated block with a Hostname or StatusCode (what
// RequestBatch reads, as its unexported parseMultipleResponses does). test/conformance/echo.test.ts runs it on the
// output of sandbox/echo/client.mjs.
package main

import (
	"encoding/json"
	"io"
	"os"
	"strings"

	"sigs.k8s.io/gateway-api/conformance/utils/echo"
)

type parsed struct {
	Code, Hostname, Host, URL, Method, Protocol, Version, Port, IP string
	RequestHeaders, ResponseHeaders                               map[string][]string
}

func view(r echo.Response) parsed {
	return parsed{r.Code, r.Hostname, r.Host, r.URL, r.Method, r.Protocol, r.Version, r.Port, r.IP, r.RequestHeaders, r.ResponseHeaders}
}

func main() {
	in, err := io.ReadAll(os.Stdin)
	if err != nil {
		os.Exit(1)
	}
	out := struct {
		Whole parsed
		Batch []parsed
	}{Whole: view(echo.ParseResponse(string(in))), Batch: []parsed{}}
	// The same split as utils/echo's parseMultipleResponses.
	for _, section := range strings.Split(string(in), "\n\n") {
		section = strings.TrimSpace(section)
		if section == "" {
			continue
		}
		r := echo.ParseResponse(section)
		if r.Hostname != "" || r.Code != "" {
			out.Batch = append(out.Batch, view(r))
		}
	}
	_ = json.NewEncoder(os.Stdout).Encode(out)
}
