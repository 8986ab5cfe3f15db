// Package e2e drives the real binaries (nsx, nsx-node-agent) against a real
// kube-apiserver and etcd, real OVS and real network namespaces, through
// libcni exactly as a container runtime does.
package e2e

import (
	"fmt"
	"os"
	"testing"

	"github.com/nsx-ujo/nsx-ujo/tests/cluster"
	"github.com/nsx-ujo/nsx-ujo/tests/harness"
)

var (
	api    *harness.APIServer
	binDir string // nsx, loopback, nsx-node-agent, ...
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if code, ok := harness.MainRequiresRoot("tests/e2e"); !ok {
		return code
	}
	dir, cleanup, err := cluster.BinariesForMain("tests/e2e", "netns, OVS")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer cleanup()
	binDir = dir
	s, stop, err := harness.StartAPIServerMain()
	if err != nil {
		fmt.Fprintln(os.Stderr, "kube-apiserver:", err)
		return 1
	}
	defer stop()
	api = s
	return m.Run()
}
