package cluster

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nsx-ujo/nsx-ujo/tests/harness"
	"github.com/nsx-ujo/nsx-ujo/tests/images"
)

// Real nodes (Options.RealNodes): a kube-controller-manager and a
// kube-scheduler beside the apiserver, and on every node containerd (CRI,
// runc) and a kubelet, so pods are created by kubelet and wired by
// /opt/cni/bin/nsx called by containerd, as on a production node.

const (
	// nodeReadyTimeout covers kubelet's start, its first status with the
	// CNI config found and the node lease.
	nodeReadyTimeout = 2 * time.Minute
)

// imagesOnce builds the e2e image tarball once per test binary.
var imagesOnce struct {
	sync.Once
	path string
	err  error
}

// e2eImages returns the tarball of tests/images' images, built into binDir
// by the first call of this test binary (later calls get that tarball).
func e2eImages(binDir string) (string, error) {
	imagesOnce.Do(func() {
		agnhost, err := harness.ToolBinary("agnhost")
		if err != nil {
			imagesOnce.err = err
			return
		}
		busybox, err := exec.LookPath("busybox")
		if err != nil {
			imagesOnce.err = fmt.Errorf("busybox (Debian's busybox-static; hack/install-deps.sh): %w", err)
			return
		}
		imagesOnce.path = filepath.Join(binDir, "e2e-images.tar")
		imagesOnce.err = images.Build(imagesOnce.path, images.Options{Pause: filepath.Join(binDir, "pause"), Agnhost: agnhost, BusyBox: busybox})
	})
	return imagesOnce.path, imagesOnce.err
}

// PodReady reports whether p's Ready condition is true.
func PodReady(p *corev1.Pod) bool {
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodReady && cond.Status == corev1.ConditionTrue {
			return true
		}
	}
	return false
}

// nodeUser is the kubelet's API identity (the Node authorizer's form).
func nodeUser(node string) string { return "system:node:" + node }

// startControlPlane runs kube-controller-manager and kube-scheduler in a
// namespace of their own that sees the apiserver on its loopback URL.
func (c *Cluster) startControlPlane(t testing.TB) {
	t.Helper()
	kcm, err := harness.ToolBinary("kube-controller-manager")
	if err != nil {
		t.Fatal(err)
	}
	sched, err := harness.ToolBinary("kube-scheduler")
	if err != nil {
		t.Fatal(err)
	}
	ns := harness.NewNetNS(t)
	c.API.ExposeIn(t, ns)
	dir := t.TempDir()
	kc := c.API.Kubeconfig
	c.progress("control plane: kube-controller-manager and kube-scheduler %s", harness.KubeVersion)
	// Own namespace: the default secure ports (10257, 10259) never clash
	// with another test's cluster.
	c.ControllerManager = StartProcess(t, ns, filepath.Join(dir, "kube-controller-manager.log"), kcm,
		"--kubeconfig="+kc, "--authentication-kubeconfig="+kc, "--authorization-kubeconfig="+kc,
		"--leader-elect=false", "--bind-address=127.0.0.1",
		"--service-account-private-key-file="+c.API.SAKeyFile(), "--root-ca-file="+c.API.CAFile,
		"--service-cluster-ip-range="+harness.ServiceCIDRs,
		// Nodes of a test come and go with it: notice a dead kubelet in
		// seconds, not the default 50 s.
		"--node-monitor-grace-period=20s")
	c.Scheduler = StartProcess(t, ns, filepath.Join(dir, "kube-scheduler.log"), sched,
		"--kubeconfig="+kc, "--authentication-kubeconfig="+kc, "--authorization-kubeconfig="+kc,
		"--leader-elect=false", "--bind-address=127.0.0.1")
	// The "default" ServiceAccount of "default" shows the controller-manager
	// works (pods cannot be admitted before it exists).
	c.ControllerManager.WaitReady(t, 60*time.Second, func() error {
		_, err := c.Client.CoreV1().ServiceAccounts("default").Get(context.Background(), "default", metav1.GetOptions{})
		return err
	})
}

// startKubelet runs containerd and kubelet on n, imports the test images
// and waits for the Node to be Ready. The cleanup stops kubelet, kills
// what its pods left running, stops containerd, unmounts everything under
// the node's directories and removes its cgroups.
func (n *Node) startKubelet(t testing.TB, nodeIP netip.Addr) {
	t.Helper()
	c := n.c
	bins := map[string]string{}
	for _, b := range []string{"kubelet", "containerd", "containerd-shim-runc-v2", "ctr"} {
		p, err := harness.ToolBinary(b)
		if err != nil {
			t.Fatal(err)
		}
		bins[b] = p
	}
	tarball, err := e2eImages(c.opts.BinDir)
	if err != nil {
		t.Fatal(err)
	}
	// Forwarding is a Kubernetes node prerequisite (kubeadm's preflight
	// refuses a node without it); hostPort needs it: the agent DNATs to
	// the pod, which the node then routes to the fabric.
	n.NS.Run(t, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	// containerd finds its shim as containerd-shim-runc-v2 on PATH.
	pathDir := filepath.Join(n.Dir, "path")
	if err := os.MkdirAll(pathDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(bins["containerd-shim-runc-v2"], filepath.Join(pathDir, "containerd-shim-runc-v2")); err != nil {
		t.Fatal(err)
	}
	cgroupRoot := harness.CgroupRoot(n.NS) // unique per test run and node
	n.CgroupRoot = cgroupRoot
	ctrdRoot := filepath.Join(n.Dir, "containerd")
	// Short (sockets live under it), and not under RunDir: that is the
	// node's /var/run/openvswitch in deploy mode, which holds nsx-ujo's
	// files only.
	ctrdRun := harness.TempDir(t)
	ctrdState := filepath.Join(ctrdRun, "ctrd")
	n.ContainerdSock = filepath.Join(ctrdRun, "containerd.sock")
	kubeletDir := filepath.Join(n.Dir, "kubelet")
	// Registered first, runs last: after kubelet and containerd stopped.
	t.Cleanup(func() {
		for _, d := range []string{n.Dir, ctrdState} {
			if err := unmountUnder(d); err != nil {
				t.Errorf("%s: %v", n.Name, err)
			}
		}
		if err := harness.RemoveCgroups(cgroupRoot); err != nil {
			t.Errorf("%s: %v", n.Name, err)
		}
		removeContainerLogLinks(n.Dir)
	})
	if err := harness.MakeCgroups(cgroupRoot); err != nil {
		t.Fatal(err)
	}

	cfg := filepath.Join(n.Dir, "containerd.toml")
	// Pod network namespaces under the node's state, not machine-wide
	// /var/run/netns where every node of this machine would put them;
	// deploy mode's nodes have their own /var/run/netns, which the agent's
	// container mounts (as on a real node).
	netnsUnderState := c.opts.Daemons == DaemonsProcesses
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(containerdConfig, ctrdRoot, ctrdState, n.ContainerdSock, netnsUnderState,
		filepath.Join(n.HostRoot, "opt/cni/bin"), filepath.Join(n.HostRoot, "etc/cni/net.d"), images.Pause)), 0o600); err != nil {
		t.Fatal(err)
	}
	c.progress("%s: containerd %s (runc), the e2e images imported", n.Name, harness.ContainerdVersion)
	n.Containerd = StartProcess(t, n.NS, filepath.Join(n.Dir, "containerd.log"), "/usr/bin/env",
		"PATH="+pathDir+":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", bins["containerd"], "--config", cfg)
	ctr := func(args ...string) *exec.Cmd {
		return exec.Command(bins["ctr"], append([]string{"--address", n.ContainerdSock, "--namespace", "k8s.io"}, args...)...)
	}
	n.Containerd.WaitReady(t, 60*time.Second, func() error {
		out, err := ctr("version").CombinedOutput()
		if err != nil {
			return fmt.Errorf("ctr version: %v: %s", err, out)
		}
		return nil
	})
	if out, err := ctr("images", "import", tarball).CombinedOutput(); err != nil {
		t.Fatalf("%s: ctr images import %s: %v\n%s", n.Name, tarball, err, out)
	}
	// Registered after containerd started: runs before it stops. Pods'
	// processes are not children of kubelet: they stay unless killed.
	t.Cleanup(func() { harness.KillCgroup(cgroupRoot) })

	kubeconfig := filepath.Join(n.Dir, "kubelet.kubeconfig")
	if err := c.API.UserKubeconfig(nodeUser(n.Name), kubeconfig); err != nil {
		t.Fatal(err)
	}
	resolv := filepath.Join(n.Dir, "resolv.conf")
	// For hostNetwork pods and dnsPolicy Default: never the machine's
	// resolvers (cluster pods get CoreDNS through clusterDNS).
	if err := os.WriteFile(resolv, []byte("search cluster.local\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	kcfg := filepath.Join(n.Dir, "kubelet.yaml")
	if err := os.WriteFile(kcfg, []byte(fmt.Sprintf(kubeletConfig, cgroupRoot, n.ContainerdSock, resolv,
		filepath.Join(n.Dir, "pod-logs"), c.DNS)), 0o600); err != nil {
		t.Fatal(err)
	}
	c.progress("%s: kubelet %s (cgroupfs, cgroup root %s, node IP %s)", n.Name, harness.KubeVersion, cgroupRoot, nodeIP)
	n.Kubelet = StartProcess(t, n.NS, filepath.Join(n.Dir, "kubelet.log"), bins["kubelet"],
		"--config="+kcfg, "--kubeconfig="+kubeconfig, "--root-dir="+kubeletDir,
		"--hostname-override="+n.Name, "--node-ip="+nodeIP.String(), "--v=2")
	n.Kubelet.WaitReady(t, nodeReadyTimeout, func() error {
		node, err := c.Client.CoreV1().Nodes().Get(context.Background(), n.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if c.opts.Daemons != DaemonsProcesses {
			return nil // Ready once deploy/'s DaemonSets run (WaitDeployed)
		}
		for _, cond := range node.Status.Conditions {
			if cond.Type == corev1.NodeReady {
				if cond.Status == corev1.ConditionTrue {
					return nil
				}
				return fmt.Errorf("node %s not ready: %s", n.Name, cond.Message)
			}
		}
		return fmt.Errorf("node %s: no Ready condition yet", n.Name)
	})
}

// containerdConfig: root, state, socket, netns under the state dir, CNI
// bin dir, CNI conf dir, sandbox image.
const containerdConfig = `version = 3
root = %q
state = %q
# NRI's socket is machine-wide (/var/run/nri): nodes sharing one machine
# would fight over it; nothing here uses NRI.
disabled_plugins = ["io.containerd.nri.v1.nri"]

[grpc]
  address = %q

[plugins.'io.containerd.cri.v1.runtime']
  enable_selinux = false
  # This machine: root lacks CAP_SYS_RESOURCE, so lowering a container's
  # oom_score_adj below containerd's own fails. A production node does not
  # need this.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = %v
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = 'runc'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = 'io.containerd.runc.v2'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = '/usr/sbin/runc'
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = [%q]
    conf_dir = %q
    max_conf_num = 1

[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = %q

[plugins.'io.containerd.grpc.v1.cri']
  # kubelet proxies exec/attach/port-forward to this, in the node's
  # namespace.
  stream_server_address = '127.0.0.1'
  stream_server_port = '0'
`

// kubeletConfig: cgroup root, CRI socket, resolv.conf, pod log dir, DNS.
const kubeletConfig = `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine kind (and many real nodes) has a cgroup v1 hybrid hierarchy:
# kubelet 1.35+ refuses v1 unless told.
failCgroupV1: false
cgroupDriver: cgroupfs
# Each node of this machine its own cgroup subtree.
cgroupRoot: %s
cgroupsPerQOS: true
enforceNodeAllocatable: ["pods"]
containerRuntimeEndpoint: unix://%s
resolvConf: %s
podLogsDir: %s
clusterDNS: [%s]
clusterDomain: cluster.local
# The apiserver (through the test's egress proxy) is the only client: no
# client certificates are issued in the test cluster.
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
readOnlyPort: 0
failSwapOn: false
# Nodes share this machine's disk: never evict for it or collect the
# imported images (they cannot be pulled again: no registry).
evictionHard: {"memory.available": "1Mi", "nodefs.available": "0%%", "imagefs.available": "0%%", "nodefs.inodesFree": "0%%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
`

// containerLogLinks is where kubelet links every container's log (fixed
// in kubelet, not per node).
const containerLogLinks = "/var/log/containers"

// removeContainerLogLinks removes kubelet's links into dir.
func removeContainerLogLinks(dir string) {
	entries, _ := os.ReadDir(containerLogLinks)
	for _, e := range entries {
		p := filepath.Join(containerLogLinks, e.Name())
		if target, err := os.Readlink(p); err == nil && strings.HasPrefix(target, dir+"/") {
			_ = os.Remove(p)
		}
	}
}

// unmountUnder detaches every mount at or below dir, deepest first:
// kubelet's volume tmpfs, containerd's overlay root filesystems, shm and
// pod netns mounts.
func unmountUnder(dir string) error {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	defer f.Close()
	var mounts []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			mounts = append(mounts, mp)
		}
	}
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i]) > len(mounts[j]) })
	var errs []string
	for _, m := range mounts {
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil && err != syscall.EINVAL && err != syscall.ENOENT {
			errs = append(errs, fmt.Sprintf("umount %s: %v", m, err))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Vsctl runs ovs-vsctl against the node's OVSDB (nsx-ovs's).
func (n *Node) Vsctl(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command("ovs-vsctl", append([]string{"--db=unix:" + filepath.Join(n.RunDir, "db.sock"), "--timeout=10"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: ovs-vsctl %s: %v\n%s", n.Name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// corefile: the CoreDNS config; bind address, kubeconfig, bind address.
// Two server blocks because CoreDNS orders plugins at build time, not by
// the Corefile: in one block template (before kubernetes in plugin.cfg)
// would answer every cluster name with NXDOMAIN.
const corefile = `cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {
    bind %s
    errors
    ready 127.0.0.1:8181
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig %s nsxt
        pods insecure
    }
}
# Names outside the cluster: NXDOMAIN here, never the machine's resolvers
# (test traffic stays on the machine).
.:53 {
    bind %s
    errors
    template ANY ANY {
        rcode NXDOMAIN
    }
}
`

// startDNS runs CoreDNS in the fabric's router, on its node-network
// address: every pod and node routes there. In a production cluster
// CoreDNS runs as pods behind the kube-dns Service; here no pod can reach
// the apiserver (it listens on the host's loopback), so it runs beside the
// router with the apiserver exposed on the router's loopback.
func (c *Cluster) startDNS(t testing.TB) {
	t.Helper()
	bin, err := harness.ToolBinary("coredns")
	if err != nil {
		t.Fatal(err)
	}
	router := c.Fabric.Router
	c.API.ExposeIn(t, router)
	dir := t.TempDir()
	conf := filepath.Join(dir, "Corefile")
	c.DNS = c.Fabric.NodeGateway()
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(corefile, c.DNS, c.API.Kubeconfig, c.DNS)), 0o600); err != nil {
		t.Fatal(err)
	}
	c.progress("cluster DNS: CoreDNS %s at %s", harness.CoreDNSVersion, c.DNS)
	p := StartProcess(t, router, filepath.Join(dir, "coredns.log"), bin, "-conf", conf)
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: router.DialContext}}
	p.WaitReady(t, 60*time.Second, func() error {
		resp, err := hc.Get("http://127.0.0.1:8181/ready")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("coredns /ready: %s", resp.Status)
		}
		// Ready is not answering: resolve the kubernetes Service the way a
		// pod would (its search list makes this name).
		res := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return router.DialContext(ctx, network, net.JoinHostPort(c.DNS.String(), "53"))
		}}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		svc, err := c.Client.CoreV1().Services("default").Get(ctx, "kubernetes", metav1.GetOptions{})
		if err != nil {
			return err
		}
		addrs, err := res.LookupHost(ctx, "kubernetes.default.svc.cluster.local")
		if err != nil {
			return fmt.Errorf("coredns: %w", err)
		}
		if !slices.Equal(addrs, []string{svc.Spec.ClusterIP}) {
			return fmt.Errorf("coredns: kubernetes.default.svc.cluster.local is %v, want %s", addrs, svc.Spec.ClusterIP)
		}
		return nil
	})
}
