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
)

var binDir string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "tests/realnode needs root (netns, OVS, containerd, kubelet)")
		return 1
	}
	dir, err := os.MkdirTemp("", "nsx-realnode-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	binDir = dir
	if err := cluster.BuildBinaries(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}
