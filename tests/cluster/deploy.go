package cluster

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nsx-ujo/nsx-ujo/internal/nsximage"
	"github.com/nsx-ujo/nsx-ujo/tests/harness"
)

// Daemons says how a cluster runs nsx-ujo on its nodes.
type Daemons string

const (
	// DaemonsProcesses (the default): the test starts nsx-ovs,
	// nsx-node-agent and nsx-kube-proxy as processes in each node's
	// namespace, and installs the CNI with nsx-ncp-bootstrap.
	DaemonsProcesses Daemons = "processes"
	// DaemonsFromDeploy (RealNodes only): as an operator installs it. The
	// image from `make image` is imported into every node's containerd and
	// deploy/ is applied with `kubectl apply -k` through the test overlay
	// (tests/cluster/overlay); kubelet runs the DaemonSets. Each node has
	// its own mount namespace with its own host paths (DeployHostPaths),
	// so the manifests' hostPath volumes mean what they do on a real node.
	DaemonsFromDeploy Daemons = "deploy"
	// DaemonsDeployLater: nodes as with DaemonsFromDeploy, nothing
	// installed; the test calls Install.
	DaemonsDeployLater Daemons = "deploy-later"
)

// Install imports the image of `make image` (DeployVersion) into every
// node's containerd, applies deploy/ with the dataplane and waits until it
// runs on every node.
func (c *Cluster) Install(t testing.TB, dataplane string) {
	t.Helper()
	c.progress("make image %s, imported into every node's containerd", DeployVersion)
	tarball, err := DeployImage(c.opts.BinDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range c.Nodes {
		n.ImportImage(t, tarball)
	}
	c.progress("kubectl apply -k deploy/ (tests/cluster/overlay), dataplane %s", dataplane)
	c.ConfigureDeploy(t, dataplane)
	c.WaitDeployed(t, 5*time.Minute)
}

// DeployVersion is the version of the image a deploy-mode cluster runs.
const DeployVersion = "0.1.0"

// DeployHostPaths are the host paths a deploy-mode node has of its own:
// every hostPath of deploy/ that nsx-ujo writes or that differs per
// node, the pod network namespaces, and a bpffs of its own.
func (n *Node) DeployHostPaths() []harness.HostPath {
	return []harness.HostPath{
		{Path: "/etc/cni/net.d", Dir: filepath.Join(n.HostRoot, "etc/cni/net.d")},
		{Path: "/opt/cni/bin", Dir: filepath.Join(n.HostRoot, "opt/cni/bin")},
		{Path: "/etc/apparmor.d", Dir: filepath.Join(n.HostRoot, "etc/apparmor.d")},
		{Path: "/var/run/openvswitch", Dir: n.RunDir},
		{Path: "/var/run/nsx-ujo", Dir: filepath.Join(n.RunDir, "nsx")},
		{Path: "/var/run/netns", Dir: filepath.Join(n.Dir, "netns")},
		{Path: "/etc/openvswitch", Dir: filepath.Join(n.HostRoot, "etc/openvswitch")},
		{Path: "/var/lib/nsx-ujo", Dir: filepath.Join(n.HostRoot, "var/lib/nsx-ujo")},
		{Path: "/var/log/nsx-ujo", Dir: filepath.Join(n.HostRoot, "var/log/nsx-ujo")},
		{Path: "/sys/fs/bpf", FSType: "bpf"},
	}
}

// deployImage builds the nsx-ujo image once per test binary.
var deployImage struct {
	sync.Once
	path string
	err  error
}

// DeployImage returns the tarball of `make image` at DeployVersion, built
// into binDir by the first call of this test binary.
func DeployImage(binDir string) (string, error) {
	deployImage.Do(func() {
		deployImage.path, deployImage.err = BuildImage(binDir, DeployVersion)
	})
	return deployImage.path, deployImage.err
}

// BuildImage builds the nsx-ujo image at version v into dir, as `make
// image VERSION=v` does (the .debs are cached under _output/image/debs).
func BuildImage(dir, v string) (string, error) {
	root, err := harness.RepoRoot()
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, "nsx-ujo-"+v+".tar")
	err = nsximage.Build(nsximage.Options{Version: v, Source: root, Out: out, DebCache: filepath.Join(root, "_output/image/debs")})
	return out, err
}

// ImportImage imports an image tarball into the node's containerd, as
// `ctr -n k8s.io images import` on a real node.
func (n *Node) ImportImage(t testing.TB, tarball string) {
	t.Helper()
	ctr, err := harness.ToolBinary("ctr")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(ctr, "--address", n.ContainerdSock, "--namespace", "k8s.io", "images", "import", tarball).CombinedOutput(); err != nil {
		t.Fatalf("%s: ctr images import %s: %v\n%s", n.Name, tarball, err, out)
	}
}

// DeployINI is the ncp.ini the test overlay puts into the ConfigMap:
// deploy/'s paths, this machine's userspace datapath, the uplink the
// fabric gives each node, and the API server where the nodes reach it.
func (c *Cluster) DeployINI(dataplane string) string {
	u, _ := url.Parse(c.API.URL)
	hyperbus := "False"
	if c.opts.ConfigSource == FromHyperBus {
		hyperbus = "True"
	}
	return fmt.Sprintf(`[DEFAULT]
debug = False
[coe]
cluster = k8scluster
node_type = HOSTVM
[k8s]
# The API server as the nodes of this machine reach it (the kubernetes
# Service's endpoint is the host's loopback, which pods cannot reach).
apiserver_host_ip = %s
apiserver_host_port = %s
ca_file = /var/run/secrets/kubernetes.io/serviceaccount/ca.crt
client_token_file = /var/run/secrets/kubernetes.io/serviceaccount/token
[nsx_node_agent]
ovs_bridge = br-int
ovs_uplink_port = eth0
# No OVS kernel module on this machine.
ovs_datapath_type = netdev
enable_hyperbus = %s
proc_mount_path_prefix = /host
config_retry_timeout = 30
ovs_run_dir = /var/run/openvswitch
ovs_db_dir = /etc/openvswitch
state_dir = /var/lib/nsx-ujo
cni_socket = /var/run/nsx-ujo/cni.sock
audit_interval = 2
[nsx_kube_proxy]
dataplane = %s
sync_period = 30
healthz_bind_address = 0.0.0.0:10256
metrics_bind_address = 127.0.0.1:10249
bpf_pin_dir = /sys/fs/bpf/nsx-ujo
`, u.Hostname(), u.Port(), hyperbus, dataplane)
}

// ConfigureDeploy applies deploy/ with the dataplane in its ConfigMap
// (kubectl apply -k; the running pods keep their configuration until
// they restart) and tells the nodes' nsxctl.
func (c *Cluster) ConfigureDeploy(t testing.TB, dataplane string) {
	t.Helper()
	c.ApplyDeploy(t, c.DeployINI(dataplane))
	for _, n := range c.Nodes {
		n.writeDeployINI(t, dataplane)
	}
}

// writeDeployINI writes the ncp.ini for nsxctl run beside the node's pods
// (as kubectl exec into the DaemonSet would): the ConfigMap's, with the
// test's kubeconfig.
func (n *Node) writeDeployINI(t testing.TB, dataplane string) {
	t.Helper()
	n.dataplane = dataplane
	n.INI = filepath.Join(n.Dir, "ncp.ini")
	ini := strings.Replace(n.c.DeployINI(dataplane), "[k8s]\n", "[k8s]\nkubeconfig = "+n.c.API.Kubeconfig+"\n", 1)
	if err := os.WriteFile(n.INI, []byte(ini), 0o600); err != nil {
		t.Fatal(err)
	}
}

// ApplyDeploy runs `kubectl apply -k` of the test overlay with the
// ConfigMap's ncp.ini set to ini, as an operator applies deploy/.
func (c *Cluster) ApplyDeploy(t testing.TB, ini string) {
	t.Helper()
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	patch := "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: nsx-node-agent-config\n  namespace: nsx-system\ndata:\n  ncp.ini: |\n"
	for _, l := range strings.Split(strings.TrimRight(ini, "\n"), "\n") {
		patch += "    " + l + "\n"
	}
	// kustomize takes a base by relative path only.
	overlay, err := filepath.Rel(dir, filepath.Join(root, "tests/cluster/overlay"))
	if err != nil {
		t.Fatal(err)
	}
	kust := fmt.Sprintf("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - %s\npatches:\n  - path: ncp-ini.yaml\n", overlay)
	for name, data := range map[string]string{"kustomization.yaml": kust, "ncp-ini.yaml": patch} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	c.Kubectl(t, "apply", "-k", dir)
	c.deployDir = dir
}

// DeleteDeploy runs `kubectl delete -k` of what ApplyDeploy applied last.
func (c *Cluster) DeleteDeploy(t testing.TB) {
	t.Helper()
	c.Kubectl(t, "delete", "-k", c.deployDir, "--ignore-not-found", "--wait=true", "--timeout=3m")
}

// Kubectl runs the real kubectl against the cluster as its admin.
func (c *Cluster) Kubectl(t testing.TB, args ...string) string {
	t.Helper()
	kubectl, err := harness.ToolBinary("kubectl")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(kubectl, append([]string{"--kubeconfig", c.API.Kubeconfig}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// WaitDeployed waits until both DaemonSets run their current pod template
// on every node, ready, and every node is Ready (its CNI answers).
func (c *Cluster) WaitDeployed(t testing.TB, timeout time.Duration) {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		last = c.deployState(ctx)
		if last == "" {
			return
		}
		time.Sleep(time.Second)
	}
	t.Fatalf("deploy/ not rolled out after %s: %s\n%s", timeout, last, c.podReport(ctx))
}

// deployState is "" when rolled out, else what is still missing.
func (c *Cluster) deployState(ctx context.Context) string {
	for _, name := range []string{"nsx-ncp-bootstrap", "nsx-node-agent"} {
		ds, err := c.Client.AppsV1().DaemonSets("nsx-system").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err.Error()
		}
		s := ds.Status
		if s.ObservedGeneration < ds.Generation || s.DesiredNumberScheduled != int32(len(c.Nodes)) ||
			s.UpdatedNumberScheduled != s.DesiredNumberScheduled || s.NumberReady != s.DesiredNumberScheduled ||
			s.NumberAvailable != s.DesiredNumberScheduled {
			return fmt.Sprintf("DaemonSet %s: %d desired, %d updated, %d ready, %d available", name,
				s.DesiredNumberScheduled, s.UpdatedNumberScheduled, s.NumberReady, s.NumberAvailable)
		}
	}
	for _, n := range c.Nodes {
		node, err := c.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			return err.Error()
		}
		for _, cond := range node.Status.Conditions {
			if cond.Type == corev1.NodeReady && cond.Status != corev1.ConditionTrue {
				return fmt.Sprintf("node %s not ready: %s", n.Name, cond.Message)
			}
		}
	}
	return ""
}

// podReport lists nsx-system's pods with their containers' states, for a
// failure message.
func (c *Cluster) podReport(ctx context.Context) string {
	pods, err := c.Client.CoreV1().Pods("nsx-system").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for _, p := range pods.Items {
		fmt.Fprintf(&b, "pod %s on %s: %s\n", p.Name, p.Spec.NodeName, p.Status.Phase)
		for _, cs := range append(append([]corev1.ContainerStatus{}, p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...) {
			fmt.Fprintf(&b, "  %s ready=%v restarts=%d state=%+v last=%+v\n", cs.Name, cs.Ready, cs.RestartCount, cs.State, cs.LastTerminationState)
		}
	}
	return b.String()
}

// ContainerLogs returns the logs of one container of the node's pod of a
// DaemonSet (previous: the last terminated instance's).
func (c *Cluster) ContainerLogs(ctx context.Context, node, app, container string, previous bool) string {
	pods, err := c.Client.CoreV1().Pods("nsx-system").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=" + app,
		FieldSelector: "spec.nodeName=" + node})
	if err != nil || len(pods.Items) == 0 {
		return fmt.Sprintf("no %s pod on %s: %v", app, node, err)
	}
	b, err := c.Client.CoreV1().Pods("nsx-system").GetLogs(pods.Items[0].Name, &corev1.PodLogOptions{Container: container, Previous: previous}).DoRaw(ctx)
	if err != nil {
		return err.Error()
	}
	return string(b)
}
