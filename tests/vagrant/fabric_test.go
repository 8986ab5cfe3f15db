package vagrant

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nsx-ujo/nsx-ujo/pkg/agent/podconfig"
	"github.com/nsx-ujo/nsx-ujo/tests/harness"
)

// TestFabricDaemon runs the fabric VM's daemon, tests/fabric/nsx-fabric-sim,
// as fabric.sh's unit does, on a machine without VMs: its "NIC" is a veth
// whose peer is eth0 of a network namespace playing a node, its API server
// a real one. The node reaches the router on its untagged network; once a
// pod is created on the node, the NCP stand-in annotates it and wires its
// namespace's gateway, which a pod behind the node's br-int reaches on its
// VLAN through the trunk; SIGTERM ends the daemon with status 0 and gives the NIC back.
// The userspace datapath: the test machines have no OVS kernel module.
func TestFabricDaemon(t *testing.T) {
	t.Parallel()
	harness.RequireRoot(t)
	root := repoRoot(t)
	bin := filepath.Join(t.TempDir(), "nsx-fabric-sim")
	build := exec.Command("go", "build", "-o", bin, "./tests/fabric/nsx-fabric-sim")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build nsx-fabric-sim: %v\n%s", err, out)
	}
	api := harness.StartAPIServer(t)
	cs := api.Client(t)

	node := harness.NewNetNS(t)
	uplink := fmt.Sprintf("nfsim%d", os.Getpid()%100000)
	if out, err := exec.Command("ip", "link", "add", uplink, "type", "veth", "peer", "name", "eth0", "netns", node.Name).CombinedOutput(); err != nil {
		t.Fatalf("veth: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", uplink).Run() }) // gone with the daemon's namespace if it died
	node.Run(t, "ip", "link", "set", "eth0", "up")
	node.Run(t, "ethtool", "-K", "eth0", "tx", "off")
	node.Run(t, "ip", "addr", "add", "172.31.250.10/24", "dev", "eth0")

	logPath := filepath.Join(t.TempDir(), "nsx-fabric-sim.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	daemon := exec.Command(bin, "--uplink", uplink, "--node-net", "172.31.250.0/24", "--datapath", "netdev", "--kubeconfig", api.Kubeconfig)
	daemon.Stdout, daemon.Stderr = logFile, logFile
	daemon.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- daemon.Wait() }()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = daemon.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(30 * time.Second):
				_ = daemon.Process.Kill()
				<-exited
			}
		}
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("nsx-fabric-sim log:\n%s", b)
		}
	})
	logHas := func(s string) func() error {
		return func() error {
			select {
			case err := <-exited:
				exited <- err
				return errors.Join(errStop, fmt.Errorf("nsx-fabric-sim exited: %v", err))
			default:
			}
			if b, _ := os.ReadFile(logPath); !strings.Contains(string(b), s) {
				return fmt.Errorf("no %q in its log yet", s)
			}
			return nil
		}
	}
	eventually(t, "nsx-fabric-sim up", 60*time.Second, logHas("nsx-fabric-sim: up:"))
	if _, err := os.Stat(filepath.Join("/sys/class/net", uplink)); err == nil {
		t.Errorf("%s is still in the root namespace: the daemon should have moved it into br-fabric's", uplink)
	}

	ping := func(ns *harness.NetNS, addr string) func() error {
		return func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			if out, err := ns.Exec(ctx, "ping", "-c1", "-W1", addr).CombinedOutput(); err != nil {
				return fmt.Errorf("ping %s: %v: %s", addr, err, out)
			}
			return nil
		}
	}
	eventually(t, "node -> router on the untagged node network", 15*time.Second, ping(node, "172.31.250.1"))

	// A pod on the node: the NCP stand-in gives it an address on its
	// namespace's VLAN and wires that VLAN's gateway on the router.
	ctx := context.Background()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "fabric-daemon"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod, err := cs.CoreV1().Pods("fabric-daemon").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p"},
		Spec:       corev1.PodSpec{NodeName: "vagrant-node", Containers: []corev1.Container{{Name: "c", Image: "nsx-ujo:latest"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var cfg *podconfig.Config
	eventually(t, "ncp/network_config annotation", 15*time.Second, func() error {
		p, err := cs.CoreV1().Pods("fabric-daemon").Get(ctx, "p", metav1.GetOptions{})
		if err != nil {
			return err
		}
		cfg, err = podconfig.Parse(p.Annotations[podconfig.AnnotationKey], string(pod.UID))
		return err
	})
	// The node's side of the trunk as nsx-ovs makes it: br-int with eth0
	// as a port, the pod an access port of its VLAN (this kernel may lack
	// 8021q, so no VLAN device).
	sw := harness.StartOVS(t, harness.OVSOptions{NetNS: node, Bridges: []string{"br-int"}})
	sw.Vsctl(t, "add-port", "br-int", "eth0")
	podNS := harness.NewNetNS(t)
	harness.VethPair(t, node, "pod1", podNS, "eth0")
	node.Run(t, "ethtool", "-K", "pod1", "tx", "off")
	podNS.Run(t, "ethtool", "-K", "eth0", "tx", "off")
	podNS.Run(t, "ip", "addr", "add", cfg.IP.String(), "dev", "eth0")
	sw.Vsctl(t, "add-port", "br-int", "pod1", "tag="+strconv.Itoa(cfg.VLAN))
	eventually(t, fmt.Sprintf("pod %s -> its gateway on VLAN %d through the trunk", cfg.IP, cfg.VLAN), 15*time.Second, ping(podNS, cfg.Gateway.String()))

	stopped = true
	if err := daemon.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("nsx-fabric-sim after SIGTERM: %v, want exit status 0", err)
		}
	case <-time.After(30 * time.Second):
		_ = daemon.Process.Kill()
		<-exited
		t.Fatal("nsx-fabric-sim did not stop within 30 s of SIGTERM")
	}
	eventually(t, uplink+" back in the root namespace", 10*time.Second, func() error {
		_, err := os.Stat(filepath.Join("/sys/class/net", uplink))
		return err
	})
}

// errStop makes eventually give up at once.
var errStop = errors.New("stop")

// eventually polls check until it passes, failing t with its last error
// after timeout or as soon as the error wraps errStop.
func eventually(t *testing.T, what string, timeout time.Duration, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if errors.Is(err, errStop) || time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
