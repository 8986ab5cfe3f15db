//go:build interactive

package realnode

import (
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"github.com/nsx-ujo/nsx-ujo/tests/cluster"
	"github.com/nsx-ujo/nsx-ujo/tests/harness"
)

// Built only with -tags interactive: it waits for Ctrl-C.
//
// TestInteractiveCluster is make cluster: a real-node cluster that stays up
// for kubectl until Ctrl-C, then is torn down like any test's.
func TestInteractiveCluster(t *testing.T) {
	nodes, _ := strconv.Atoi(os.Getenv("NSX_CLUSTER_NODES"))
	if nodes == 0 {
		nodes = 2
	}
	dp := os.Getenv("NSX_CLUSTER_DATAPLANE")
	if dp == "" {
		dp = "ovs"
	}
	progress := func(format string, args ...any) { fmt.Printf("  "+format+"\n", args...) }
	c := cluster.Start(t, cluster.Options{Nodes: nodes, Dataplane: dp, BinDir: binDir, RealNodes: true, Progress: progress})
	kubectl, err := harness.ToolBinary("kubectl")
	if err != nil {
		t.Fatal(err)
	}
	kc := filepath.Join(os.TempDir(), "nsx-ujo-cluster.kubeconfig")
	b, err := os.ReadFile(c.API.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(kc, b, 0o600); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(kc)
	fmt.Printf("\n%d real nodes (kubelet + containerd), dataplane %s, images: agnhost, busybox, pause (no registry).\n", nodes, dp)
	fmt.Printf("  export KUBECONFIG=%s\n  alias kubectl=%s\n  kubectl get nodes -o wide\n", kc, kubectl)
	fmt.Printf("  kubectl create deployment web --image=registry.k8s.io/e2e-test-images/agnhost:2.66.1 --replicas=2 -- /agnhost serve-hostname\n")
	fmt.Printf("Ctrl-C tears it down.\n")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	fmt.Println("tearing down")
}
