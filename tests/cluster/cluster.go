package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/nsx-ujo/nsx-ujo/tests/fabric"
	"github.com/nsx-ujo/nsx-ujo/tests/harness"
)

// ReadyAnnotation marks a pod whose workload runs: the fabric simulator's
// NCP stand-in puts only such pods into EndpointSlices (there is no
// kubelet to report readiness).
const ReadyAnnotation = fabric.ReadyAnnotation

// Options shape a cluster.
type Options struct {
	Nodes     int                // default 2
	Dataplane string             // ovs (default) or ebpf
	BinDir    string             // from BuildBinaries
	API       *harness.APIServer // nil: start one
	// Progress, when set, receives one line per step (make demo prints them).
	Progress func(format string, args ...any)
	// RealNodes adds a real kube-controller-manager and kube-scheduler to
	// the control plane and runs containerd and kubelet on every node:
	// pods are then made with the API (RunPod is for the libcni mode) and
	// started by kubelet. API must be nil: the apiserver is set up for it.
	RealNodes bool
	// ConfigSource is where every node's agent takes pod configs from.
	ConfigSource ConfigSource
	// Daemons: how nsx-ujo runs on the nodes (default DaemonsProcesses;
	// DaemonsFromDeploy needs RealNodes).
	Daemons Daemons
	// APIFront: the nodes' daemons (and nsxctl) reach kube-apiserver
	// through a front the test can make fail (Cluster.Front); processes
	// mode only.
	APIFront bool
	// StateDirSize, when set (tmpfs size, e.g. "16m"), puts each node's
	// state_dir on a tmpfs of its own that a test can fill
	// (Node.FillStateDir); processes mode only.
	StateDirSize string
}

// ConfigSource names a source of pod network configs.
type ConfigSource string

const (
	// FromAnnotation (the default): the NCP stand-in annotates pods.
	FromAnnotation ConfigSource = "annotation"
	// FromHyperBus: the agents run with enable_hyperbus = True and the
	// fabric pushes each node's configs over its HyperBus channel.
	FromHyperBus ConfigSource = "hyperbus"
)

// Cluster is a real kube-apiserver, the fabric simulator and N nodes, each
// a network namespace running the real nsx-ovs, nsx-node-agent and
// nsx-kube-proxy binaries with its own OVS and ncp.ini; the CNI is
// installed per node by the real nsx-ncp-bootstrap.
type Cluster struct {
	API *harness.APIServer
	// Front is the daemons' way to the API with Options.APIFront.
	Front  *harness.APIFront
	Client kubernetes.Interface
	Fabric *fabric.Fabric
	Nodes  []*Node
	// With RealNodes:
	ControllerManager, Scheduler *Process
	DNS                          netip.Addr // CoreDNS, the pods' nameserver
	opts                         Options
	deployDir                    string // the kustomization ApplyDeploy applied last
}

// Node is one cluster node.
type Node struct {
	Name     string
	Index    int
	NS       *harness.NetNS
	Dir      string // ncp.ini, logs, host root, state
	RunDir   string // OVS run dir, CNI socket
	PinDir   string // bpf_pin_dir
	INI      string
	HostRoot string // where nsx-ncp-bootstrap installed the CNI
	CNI      *libcni.CNIConfig
	List     *libcni.NetworkConfigList

	OVS, Agent, Proxy *Process
	HyperBus          *fabric.Channel // with FromHyperBus
	// With RealNodes:
	IP                  netip.Addr // the node's InternalIP
	Containerd, Kubelet *Process
	ContainerdSock      string
	CgroupRoot          string
	dataplane           string
	c                   *Cluster
}

func (c *Cluster) progress(format string, args ...any) {
	if c.opts.Progress != nil {
		c.opts.Progress(format, args...)
	}
}

// Start brings a cluster up; everything is torn down in t's cleanups.
func Start(t testing.TB, o Options) *Cluster {
	t.Helper()
	if o.Nodes == 0 {
		o.Nodes = 2
	}
	if o.Dataplane == "" {
		o.Dataplane = "ovs"
	}
	switch o.ConfigSource {
	case "":
		o.ConfigSource = FromAnnotation
	case FromAnnotation, FromHyperBus:
	default:
		t.Fatalf("cluster: ConfigSource %q: want %q or %q", o.ConfigSource, FromAnnotation, FromHyperBus)
	}
	switch o.Daemons {
	case "":
		o.Daemons = DaemonsProcesses
	case DaemonsProcesses:
	case DaemonsFromDeploy, DaemonsDeployLater:
		if !o.RealNodes {
			t.Fatal("cluster: Daemons deploy needs RealNodes (kubelet runs the DaemonSets)")
		}
	default:
		t.Fatalf("cluster: Daemons %q: want %q or %q", o.Daemons, DaemonsProcesses, DaemonsFromDeploy)
	}
	c := &Cluster{opts: o}
	if o.RealNodes && o.API != nil {
		t.Fatal("cluster: RealNodes starts its own apiserver (Options.API must be nil)")
	}
	if c.API = o.API; c.API == nil {
		c.progress("starting etcd and kube-apiserver %s", harness.KubeVersion)
		ao := harness.APIServerOptions{RealNodes: o.RealNodes, Users: map[string][]string{}, AuditUsers: DeployServiceAccounts}
		for i := 0; i < o.Nodes; i++ {
			ao.Users[nodeUser(nodeName(i))] = []string{"system:nodes"}
		}
		c.API = harness.StartAPIServerWith(t, ao)
	}
	c.Client = c.API.Client(t)
	if o.APIFront {
		c.Front = c.API.StartFront(t)
	}
	c.progress("starting the NSX fabric simulator (hypervisor bridge, router, NCP stand-in)")
	c.Fabric = fabric.Start(t, fabric.Options{Client: c.Client, PodsOnly: o.RealNodes})
	if o.RealNodes {
		// The apiserver reaches kubelets, pods and Services from the
		// fabric's router, which routes to every node and pod subnet.
		c.API.SetClusterDialer(c.Fabric.Router.DialContext)
		c.startControlPlane(t)
		c.startDNS(t)
	}
	for i := 0; i < o.Nodes; i++ {
		c.Nodes = append(c.Nodes, c.startNode(t, i))
	}
	if o.Daemons == DaemonsFromDeploy {
		c.Install(t, o.Dataplane)
	}
	return c
}

func (c *Cluster) startNode(t testing.TB, i int) *Node {
	t.Helper()
	n := &Node{Name: nodeName(i), Index: i, NS: harness.NewNetNS(t), Dir: harness.TempDir(t), dataplane: c.opts.Dataplane, c: c}
	c.progress("%s: network namespace, uplink eth0 to the fabric", n.Name)
	n.IP = c.Fabric.ConnectNode(t, n.NS, "eth0", i).Addr()
	c.API.ExposeIn(t, n.NS)
	if c.Front != nil {
		c.Front.ExposeIn(t, n.NS)
	}
	// Short paths (unix sockets), swept after a crash.
	n.RunDir, n.PinDir, n.HostRoot = harness.TempDir(t), harness.TempDir(t), filepath.Join(n.Dir, "host")
	if c.opts.Daemons == DaemonsFromDeploy || c.opts.Daemons == DaemonsDeployLater {
		// kubelet runs nsx-ujo from deploy/ once every node is up (Start).
		n.NS.OwnHostPaths(t, n.DeployHostPaths())
		n.PinDir = "/sys/fs/bpf/nsx-ujo"
		n.writeDeployINI(t, c.opts.Dataplane)
		n.startKubelet(t, n.IP)
		return n
	}
	if c.opts.StateDirSize != "" {
		n.mountStateDir(t, c.opts.StateDirSize)
	}
	n.writeINI(t, c.opts.Dataplane)

	c.progress("%s: nsx-ncp-bootstrap installs the CNI plugin and conflist", n.Name)
	n.run(t, filepath.Join(c.opts.BinDir, "nsx-ncp-bootstrap"), "install", "--config-file", n.INI, "--host-root", n.HostRoot,
		"--cni-bin-source", filepath.Join(c.opts.BinDir, "nsx"), "--loopback-bin-source", filepath.Join(c.opts.BinDir, "loopback"))
	list, err := libcni.ConfListFromFile(filepath.Join(n.HostRoot, "etc/cni/net.d/10-nsx.conflist"))
	if err != nil {
		t.Fatal(err)
	}
	n.List = list
	n.CNI = libcni.NewCNIConfigWithCacheDir([]string{filepath.Join(n.HostRoot, "opt/cni/bin")}, filepath.Join(n.Dir, "cni-cache"), nil)

	c.progress("%s: nsx-ovs starts OVS, creates br-int, moves eth0's addresses and routes onto it", n.Name)
	n.startOVS(t)
	if !c.opts.RealNodes {
		// Without kubelet, the test registers the node.
		if _, err := c.Client.CoreV1().Nodes().Create(context.Background(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	if c.opts.ConfigSource == FromHyperBus {
		c.progress("%s: the fabric plays HyperBus on the node's VLAN %d channel", n.Name, fabric.HyperBusVLAN)
		n.HyperBus = c.Fabric.ServeHyperBus(t, n.Name, i)
	}
	n.StartAgent(t)
	n.StartProxy(t, c.opts.Dataplane)
	if c.opts.RealNodes {
		// After the agent: kubelet's node is Ready only once containerd
		// finds the CNI config and the plugin answers STATUS.
		n.startKubelet(t, n.IP)
	}
	return n
}

func nodeName(i int) string { return fmt.Sprintf("node-%d", i+1) }

// startOVS starts nsx-ovs and waits until it reports the node healthy.
func (n *Node) startOVS(t testing.TB) {
	t.Helper()
	bin := filepath.Join(n.c.opts.BinDir, "nsx-ovs")
	n.OVS = StartProcess(t, n.NS, filepath.Join(n.Dir, fmt.Sprintf("nsx-ovs-%d.log", time.Now().UnixNano())), bin, "--config-file", n.INI)
	n.OVS.WaitReady(t, 60*time.Second, func() error {
		_, err := n.NS.Exec(context.Background(), bin, "health", "--config-file", n.INI).Output()
		return err
	})
}

// RestartOVS restarts nsx-ovs as a container restart would: stopped
// (SIGTERM: it saves the flows and stops its OVS daemons) or killed
// (SIGKILL: its OVS daemons get SIGTERM from the kernel, nothing saved),
// then started again, which starts OVS and restores what it saved.
func (n *Node) RestartOVS(t testing.TB, kill bool) {
	t.Helper()
	if kill {
		n.OVS.Kill()
	} else {
		n.OVS.Stop()
	}
	n.startOVS(t)
}

// RestartPod restarts the node's nsx-ujo daemons together, as kubelet
// restarts the node DaemonSet's pod: SIGTERM to every container at once,
// then each started again (nsx-ovs first: the others wait for it anyway).
func (n *Node) RestartPod(t testing.TB) {
	t.Helper()
	var wg sync.WaitGroup
	for _, p := range []*Process{n.OVS, n.Agent, n.Proxy} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.Stop()
		}()
	}
	wg.Wait()
	n.startOVS(t)
	n.StartAgent(t)
	n.StartProxy(t, n.dataplane)
}

// KillOVSDaemon kills one of the OVS daemons nsx-ovs runs (ovs-vswitchd or
// ovsdb-server) with SIGKILL; nsx-ovs notices, stops the other and exits,
// and is started again as kubelet restarts a container that exited.
func (n *Node) KillOVSDaemon(t testing.TB, daemon string) {
	t.Helper()
	pidFile := filepath.Join(n.RunDir, daemon+".pid")
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatalf("%s: %v", n.Name, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("%s: %s: %v", n.Name, pidFile, err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("%s: kill %s (%d): %v", n.Name, daemon, pid, err)
	}
	select {
	case <-n.OVS.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: nsx-ovs still runs 30 s after its %s was killed", n.Name, daemon)
	}
	n.startOVS(t)
}

// stateDir is the node's ncp.ini state_dir (processes mode).
func (n *Node) stateDir() string { return filepath.Join(n.Dir, "state") }

func (n *Node) mountStateDir(t testing.TB, size string) {
	t.Helper()
	if err := os.MkdirAll(n.stateDir(), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", n.stateDir(), "tmpfs", 0, "size="+size); err != nil {
		t.Fatalf("%s: tmpfs for state_dir: %v", n.Name, err)
	}
	t.Cleanup(func() { _ = unix.Unmount(n.stateDir(), unix.MNT_DETACH) })
}

// FillStateDir fills the node's state_dir tmpfs (Options.StateDirSize)
// to the last byte and returns the func that frees it again.
func (n *Node) FillStateDir(t testing.TB) (free func()) {
	t.Helper()
	filler := filepath.Join(n.stateDir(), "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatalf("%s: fill state_dir: %v", n.Name, err)
	}
	chunk := make([]byte, 64<<10)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, unix.ENOSPC) {
				t.Fatalf("%s: fill state_dir: %v", n.Name, err)
			}
			break
		}
	}
	// The last bytes a 64 KiB chunk did not take.
	for _, err := f.Write(chunk[:1]); err == nil; _, err = f.Write(chunk[:1]) {
	}
	f.Close()
	return func() {
		if err := os.Remove(filler); err != nil {
			t.Errorf("%s: free state_dir: %v", n.Name, err)
		}
	}
}

func (n *Node) writeINI(t testing.TB, dataplane string) {
	n.dataplane = dataplane
	n.INI = filepath.Join(n.Dir, "ncp.ini")
	ini := fmt.Sprintf(`[DEFAULT]
debug = False
[k8s]
kubeconfig = %s
[nsx_node_agent]
ovs_bridge = br-int
ovs_uplink_port = eth0
ovs_datapath_type = netdev
ovs_run_dir = %s
ovs_db_dir = %s
state_dir = %s
cni_socket = %s
proc_mount_path_prefix =
config_retry_timeout = 30
audit_interval = 2
[nsx_kube_proxy]
dataplane = %s
bpf_pin_dir = %s
healthz_bind_address = 127.0.0.1:10256
metrics_bind_address = 127.0.0.1:10249
`, n.c.daemonKubeconfig(), n.RunDir, filepath.Join(n.Dir, "ovsdb"), n.stateDir(), filepath.Join(n.RunDir, "cni.sock"), dataplane, n.PinDir)
	if n.c.opts.ConfigSource == FromHyperBus {
		ini = strings.Replace(ini, "[nsx_node_agent]\n", "[nsx_node_agent]\nenable_hyperbus = True\n", 1)
	}
	if err := os.WriteFile(n.INI, []byte(ini), 0o600); err != nil {
		t.Fatal(err)
	}
}

// DeployServiceAccounts are the users deploy/'s pods reach the API as; the
// API server of a RealNodes cluster audits their requests
// (APIServer.AuditRequests), to check deploy/'s RBAC against them.
var DeployServiceAccounts = []string{
	"system:serviceaccount:nsx-system:nsx-node-agent",
	"system:serviceaccount:nsx-system:nsx-ncp-bootstrap",
}

// daemonKubeconfig is how the nodes' daemons reach the API.
func (c *Cluster) daemonKubeconfig() string {
	if c.Front != nil {
		return c.Front.Kubeconfig
	}
	return c.API.Kubeconfig
}

func (n *Node) run(t testing.TB, bin string, args ...string) string {
	t.Helper()
	out, err := n.NS.Exec(context.Background(), bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %s %s: %v\n%s", n.Name, filepath.Base(bin), strings.Join(args, " "), err, out)
	}
	return string(out)
}

// StartAgent starts (or restarts) nsx-node-agent and waits for CNI STATUS.
func (n *Node) StartAgent(t testing.TB) {
	t.Helper()
	if n.Agent != nil {
		n.Agent.Stop()
	}
	n.c.progress("%s: nsx-node-agent serves the CNI socket", n.Name)
	n.Agent = StartProcess(t, n.NS, filepath.Join(n.Dir, fmt.Sprintf("nsx-node-agent-%d.log", time.Now().UnixNano())),
		filepath.Join(n.c.opts.BinDir, "nsx-node-agent"), "--config-file", n.INI, "--node-name", n.Name)
	n.Agent.WaitReady(t, 60*time.Second, func() error { return n.CNI.GetStatusNetworkList(context.Background(), n.List) })
}

// StartProxy starts (or restarts) nsx-kube-proxy with a dataplane.
func (n *Node) StartProxy(t testing.TB, dataplane string) {
	t.Helper()
	if n.Proxy != nil {
		n.Proxy.Stop()
	}
	if dataplane != n.dataplane {
		n.writeINI(t, dataplane)
		// The agent attaches eBPF programs to new pods: it must know.
		n.StartAgent(t)
	}
	n.c.progress("%s: nsx-kube-proxy with the %s dataplane", n.Name, dataplane)
	n.Proxy = StartProcess(t, n.NS, filepath.Join(n.Dir, fmt.Sprintf("nsx-kube-proxy-%d.log", time.Now().UnixNano())),
		filepath.Join(n.c.opts.BinDir, "nsx-kube-proxy"), "--config-file", n.INI, "--node-name", n.Name)
	n.Proxy.WaitReady(t, 60*time.Second, func() error {
		return n.NS.Do(func() error {
			conn, err := net.DialTimeout("tcp", "127.0.0.1:10256", time.Second)
			if err == nil {
				conn.Close()
			}
			return err
		})
	})
}

// Pod is a pod of the cluster: an API object, a network namespace wired by
// the real CNI, and optionally a workload process.
type Pod struct {
	Name, Namespace string
	Node            *Node
	NS              *harness.NetNS
	ContainerID     string
	Obj             *corev1.Pod
	IP              netip.Addr
	workload        *Process
}

// PodOptions shape a pod.
type PodOptions struct {
	Labels map[string]string
	Serve  uint16 // run `workload serve` on this port (0: no server)
}

// RunPod creates the pod object on node, wires it through libcni with the
// node's installed conflist (as a container runtime would), starts its
// workload and marks it ready.
func (c *Cluster) RunPod(t testing.TB, namespace, name string, node *Node, o PodOptions) *Pod {
	t.Helper()
	ctx := context.Background()
	actx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	p, err := c.startPod(actx, podObject(namespace, name, node, o), node, AddPodOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.NS.Delete(); err != nil {
			t.Errorf("delete netns %s: %v", p.NS.Name, err)
		}
	})
	if o.Serve != 0 {
		p.workload = StartProcess(t, p.NS, filepath.Join(node.Dir, fmt.Sprintf("pod-%s-%s.log", namespace, name)),
			filepath.Join(c.opts.BinDir, "workload"), "serve", "--name", name, "--port", fmt.Sprint(o.Serve))
		p.workload.WaitReady(t, 10*time.Second, func() error {
			b, _ := os.ReadFile(p.workload.LogFile)
			if !strings.Contains(string(b), "ready") {
				return fmt.Errorf("workload of %s not listening yet", name)
			}
			return nil
		})
	}
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{ReadyAnnotation: "true"}}})
	if p.Obj, err = c.Client.CoreV1().Pods(namespace).Patch(ctx, name, "application/merge-patch+json", patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	return p
}

// ErrADDTimedOut is returned (wrapped) by AddPod when AddPodOptions.Timeout
// ended the ADD: libcni killed the plugin process.
var ErrADDTimedOut = errors.New("CNI ADD timed out: plugin killed")

// AddPodOptions shape AddPod.
type AddPodOptions struct {
	// Timeout bounds the CNI ADD alone, as a runtime's does: when it ends
	// first the plugin process is killed mid-ADD. 0: only ctx.
	Timeout time.Duration
}

// AddPod is a pod's start as kubelet does it, for a goroutine other than
// the test's: the object, a sandbox netns, CNI ADD. When the ADD fails the
// sandbox is torn down as kubelet does (CNI DEL, netns, object) and the
// ADD's error returned with any of the teardown's. No workload.
func (c *Cluster) AddPod(ctx context.Context, namespace, name string, node *Node, o AddPodOptions) (*Pod, error) {
	return c.startPod(ctx, podObject(namespace, name, node, PodOptions{}), node, o)
}

// podObject is the API object of a pod of the cluster on node.
func podObject(namespace, name string, node *Node, o PodOptions) *corev1.Pod {
	obj := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, Labels: o.Labels},
		Spec:       corev1.PodSpec{NodeName: node.Name, Containers: []corev1.Container{{Name: "workload", Image: "nsx-ujo/workload:test"}}},
	}
	if o.Serve != 0 {
		obj.Spec.Containers[0].Ports = []corev1.ContainerPort{{Name: "serve", ContainerPort: int32(o.Serve)}}
	}
	return obj
}

// startPod creates obj, its sandbox netns and runs CNI ADD (AddPod).
func (c *Cluster) startPod(ctx context.Context, obj *corev1.Pod, node *Node, o AddPodOptions) (*Pod, error) {
	namespace, name := obj.Namespace, obj.Name
	obj, err := c.Client.CoreV1().Pods(namespace).Create(ctx, obj, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create pod %s/%s: %w", namespace, name, err)
	}
	p := &Pod{Name: name, Namespace: namespace, Node: node, Obj: obj,
		ContainerID: fmt.Sprintf("%s-%s-%d", namespace, name, time.Now().UnixNano())}
	if p.NS, err = harness.CreateNetNS(); err != nil {
		return nil, errors.Join(err, c.Client.CoreV1().Pods(namespace).Delete(context.WithoutCancel(ctx), name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}))
	}
	actx, cancel := ctx, context.CancelFunc(func() {})
	if o.Timeout > 0 {
		actx, cancel = context.WithTimeout(ctx, o.Timeout)
	}
	r, err := node.CNI.AddNetworkList(actx, node.List, p.runtimeConf())
	if err != nil && o.Timeout > 0 && actx.Err() != nil && ctx.Err() == nil {
		err = fmt.Errorf("%w after %s: %w", ErrADDTimedOut, o.Timeout, err)
	}
	cancel()
	if err == nil {
		var res *types100.Result
		if res, err = types100.GetResult(r); err == nil && len(res.IPs) > 0 {
			p.IP, _ = netip.AddrFromSlice(res.IPs[0].Address.IP.To4())
			return p, nil
		}
		err = fmt.Errorf("result %v: %v", r, err)
	}
	err = fmt.Errorf("CNI ADD of %s/%s on %s: %w", namespace, name, node.Name, err)
	tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	return nil, errors.Join(err, c.RemovePod(tctx, p, RemovePodOptions{}))
}

// RemovePodOptions shape a pod's end.
type RemovePodOptions struct {
	// NetnsGone removes the pod's netns before the DEL, as after a node
	// reboot or a runtime that lost the sandbox: the DEL must still clean
	// up (CNI spec).
	NetnsGone bool
}

// RemovePod is a pod's end as kubelet does it, without t: CNI DEL, retried
// until it succeeds or ctx ends (kubelet keeps a sandbox until its DEL
// succeeds), then the netns and the object.
func (c *Cluster) RemovePod(ctx context.Context, p *Pod, o RemovePodOptions) error {
	if o.NetnsGone {
		if err := p.NS.Delete(); err != nil {
			return err
		}
	}
	for {
		dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := p.Node.CNI.DelNetworkList(dctx, p.Node.List, p.runtimeConf())
		cancel()
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("CNI DEL of %s/%s: %w (%w)", p.Namespace, p.Name, err, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
	if err := p.NS.Delete(); err != nil {
		return err
	}
	err := c.Client.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	return nil
}

func (p *Pod) runtimeConf() *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: p.ContainerID, NetNS: p.NS.Path, IfName: "eth0", Args: [][2]string{
		{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", p.Namespace}, {"K8S_POD_NAME", p.Name},
		{"K8S_POD_INFRA_CONTAINER_ID", p.ContainerID}, {"K8S_POD_UID", string(p.Obj.UID)},
	}}
}

// Delete tears the pod down as kubelet would: workload stopped, CNI DEL,
// sandbox netns removed, object deleted.
func (c *Cluster) DeletePod(t testing.TB, p *Pod) {
	t.Helper()
	if p.workload != nil {
		p.workload.Stop()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.Node.CNI.DelNetworkList(ctx, p.Node.List, p.runtimeConf()); err != nil {
		t.Fatalf("CNI DEL of %s/%s: %v", p.Namespace, p.Name, err)
	}
	if out, err := exec.Command("ip", "netns", "del", p.NS.Name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns del %s: %v: %s", p.NS.Name, err, out)
	}
	if err := c.Client.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
}

// Get runs `workload get` in the pod: count requests to addr, the names
// of the servers that answered.
func (p *Pod) Get(t testing.TB, addr string, count int) ([]string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(count)*3*time.Second+5*time.Second)
	defer cancel()
	out, err := p.NS.Exec(ctx, filepath.Join(p.Node.c.opts.BinDir, "workload"), "get", "--addr", addr, "--count", fmt.Sprint(count)).Output()
	names := strings.Fields(string(out))
	if err != nil {
		var ee *exec.ExitError
		if ok := asExitError(err, &ee); ok {
			return names, fmt.Errorf("workload get %s from %s: %v: %s", addr, p.Name, err, ee.Stderr)
		}
		return names, err
	}
	return names, nil
}

// Hold starts `workload hold` from the pod: a long-lived connection that
// exits as soon as an echo fails. Stop it with StopHold.
func (p *Pod) Hold(t testing.TB, addr string) *Process {
	t.Helper()
	h := StartProcess(t, p.NS, filepath.Join(p.Node.Dir, fmt.Sprintf("hold-%s-%d.log", p.Name, time.Now().UnixNano())),
		filepath.Join(p.Node.c.opts.BinDir, "workload"), "hold", "--addr", addr, "--interval", "200ms")
	h.WaitReady(t, 10*time.Second, func() error {
		b, _ := os.ReadFile(h.LogFile)
		if len(strings.TrimSpace(string(b))) == 0 {
			return fmt.Errorf("no greeting yet")
		}
		return nil
	})
	return h
}

// Alive says whether the process still runs.
func (p *Process) Alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// Nsxctl runs nsxctl on the node, as `kubectl exec` into its DaemonSet
// would: its ncp.ini, the cluster's API. It returns the output and the
// exit status (see cmd/nsxctl); a failure to run at all is fatal.
func (n *Node) Nsxctl(t testing.TB, args ...string) (string, int) {
	t.Helper()
	cmd := n.NS.Exec(context.Background(), filepath.Join(n.c.opts.BinDir, "nsxctl"),
		append([]string{"--config-file", n.INI, "--node-name", n.Name}, args...)...)
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return out.String(), 0
	case errors.As(err, &ee):
		return out.String() + errOut.String(), ee.ExitCode()
	}
	t.Fatalf("%s: nsxctl %s: %v", n.Name, strings.Join(args, " "), err)
	return "", -1
}

// Dump prints what an operator would look at: the OVS service flows and
// groups, or the eBPF service and backend maps.
func (n *Node) Dump(t testing.TB) string {
	t.Helper()
	if n.dataplane == "ebpf" {
		var b strings.Builder
		for _, m := range []string{"nsx_services", "nsx_backends"} {
			out, _ := exec.Command("bpftool", "map", "dump", "pinned", filepath.Join(n.PinDir, m)).CombinedOutput()
			fmt.Fprintf(&b, "$ bpftool map dump pinned %s\n%s\n", filepath.Join(n.PinDir, m), out)
		}
		return b.String()
	}
	mgmt := "unix:" + filepath.Join(n.RunDir, "br-int.mgmt")
	flows, _ := exec.Command("ovs-ofctl", "-O", "OpenFlow15", "dump-flows", "--names", "--no-stats", mgmt, "cookie=0x5a00000000000000/0xff00000000000000").CombinedOutput()
	groups, _ := exec.Command("ovs-ofctl", "-O", "OpenFlow15", "dump-groups", mgmt).CombinedOutput()
	return fmt.Sprintf("$ ovs-ofctl dump-flows --names br-int (nsx-kube-proxy's)\n%s\n$ ovs-ofctl dump-groups br-int\n%s", flows, groups)
}
