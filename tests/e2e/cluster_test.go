package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/nsx-ujo/nsx-ujo/pkg/agent/podconfig"
	"github.com/nsx-ujo/nsx-ujo/pkg/agent/podnet"
	"github.com/nsx-ujo/nsx-ujo/pkg/nsxctl"
	"github.com/nsx-ujo/nsx-ujo/tests/cluster"
)

func createNS(t *testing.T, c *cluster.Cluster, name string) {
	t.Helper()
	if _, err := c.Client.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func webService(t *testing.T, c *cluster.Cluster, ns string) string {
	t.Helper()
	svc, err := c.Client.CoreV1().Services(ns).Create(context.Background(), &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("serve")}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return svc.Spec.ClusterIP + ":80"
}

// servedBy waits until count requests from client to addr are answered by
// exactly the pods named.
func servedBy(t *testing.T, client *cluster.Pod, addr string, want ...string) {
	t.Helper()
	slices.Sort(want)
	eventually(t, fmt.Sprintf("%s -> %s served by %v", client.Name, addr, want), func() error {
		names, err := client.Get(t, addr, 8*len(want))
		if err != nil {
			return err
		}
		slices.Sort(names)
		names = slices.Compact(names)
		if !slices.Equal(names, want) {
			return fmt.Errorf("served by %v", names)
		}
		return nil
	})
}

func TestClusterPodsAndServicesAcrossNodes(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 2, Dataplane: "ovs", BinDir: binDir, API: api})
	n1, n2 := c.Nodes[0], c.Nodes[1]
	createNS(t, c, "x")
	createNS(t, c, "y")
	web := map[string]string{"app": "web"}
	b := c.RunPod(t, "x", "b", n2, cluster.PodOptions{Labels: web, Serve: 8080})
	client := c.RunPod(t, "x", "client", n1, cluster.PodOptions{})
	other := c.RunPod(t, "y", "other", n2, cluster.PodOptions{Serve: 8080})

	// Cross-node pod to pod, same subnet (L2 over the trunks) and across
	// subnets (routed by the fabric).
	servedBy(t, client, fmt.Sprintf("%s:8080", b.IP), "b")
	servedBy(t, client, fmt.Sprintf("%s:8080", other.IP), "other")

	vip := webService(t, c, "x")
	for _, dp := range []string{"ovs", "ebpf"} {
		if dp == "ebpf" {
			for _, n := range c.Nodes {
				n.StartProxy(t, dp)
			}
		}
		// Backend on the other node only.
		servedBy(t, client, vip, "b")
		// Scale up and down.
		cpod := c.RunPod(t, "x", "c-"+dp, n2, cluster.PodOptions{Labels: web, Serve: 8080})
		servedBy(t, client, vip, "b", "c-"+dp)
		c.DeletePod(t, cpod)
		servedBy(t, client, vip, "b")
		// A pod created after the switch is served (eBPF: attached by the agent in ADD).
		late := c.RunPod(t, "x", "late-"+dp, n1, cluster.PodOptions{})
		servedBy(t, late, vip, "b")
		checkNsxctl(t, n1, dp, vip, b)
		checkListeners(t, n1)
	}
	if err := c.Client.CoreV1().Services("x").Delete(context.Background(), "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "deleted service stops answering", func() error {
		if _, err := client.Get(t, vip, 1); err == nil {
			return fmt.Errorf("still answers")
		}
		return nil
	})
}

// checkListeners: the daemons listen only where ncp.ini says (the test
// cluster's: nsx-kube-proxy's healthz and metrics on 127.0.0.1), the
// agent on its CNI socket alone, which only root can reach.
func checkListeners(t *testing.T, n *cluster.Node) {
	t.Helper()
	out := n.NS.Run(t, "ss", "-H", "-l", "-n", "-p", "-t", "-u", "-x")
	want := map[string][]string{"nsx-kube-proxy": {"127.0.0.1:10256", "127.0.0.1:10249"}}
	got := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 7 {
			continue
		}
		for _, d := range []string{"nsx-kube-proxy", "nsx-node-agent"} {
			if strings.Contains(line, `"`+d+`"`) && f[0] != "u_str" && f[0] != "u_dgr" && f[0] != "u_seq" {
				got[d] = append(got[d], f[4])
			}
		}
	}
	for _, d := range []string{"nsx-kube-proxy", "nsx-node-agent"} {
		slices.Sort(got[d])
		slices.Sort(want[d])
		if !slices.Equal(got[d], want[d]) {
			t.Errorf("%s: %s listens on %v, want %v (ncp.ini's)\n%s", n.Name, d, got[d], want[d], out)
		}
	}
	sock := filepath.Join(n.RunDir, "cni.sock")
	st, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if sys := st.Sys().(*syscall.Stat_t); st.Mode().Perm() != 0o600 || sys.Uid != 0 {
		t.Errorf("%s: the CNI socket is %v owned by uid %d, want 0600 root", n.Name, st.Mode().Perm(), sys.Uid)
	}
}

// The pod lifecycle and daemon restarts, with the pods' configs from the
// annotation and from HyperBus: one table, the same cases.
func TestClusterPodLifecycleAndRestarts(t *testing.T) {
	for _, src := range []cluster.ConfigSource{cluster.FromAnnotation, cluster.FromHyperBus} {
		t.Run(string(src), func(t *testing.T) { podLifecycleAndRestarts(t, src) })
	}
}

func podLifecycleAndRestarts(t *testing.T, src cluster.ConfigSource) {
	c := cluster.Start(t, cluster.Options{Nodes: 2, Dataplane: "ovs", BinDir: binDir, API: api, ConfigSource: src})
	n1, n2 := c.Nodes[0], c.Nodes[1]
	ns := "life-" + string(src)
	createNS(t, c, ns)
	web := map[string]string{"app": "web"}
	c.RunPod(t, ns, "b", n2, cluster.PodOptions{Labels: web, Serve: 8080})
	client := c.RunPod(t, ns, "client", n1, cluster.PodOptions{})
	vip := webService(t, c, ns)
	servedBy(t, client, vip, "b")

	// nsx-kube-proxy restart with a long-lived connection open.
	hold := client.Hold(t, vip)
	n1.StartProxy(t, "ovs")
	time.Sleep(time.Second)
	if !hold.Alive() {
		t.Fatal("the long-lived connection broke across the nsx-kube-proxy restart")
	}
	// nsx-node-agent restart: existing pods keep working, new ADDs work
	// (HyperBus: the fabric reconnects and sends its snapshot).
	n1.StartAgent(t)
	if !hold.Alive() {
		t.Fatal("the long-lived connection broke across the nsx-node-agent restart")
	}
	if src == cluster.FromHyperBus {
		// The session lost: existing pods keep working and the agent
		// stays ready (connect_retry_timeout); a pod created meanwhile
		// gets its config from the next session's snapshot.
		n1.HyperBus.Drop()
		servedBy(t, client, vip, "b")
		if err := n1.CNI.GetStatusNetworkList(context.Background(), n1.List); err != nil {
			t.Fatalf("CNI STATUS without a session, within connect_retry_timeout: %v", err)
		}
		if !hold.Alive() {
			t.Fatal("the long-lived connection broke while the HyperBus session was down")
		}
		n1.HyperBus.Restore()
	}
	hold.Stop()
	newcomer := c.RunPod(t, ns, "newcomer", n1, cluster.PodOptions{})
	servedBy(t, newcomer, vip, "b")

	// Pod delete -> DEL -> port gone.
	port := podnet.HostIfName(newcomer.ContainerID, "eth0")
	c.DeletePod(t, newcomer)
	if out := ovsVsctl(t, n1, "list-ports", "br-int"); strings.Contains(out, port) {
		t.Fatalf("port %s still on br-int after DEL:\n%s", port, out)
	}

	// Recreated with the same name: a new UID, and the agent uses the new
	// config, never the old pod's.
	again := c.RunPod(t, ns, "newcomer", n1, cluster.PodOptions{})
	if again.Obj.UID == newcomer.Obj.UID {
		t.Fatalf("recreated pod has its predecessor's uid %s", again.Obj.UID)
	}
	switch src {
	case cluster.FromAnnotation:
		cfg, err := podconfig.Parse(again.Obj.Annotations[podconfig.AnnotationKey], string(again.Obj.UID))
		if err != nil || cfg.IP.IP.String() != again.IP.String() {
			t.Fatalf("recreated pod: config %+v, %v, wired %s", cfg, err, again.IP)
		}
	case cluster.FromHyperBus:
		// Only the session carries configs; the agent reports the pod.
		if a, ok := again.Obj.Annotations[podconfig.AnnotationKey]; ok {
			t.Fatalf("a pod of a HyperBus node has the annotation %s", a)
		}
		eventually(t, "the agent reports the recreated pod attached", func() error {
			m, ok := n1.HyperBus.Status(ns, "newcomer")
			if !ok || m.State != "attached" || m.Pod.UID != string(again.Obj.UID) || m.Error != "" {
				return fmt.Errorf("status %+v", m)
			}
			return nil
		})
	}
	servedBy(t, again, vip, "b")

	// The audit removes the port of a pod that vanished while the agent
	// was down (no DEL ever came).
	n1.Agent.Stop()
	gone := podnet.HostIfName(again.ContainerID, "eth0")
	if out, err := exec.Command("ip", "netns", "del", again.NS.Name).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if err := c.Client.CoreV1().Pods(ns).Delete(context.Background(), "newcomer", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	n1.StartAgent(t)
	eventually(t, "audit removes the stale port", func() error {
		if out := ovsVsctl(t, n1, "list-ports", "br-int"); strings.Contains(out, gone) {
			return fmt.Errorf("port %s still there", gone)
		}
		return nil
	})
}

func ovsVsctl(t *testing.T, n *cluster.Node, args ...string) string {
	t.Helper()
	out, err := exec.Command("ovs-vsctl", append([]string{"--db=unix:" + n.RunDir + "/db.sock"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ovs-vsctl %v: %v: %s", args, err, out)
	}
	return string(out)
}

// checkNsxctl runs the nsxctl binary on node n as an operator would: the
// dataplane holds what the API says (exit 0), the trace of the client's
// packet to vip names b, and every component is healthy.
func checkNsxctl(t *testing.T, n *cluster.Node, dp, vip string, b *cluster.Pod) {
	t.Helper()
	eventually(t, "nsxctl services x/ shows no drift", func() error {
		out, code := n.Nsxctl(t, "-o", "json", "services", "x/")
		var r nsxctl.ServicesReport
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			return fmt.Errorf("exit %d, output %q: %v", code, out, err)
		}
		if code != 0 || r.Dataplane != dp || !r.APIChecked || len(r.Services) != 1 ||
			!slices.Equal(r.Services[0].Endpoints, []string{b.IP.String() + ":8080"}) {
			return fmt.Errorf("exit %d: %s", code, out)
		}
		return nil
	})
	out, code := n.Nsxctl(t, "-o", "json", "trace", "--from", "x/client", "--to", vip)
	var tr nsxctl.TraceReport
	if err := json.Unmarshal([]byte(out), &tr); err != nil || code != 0 || tr.Verdict != "forward" ||
		tr.Backend != b.IP.String()+":8080" || tr.Service != "x/web:http" {
		t.Fatalf("nsxctl trace: exit %d, %v: %s", code, err, out)
	}
	if out, code := n.Nsxctl(t, "status"); code != 0 {
		t.Fatalf("nsxctl status: exit %d\n%s", code, out)
	}
	if out, code := n.Nsxctl(t, "pods"); code != 0 || !strings.Contains(out, "x/client") {
		t.Fatalf("nsxctl pods: exit %d\n%s", code, out)
	}
}
