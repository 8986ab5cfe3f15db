package harness

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestVethPing(t *testing.T) {
	a, b := NewNetNS(t), NewNetNS(t)
	VethPair(t, a, "veth-a", b, "veth-b")
	// TEST-NET-1 addresses: they exist only inside the two test namespaces.
	a.Run(t, "ip", "addr", "add", "192.0.2.1/24", "dev", "veth-a")
	b.Run(t, "ip", "addr", "add", "192.0.2.2/24", "dev", "veth-b")

	a.Run(t, "ping", "-c1", "-W2", "192.0.2.2")
	b.Run(t, "ping", "-c1", "-W2", "192.0.2.1")

	err := a.Do(func() error {
		_, err := netlink.LinkByName("veth-a")
		return err
	})
	if err != nil {
		t.Fatalf("veth-a not visible from Do in %s: %v", a.Name, err)
	}
}

func TestStartOVS(t *testing.T) {
	o := StartOVS(t, OVSOptions{Bridges: []string{"br-int"}})
	o.Vsctl(t, "br-exists", "br-int")
	if dt := strings.TrimSpace(o.Vsctl(t, "get", "bridge", "br-int", "datapath_type")); dt != "netdev" {
		t.Errorf("datapath_type = %s, want netdev", dt)
	}
	// The bridge's internal port appears in the OVS netns, not the host's.
	o.NetNS.Run(t, "ip", "link", "show", "br-int")
	if out := o.Ofctl(t, "br-int", "-O", "OpenFlow13", "dump-flows"); !strings.Contains(out, "actions=NORMAL") {
		t.Errorf("default flow missing:\n%s", out)
	}
}

func TestStartOVSParallel(t *testing.T) {
	for _, name := range []string{"one", "two"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			o := StartOVS(t, OVSOptions{Bridges: []string{"br-" + name}})
			o.Vsctl(t, "br-exists", "br-"+name)
			o.Ofctl(t, "br-"+name, "show")
		})
	}
}

// TestSweep plays a test process that died without cleanups: a netns with a
// process inside and a temp dir, both named after a pid that no longer runs.
func TestSweep(t *testing.T) {
	RequireRoot(t)
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	prefix := namePrefix + strconv.Itoa(dead.Process.Pid) + "-"
	name := prefix + "1"
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	t.Cleanup(func() { _ = deleteNetNS(name) })
	n := &NetNS{Name: name, Path: filepath.Join(netnsDir, name)}
	sleeper := n.Exec(context.Background(), "sleep", "600")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- sleeper.Wait() }()
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// A real node's pod: a process outside the netns (as containerd's
	// shims are) in the node's cgroup root.
	root := CgroupRoot(n)
	for _, cg := range []string{root, root + "/pod"} {
		if err := MakeCgroups(cg); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { _ = RemoveCgroups(root) })
	shim := exec.Command("sleep", "600")
	if err := shim.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = shim.Process.Kill() }) // if the test fails before the sweep
	shimExited := make(chan error, 1)
	go func() { shimExited <- shim.Wait() }()
	if err := os.WriteFile(filepath.Join(cgroupFS, "pids", root, "pod", "cgroup.procs"), []byte(strconv.Itoa(shim.Process.Pid)), 0o644); err != nil {
		t.Fatal(err)
	}

	sweep(t.Logf)

	select {
	case <-shimExited:
	case <-time.After(5 * time.Second):
		t.Error("process in the leftover node's cgroup root was not killed")
	}
	if _, err := os.Stat(filepath.Join(cgroupFS, "pids", root)); !os.IsNotExist(err) {
		t.Errorf("cgroup %s still there (%v)", root, err)
	}

	if _, err := os.Stat(n.Path); !os.IsNotExist(err) {
		t.Errorf("netns %s still there (%v)", name, err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("dir %s still there (%v)", dir, err)
	}
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Error("process inside the leftover netns was not killed")
	}
}

func TestAPIServer(t *testing.T) {
	s := StartAPIServer(t)
	c := s.Client(t)
	ctx := t.Context()

	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "harness"}}
	if _, err := c.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "harness"},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "busybox"}}},
	}
	if _, err := c.CoreV1().Pods("harness").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CoreV1().Namespaces().Get(ctx, "harness", metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	}
	got, err := c.CoreV1().Pods("harness").Get(ctx, "p", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.UID == "" || got.Spec.Containers[0].Image != "busybox" {
		t.Errorf("pod read back wrong: %+v", got)
	}
}
