package realnode

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nsx-ujo/nsx-ujo/tests/cluster"
	"github.com/nsx-ujo/nsx-ujo/tests/harness"
	"github.com/nsx-ujo/nsx-ujo/tests/images"
)

// TestInstallThroughDeploy installs nsx-ujo as the README's "Install on a
// cluster" says: the image of `make image` imported into every node's
// containerd, `kubectl apply -k` of deploy/ (through tests/cluster/overlay,
// which only adapts it to this machine), each node with its own host
// paths. The DaemonSets' containers wire a Deployment's pods, which reach
// each other through a ClusterIP. An upgrade to an image of a higher
// version (kubectl set image) upgrades the CNI files while a connection
// through the ClusterIP stays open; a lower version does not downgrade
// them. Then the ConfigMap says dataplane = ebpf, a rollout restart of the
// node DaemonSet applies it, and new pods work the same on eBPF.
func TestInstallThroughDeploy(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 2, Dataplane: "ovs", BinDir: binDir, RealNodes: true, Daemons: cluster.DaemonsDeployLater})
	before := map[string]string{}
	for _, n := range c.Nodes {
		before[n.Name] = nodeSnapshot(t, n)
	}
	c.Install(t, "ovs")
	checkDeploymentPods(t, c, "web")
	checkDataplane(t, c, "ovs")
	for _, n := range c.Nodes {
		if v := installedVersion(t, n); v != cluster.DeployVersion {
			t.Fatalf("%s: installed CNI version %q, want %s", n.Name, v, cluster.DeployVersion)
		}
	}

	// Upgrade under a held connection: node-1's client to the replicas on
	// node-2, through the ClusterIP; both nodes' pods are replaced.
	svc, err := c.Client.CoreV1().Services("web").Get(context.Background(), "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	heldConnection(t, c, "web", "holder", c.Nodes[0].Name, svc.Spec.ClusterIP+":80")
	const higher = "0.2.0"
	tarball, err := cluster.BuildImage(t.TempDir(), higher)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range c.Nodes {
		n.ImportImage(t, tarball)
	}
	answered, _, _ := holderAnswers(t, c, "web", "holder")
	setImage(t, c, higher)
	time.Sleep(3 * time.Second) // answers after the last restart
	times, backends, phase := holderAnswers(t, c, "web", "holder")
	if phase != corev1.PodRunning || len(backends) != 1 || len(times) <= len(answered)+10 {
		t.Fatalf("the connection held across the upgrade: pod %s, answered by %v, %d answers before and %d after: want one open connection answered by one backend",
			phase, backends, len(answered), len(times))
	}
	t.Logf("upgrade to %s under a held connection: %d answers, longest gap %s, never broken", higher, len(times), longestGap(times))
	for _, n := range c.Nodes {
		if v := installedVersion(t, n); v != higher {
			t.Errorf("%s: installed CNI version %q after the upgrade, want %s", n.Name, v, higher)
		}
	}
	setImage(t, c, cluster.DeployVersion)
	for _, n := range c.Nodes {
		if v := installedVersion(t, n); v != higher {
			t.Errorf("%s: installed CNI version %q after rolling back the image to %s: want %s kept (no downgrade)", n.Name, v, cluster.DeployVersion, higher)
		}
	}
	checkDeploymentPods(t, c, "web-upgraded")

	c.ConfigureDeploy(t, "ebpf")
	c.Kubectl(t, "--namespace", "nsx-system", "rollout", "restart", "daemonset/nsx-node-agent")
	// The rollout replaces one node's pod at a time (maxUnavailable 1).
	time.Sleep(2 * time.Second)
	c.WaitDeployed(t, 5*time.Minute)
	checkDataplane(t, c, "ebpf")
	checkDeploymentPods(t, c, "web-ebpf")

	checkRBAC(t, c)

	// Removal (deploy/README.md): the workloads go, then the DaemonSets,
	// then deploy/cleanup runs every component's cleanup on each node,
	// then the rest of deploy/ goes. The nodes are as before the install.
	for _, ns := range []string{"web", "web-upgraded", "web-ebpf"} {
		c.Kubectl(t, "delete", "namespace", ns, "--wait=true", "--timeout=3m")
	}
	c.Kubectl(t, "--namespace", "nsx-system", "delete", "daemonset", "nsx-node-agent", "nsx-ncp-bootstrap",
		"--cascade=foreground", "--wait=true", "--timeout=3m")
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	cleanup := filepath.Join(root, "deploy/cleanup")
	c.Kubectl(t, "apply", "-k", cleanup)
	c.Kubectl(t, "--namespace", "nsx-system", "rollout", "status", "daemonset/nsx-node-cleanup", "--timeout=3m")
	c.Kubectl(t, "delete", "-k", cleanup, "--cascade=foreground", "--wait=true", "--timeout=3m")
	c.DeleteDeploy(t)
	for _, n := range c.Nodes {
		if after := nodeSnapshot(t, n); after != before[n.Name] {
			t.Errorf("%s after removal differs from before the install:\n%s", n.Name, lineDiff(before[n.Name], after))
		}
	}
}

// rareGrants are what deploy/'s ClusterRole grants for what this test
// does not make happen, each with where the code uses it.
var rareGrants = map[string]string{
	"create events": "nsx-kube-proxy records a Warning on a Service whose health check port cannot be opened or whose frontend the dataplane refused (pkg/proxy/proxier.go)",
	"patch events":  "the event recorder patches the count of a repeated event instead of creating another",
}

// checkRBAC runs nsxctl where the README says, in each node's
// nsx-node-agent container, then reads what deploy/'s service accounts
// asked of the API during the whole test: nothing was denied (the
// ClusterRole holds all the code uses), and everything the ClusterRole
// grants was used (it holds no more), but rareGrants.
func checkRBAC(t *testing.T, c *cluster.Cluster) {
	t.Helper()
	pods, err := c.Client.CoreV1().Pods("nsx-system").List(context.Background(), metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=nsx-node-agent"})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		for _, args := range [][]string{{"status"}, {"services"}, {"pods"}} {
			c.Kubectl(t, append([]string{"--namespace", "nsx-system", "exec", p.Name, "-c", "nsx-node-agent", "--", "nsxctl"}, args...)...)
		}
	}
	reqs, err := c.API.AuditRequests()
	if err != nil {
		t.Fatal(err)
	}
	used := map[string]bool{}
	for _, r := range reqs {
		if r.Resource == "" { // /version, /api discovery: every client may
			continue
		}
		res := r.Resource
		if r.Subresource != "" {
			res += "/" + r.Subresource
		}
		if r.APIGroup != "" {
			res += "." + r.APIGroup
		}
		if r.Code == http.StatusForbidden {
			t.Errorf("deploy/'s RBAC denied %s: %s %s %s/%s", r.User, r.Verb, res, r.Namespace, r.Name)
		}
		used[r.Verb+" "+res] = true
	}
	role, err := c.Client.RbacV1().ClusterRoles().Get(context.Background(), "nsx-node-agent", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, rule := range role.Rules {
		for _, g := range rule.APIGroups {
			for _, res := range rule.Resources {
				if g != "" {
					res += "." + g
				}
				for _, v := range rule.Verbs {
					grant := v + " " + res
					if !used[grant] && rareGrants[grant] == "" {
						t.Errorf("deploy/'s ClusterRole nsx-node-agent grants %q, which nothing used during the test: drop it, or name where the code needs it in rareGrants", grant)
					}
				}
			}
		}
	}
	t.Logf("deploy/'s service accounts used: %v", slices.Sorted(maps.Keys(used)))
}

// nodeSnapshot is what an install changes on a node and its removal must
// put back: links, addresses, routes, nftables, the bpffs, and the host
// paths nsx-ujo writes.
func nodeSnapshot(t *testing.T, n *cluster.Node) string {
	t.Helper()
	var b strings.Builder
	for _, args := range [][]string{
		{"ip", "-o", "link", "show"},
		{"ip", "-o", "addr", "show"},
		{"ip", "-4", "route", "show", "table", "all"},
		{"ip", "-6", "route", "show", "table", "all"},
		{"nft", "list", "ruleset"},
		{"find", "/sys/fs/bpf", "/etc/cni/net.d", "/opt/cni/bin", "/etc/apparmor.d", "/etc/openvswitch", "/var/lib/nsx-ujo",
			"/var/log/nsx-ujo", "/var/run/nsx-ujo", "/var/run/openvswitch"},
	} {
		out, err := n.NS.Exec(context.Background(), args[0], args[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %s: %v\n%s", n.Name, strings.Join(args, " "), err, out)
		}
		// kubelet's own nftables rules count packets.
		out = nftCounter.ReplaceAll(out, []byte("counter"))
		fmt.Fprintf(&b, "$ %s\n%s", strings.Join(args, " "), out)
	}
	return b.String()
}

var nftCounter = regexp.MustCompile(`counter packets \d+ bytes \d+`)

// lineDiff lists the lines only in a (-) and only in b (+).
func lineDiff(a, b string) string {
	count := map[string]int{}
	for _, l := range strings.Split(a, "\n") {
		count[l]++
	}
	for _, l := range strings.Split(b, "\n") {
		count[l]--
	}
	var out []string
	for l, c := range count {
		switch {
		case c > 0:
			out = append(out, "- "+l)
		case c < 0:
			out = append(out, "+ "+l)
		}
	}
	sort.Strings(out)
	return strings.Join(out, "\n")
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

// holderScript keeps one HTTP/1.1 connection to $ADDR open, asks for the
// backend's hostname every 200 ms and prints each answer; it exits (the
// pod fails) as soon as a write fails or an answer takes over 15 s.
const holderScript = `exec 3<>/dev/tcp/${ADDR%:*}/${ADDR#*:} || exit 1
while true; do
  printf 'GET / HTTP/1.1\r\nHost: web\r\n\r\n' >&3 || exit 2
  IFS= read -t 15 -r status <&3 || exit 3
  case "$status" in *" 200 "*) ;; *) echo "status $status"; exit 4;; esac
  len=0
  while IFS= read -t 15 -r line <&3; do
    line=${line%$'\r'}
    [ -z "$line" ] && break
    case "$line" in [Cc]ontent-[Ll]ength:*) len=${line#*: };; esac
  done
  IFS= read -t 15 -r -N "$len" body <&3 || exit 5
  echo "$EPOCHREALTIME $body"
  sleep 0.2
done`

// heldConnection runs a pod on node that holds one connection to addr
// (holderScript); the pod fails when the connection breaks.
func heldConnection(t *testing.T, c *cluster.Cluster, ns, name, node, addr string) {
	t.Helper()
	ctx := context.Background()
	_, err := c.Client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{NodeName: node, RestartPolicy: corev1.RestartPolicyNever,
			Containers: []corev1.Container{{Name: "hold", Image: images.Agnhost, Command: []string{"/bin/bash", "-c", holderScript},
				Env: []corev1.EnvVar{{Name: "ADDR", Value: addr}}}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waitPodReady(t, c, ns, name)
}

// holderAnswers are the answers the holder pod logged: (unix time, backend).
func holderAnswers(t *testing.T, c *cluster.Cluster, ns, name string) (times []float64, backends map[string]bool, phase corev1.PodPhase) {
	t.Helper()
	ctx := context.Background()
	p, err := c.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.Client.CoreV1().Pods(ns).GetLogs(name, &corev1.PodLogOptions{}).DoRaw(ctx)
	if err != nil {
		t.Fatal(err)
	}
	backends = map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		ts, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		times = append(times, ts)
		backends[f[1]] = true
	}
	return times, backends, p.Status.Phase
}

// longestGap is the longest time between two answers.
func longestGap(times []float64) time.Duration {
	var gap float64
	for i := 1; i < len(times); i++ {
		gap = max(gap, times[i]-times[i-1])
	}
	return time.Duration(gap * float64(time.Second))
}

// installedVersion is nsxBuildVersion of the conflist on the node.
func installedVersion(t *testing.T, n *cluster.Node) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(n.HostRoot, "etc/cni/net.d/10-nsx.conflist"))
	if err != nil {
		t.Fatal(err)
	}
	var cl struct {
		Version string `json:"nsxBuildVersion"`
	}
	if err := json.Unmarshal(b, &cl); err != nil {
		t.Fatalf("%s: conflist: %v", n.Name, err)
	}
	return cl.Version
}

// setImage rolls both DaemonSets to nsx-ujo:<v> as an operator would.
func setImage(t *testing.T, c *cluster.Cluster, v string) {
	t.Helper()
	for _, ds := range []string{"nsx-ncp-bootstrap", "nsx-node-agent"} {
		c.Kubectl(t, "--namespace", "nsx-system", "set", "image", "daemonset/"+ds, "*=nsx-ujo:"+v)
	}
	time.Sleep(2 * time.Second)
	c.WaitDeployed(t, 5*time.Minute)
}
