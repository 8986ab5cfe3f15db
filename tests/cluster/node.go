// Package cluster runs nsx-ujo's real binaries on test "nodes" (network
// namespaces with their own OVS) against a real kube-apiserver: what the e2e
// tests and the benchmarks share.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	corev1 "k8s.io/api/core/v1"

	"github.com/nsx-ujo/nsx-ujo/tests/harness"
)

// BuildBinaries builds our binaries and the reference CNI plugins the tests
// use (loopback; bridge and host-local as benchmark baselines) into dir.
func BuildBinaries(dir string) error {
	root, err := harness.RepoRoot()
	if err != nil {
		return err
	}
	pkgs := map[string]string{
		"nsx":               "./cmd/nsx",
		"nsx-node-agent":    "./cmd/nsx-node-agent",
		"nsx-kube-proxy":    "./cmd/nsx-kube-proxy",
		"nsx-ovs":           "./cmd/nsx-ovs",
		"nsx-ncp-bootstrap": "./cmd/nsx-ncp-bootstrap",
		"nsxctl":            "./cmd/nsxctl",
		"workload":          "./tests/workload",
		"pause":             "./tests/images/pause",
		"loopback":          "github.com/containernetworking/plugins/plugins/main/loopback",
		"portmap":           "github.com/containernetworking/plugins/plugins/meta/portmap", // the bench's comparison
		"bridge":            "github.com/containernetworking/plugins/plugins/main/bridge",
		"host-local":        "github.com/containernetworking/plugins/plugins/ipam/host-local",
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

// AgentNode is one node: a netns with its own OVS (br-int, netdev) and the
// real nsx-node-agent binary running inside it, the CNI plugin and conflist
// installed by the real nsx-ncp-bootstrap, and a libcni runtime that invokes
// them.
type AgentNode struct {
	Name     string
	NS       *harness.NetNS
	OVS      *harness.OVS
	Socket   string
	HostRoot string // where nsx-ncp-bootstrap installed the CNI
	CNI      *libcni.CNIConfig
	List     *libcni.NetworkConfigList // [nsx, loopback], as installed
	LogFile  string
}

// ConflistPath is the conflist as nsx-ncp-bootstrap installed it.
func (nd *AgentNode) ConflistPath() string {
	return filepath.Join(nd.HostRoot, "etc/cni/net.d/10-nsx.conflist")
}

// CNIBinDir is where the installed plugins are (the runtime's CNI_PATH).
func (nd *AgentNode) CNIBinDir() string { return filepath.Join(nd.HostRoot, "opt/cni/bin") }

// AgentOptions tune StartAgentNode.
type AgentOptions struct {
	BinDir   string // from BuildBinaries
	ExtraINI string // lines appended to [nsx_node_agent]
}

// StartAgentNode brings up a node and waits until the agent answers CNI
// STATUS through the plugin. Everything stops in t's cleanup.
func StartAgentNode(t testing.TB, api *harness.APIServer, name string, o AgentOptions) *AgentNode {
	t.Helper()
	n := harness.NewNetNS(t)
	ovs := harness.StartOVS(t, harness.OVSOptions{NetNS: n, Bridges: []string{"br-int"}})
	api.ExposeIn(t, n)
	dir := t.TempDir()
	nd := &AgentNode{Name: name, NS: n, OVS: ovs, Socket: filepath.Join(ovs.RunDir, "cni.sock"), LogFile: filepath.Join(dir, "agent.log")}
	ini := fmt.Sprintf(`[DEFAULT]
debug = False
[k8s]
kubeconfig = %s
[nsx_node_agent]
ovs_bridge = br-int
ovs_run_dir = %s
cni_socket = %s
proc_mount_path_prefix =
config_retry_timeout = 20
%s
`, api.Kubeconfig, ovs.RunDir, nd.Socket, o.ExtraINI)
	iniPath := filepath.Join(dir, "ncp.ini")
	if err := os.WriteFile(iniPath, []byte(ini), 0o600); err != nil {
		t.Fatal(err)
	}
	nd.HostRoot = filepath.Join(dir, "host")
	if out, err := exec.Command(filepath.Join(o.BinDir, "nsx-ncp-bootstrap"), "install", "--config-file", iniPath,
		"--host-root", nd.HostRoot, "--cni-bin-source", filepath.Join(o.BinDir, "nsx"),
		"--loopback-bin-source", filepath.Join(o.BinDir, "loopback")).CombinedOutput(); err != nil {
		t.Fatalf("nsx-ncp-bootstrap install: %v\n%s", err, out)
	}
	list, err := libcni.ConfListFromFile(nd.ConflistPath())
	if err != nil {
		t.Fatal(err)
	}
	nd.List = list
	nd.CNI = libcni.NewCNIConfigWithCacheDir([]string{nd.CNIBinDir()}, filepath.Join(dir, "cni-cache"), nil)
	nd.startAgent(t, filepath.Join(o.BinDir, "nsx-node-agent"), iniPath)
	return nd
}

func (nd *AgentNode) startAgent(t testing.TB, bin, iniPath string) {
	t.Helper()
	p := StartProcess(t, nd.NS, nd.LogFile, bin, "--config-file", iniPath, "--node-name", nd.Name)
	p.WaitReady(t, 30*time.Second, func() error { return nd.CNI.GetStatusNetworkList(context.Background(), nd.List) })
}

// Process is one of our daemons running inside a node namespace.
type Process struct {
	Name    string
	LogFile string
	pid     int
	cancel  context.CancelFunc
	done    chan struct{}
}

// StartProcess starts bin inside n with its output in logFile. The cleanup
// stops it (SIGKILL via context) and, if the test failed, logs the output.
func StartProcess(t testing.TB, n *harness.NetNS, logFile, bin string, args ...string) *Process {
	t.Helper()
	f, err := os.Create(logFile)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := n.Exec(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// nsenter enters the namespace and execs bin in place: same pid.
	p := &Process{Name: filepath.Base(bin), LogFile: logFile, pid: cmd.Process.Pid, cancel: cancel, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); f.Close(); close(p.done) }()
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() {
			b, _ := os.ReadFile(logFile)
			t.Logf("--- %s log ---\n%s", p.Name, b)
		}
	})
	return p
}

// Pid is the process id.
func (p *Process) Pid() int { return p.pid }

// Kill sends SIGKILL (a crash: no cleanup of its own) and waits for the
// process to exit.
func (p *Process) Kill() {
	_ = syscall.Kill(p.pid, syscall.SIGKILL)
	<-p.done
}

// Stop sends SIGTERM and waits for the process to exit. Idempotent.
func (p *Process) Stop() {
	p.cancel()
	<-p.done
}

// WaitReady polls ready until it succeeds, failing the test if the
// process exits or the timeout passes.
func (p *Process) WaitReady(t testing.TB, timeout time.Duration, ready func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := ready()
		if err == nil {
			return
		}
		select {
		case <-p.done:
			b, _ := os.ReadFile(p.LogFile)
			t.Fatalf("%s exited:\n%s", p.Name, b)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready after %v: %v", p.Name, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// RuntimeConf is what a runtime passes for pod p's sandbox in podNS.
func RuntimeConf(p *corev1.Pod, podNS *harness.NetNS, containerID string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: containerID, NetNS: podNS.Path, IfName: "eth0", Args: [][2]string{
		{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", p.Namespace}, {"K8S_POD_NAME", p.Name},
		{"K8S_POD_INFRA_CONTAINER_ID", containerID}, {"K8S_POD_UID", string(p.UID)},
	}}
}

// Ports lists the ports on the node's br-int.
func (nd *AgentNode) Ports(t testing.TB) []string {
	return strings.Fields(nd.OVS.Vsctl(t, "list-ports", "br-int"))
}

func asExitError(err error, target **exec.ExitError) bool { return errors.As(err, target) }

// BinariesForMain is what a TestMain of a package that runs our binaries
// does first: require root (say which package needs it), build the
// binaries into a temp dir. cleanup removes it.
func BinariesForMain(pkg, needs string) (dir string, cleanup func(), err error) {
	if os.Geteuid() != 0 {
		return "", nil, fmt.Errorf("%s needs root (%s)", pkg, needs)
	}
	dir, err = os.MkdirTemp("", "nsx-bin-")
	if err != nil {
		return "", nil, err
	}
	cleanup = func() { os.RemoveAll(dir) }
	if err := BuildBinaries(dir); err != nil {
		cleanup()
		return "", nil, err
	}
	return dir, cleanup, nil
}
