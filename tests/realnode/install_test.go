package realnode

import (
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/nsx-ujo/nsx-ujo/tests/cluster"
)

// TestInstallThroughDeploy installs nsx-ujo as the README's "Install on a
// cluster" says: the image of `make image` imported into every node's
// containerd, `kubectl apply -k` of deploy/ (through tests/cluster/overlay,
// which only adapts it to this machine), each node with its own host
// paths. The DaemonSets' containers wire a Deployment's pods, which reach
// each other through a ClusterIP. Then the ConfigMap says dataplane =
// ebpf, a rollout restart of the node DaemonSet applies it, and new pods
// work the same on eBPF.
func TestInstallThroughDeploy(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 2, Dataplane: "ovs", BinDir: binDir, RealNodes: true, Daemons: cluster.DaemonsFromDeploy})
	checkDeploymentPods(t, c, "web")
	checkDataplane(t, c, "ovs")

	c.ConfigureDeploy(t, "ebpf")
	c.Kubectl(t, "--namespace", "nsx-system", "rollout", "restart", "daemonset/nsx-node-agent")
	// The rollout replaces one node's pod at a time (maxUnavailable 1).
	time.Sleep(2 * time.Second)
	c.WaitDeployed(t, 5*time.Minute)
	checkDataplane(t, c, "ebpf")
	checkDeploymentPods(t, c, "web-ebpf")
}

// checkDataplane asks nsxctl on every node which dataplanes hold Service
// state: want, and after a switch for a while the previous one too.
func checkDataplane(t *testing.T, c *cluster.Cluster, want string) {
	t.Helper()
	for _, n := range c.Nodes {
		out, code := n.Nsxctl(t, "-o", "json", "status")
		var st struct {
			Dataplane string   `json:"dataplane"`
			Holding   []string `json:"holding"`
		}
		if err := json.Unmarshal([]byte(out), &st); err != nil || code != 0 || st.Dataplane != want || !slices.Contains(st.Holding, want) {
			t.Errorf("%s: nsxctl status (exit %d, %v), want dataplane %s holding its state:\n%s", n.Name, code, err, want, out)
		}
	}
}
