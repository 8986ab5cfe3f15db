// Package realnode runs nsx-ujo under real kubelets and containerd, with a
// real kube-controller-manager and kube-scheduler (cluster.Options
// RealNodes), and the upstream Kubernetes e2e conformance tests against
// that cluster on both dataplanes.
package realnode

import (
	"fmt"
	"os"
	"testing"

	"github.com/nsx-ujo/nsx-ujo/tests/cluster"
	"github.com/nsx-ujo/nsx-ujo/tests/harness"
)

var binDir string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if code, ok := harness.MainRequiresRoot("tests/realnode"); !ok {
		return code
	}
	dir, cleanup, err := cluster.BinariesForMain("tests/realnode", "netns, OVS, containerd, kubelet")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer cleanup()
	binDir = dir
	return m.Run()
}
