// Package meshtests holds mesh-xds's own tests in the style of the Gateway API conformance suite's
// conformance/tests/mesh (same package name, same ConformanceTest shape), run with the suite by
// scripts/conformance/suite/conformance_test.go. The manifests are embedded under the path the tests name.
package meshtests

import (
	"embed"
	"io/fs"
	"strings"

	"sigs.k8s.io/gateway-api/conformance/utils/suite"
)

var MeshConformanceTests []suite.ConformanceTest

//go:embed *.yaml
var manifests embed.FS

// Manifests serves this directory's manifests under the path the tests name them by, tests/mesh/NAME.yaml, as the
// suite's own manifests are named (a ManifestFS for suite.ConformanceOptions).
var Manifests fs.FS = testsMesh{}

type testsMesh struct{}

func (testsMesh) Open(name string) (fs.File, error) {
	rest, ok := strings.CutPrefix(name, "tests/mesh/")
	if !ok || strings.Contains(rest, "/") {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	return manifests.Open(rest)
}
