// Package e2e drives the real binaries (nsx, nsx-node-agent) against a real
// kube-apiserver and etcd, real OVS and real network namespaces, through
// libcni exactly as a container runtime does.
package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/nsx-ujo/nsx-ujo/tests/harness"
)

var (
	api    *harness.APIServer
	binDir string // nsx, loopback, nsx-node-agent
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "tests/e2e needs root (netns, OVS)")
		return 1
	}
	dir, err := os.MkdirTemp("", "nsx-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	binDir = dir
	if err := buildBinaries(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	s, stop, err := harness.StartAPIServerMain()
	if err != nil {
		fmt.Fprintln(os.Stderr, "kube-apiserver:", err)
		return 1
	}
	defer stop()
	api = s
	return m.Run()
}

// buildBinaries builds our binaries and the reference loopback plugin the
// way `make build` does, so the test runs what an operator installs.
func buildBinaries(dir string) error {
	root, err := harness.RepoRoot()
	if err != nil {
		return err
	}
	pkgs := map[string]string{
		"nsx":            "./cmd/nsx",
		"nsx-node-agent": "./cmd/nsx-node-agent",
		"loopback":       "github.com/containernetworking/plugins/plugins/main/loopback",
	}
	for name, pkg := range pkgs {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, name), pkg)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %w\n%s", pkg, err, out)
		}
	}
	return nil
}
