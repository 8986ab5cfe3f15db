package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/nsx-ujo/nsx-ujo/tests/cluster"
	"github.com/nsx-ujo/nsx-ujo/tests/conformance"
	"github.com/nsx-ujo/nsx-ujo/tests/harness"
)

// bpfPinDirs gives each env one bpf_pin_dir (nsx-kube-proxy mounts a
// bpffs there), unmounted at the end of the test.
var bpfPinDirs = map[*conformance.Env]string{}

func bpfPinDir(t *testing.T, e *conformance.Env) string {
	if d, ok := bpfPinDirs[e]; ok {
		return d
	}
	d := harness.TempDir(t)
	bpfPinDirs[e] = d
	t.Cleanup(func() { delete(bpfPinDirs, e) })
	return d
}

// startKubeProxy runs the real nsx-kube-proxy in the env's node (where
// the API server must be exposed already), with a short drain after a
// switch to OVS.
func startKubeProxy(t *testing.T, e *conformance.Env, dataplane string) *cluster.Process {
	t.Helper()
	return cluster.StartKubeProxy(t, cluster.KubeProxyOptions{BinDir: binDir, Kubeconfig: api.Kubeconfig, Node: e.Node,
		NodeName: conformance.NodeName, OVSRunDir: e.OVS.RunDir, Uplink: conformance.Uplink, PinDir: bpfPinDir(t, e),
		Dataplane: dataplane, ExtraINI: "switch_drain_period = 15"})
}

var httpGetIn = cluster.HTTPGetIn

var slice = conformance.ReadySlice

// eventually retries f for up to 20 s.
func eventually(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func reached(client *conformance.Pod, addr string, n int) map[string]bool {
	seen := map[string]bool{}
	for i := 0; i < n; i++ {
		if s, _, err := client.Get(addr, 2*time.Second); err == nil {
			seen[s] = true
		}
	}
	return seen
}

func wantServers(client *conformance.Pod, addr string, want ...string) func() error {
	return func() error {
		seen := reached(client, addr, 12*len(want))
		if len(seen) != len(want) {
			return fmt.Errorf("reached %v, want %v", seen, want)
		}
		for _, w := range want {
			if !seen[w] {
				return fmt.Errorf("reached %v, want %v", seen, want)
			}
		}
		return nil
	}
}

func TestKubeProxyServesClusterIPFromTheAPI(t *testing.T) {
	for _, dp := range []string{"ovs", "ebpf"} {
		t.Run(dp, func(t *testing.T) { testKubeProxy(t, dp) })
	}
}

func testKubeProxy(t *testing.T, dataplane string) {
	cs := api.Client(t)
	e := conformance.NewEnv(t)
	a, b, c := e.AddPod("a", 101, 10), e.AddPod("b", 102, 20), e.AddPod("c", 101, 30)
	client := e.AddPod("client", 101, 50)
	for _, p := range []*conformance.Pod{a, b, c} {
		p.Serve(t, 8080)
	}
	api.ExposeIn(t, e.Node)
	kp := startKubeProxy(t, e, dataplane)
	ns := newNamespace(t, cs)
	ctx := context.Background()
	svc, err := cs.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http"), Protocol: corev1.ProtocolTCP}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	vip := svc.Spec.ClusterIP + ":80"
	es, err := cs.DiscoveryV1().EndpointSlices(ns).Create(ctx, slice(ns, "web", a, b), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "ClusterIP serves a and b", wantServers(client, vip, "a", "b"))

	// Scale up, then down.
	updateSlice(t, cs, es, a, b, c)
	eventually(t, "after scale-up", wantServers(client, vip, "a", "b", "c"))
	updateSlice(t, cs, es, c)
	eventually(t, "after scale-down", wantServers(client, vip, "c"))

	body, err := httpGetIn(e.Node, "http://127.0.0.1:10256/healthz")
	if err != nil || !strings.Contains(body, `"lastUpdated"`) {
		t.Fatalf("healthz: %q, %v", body, err)
	}
	metrics, err := httpGetIn(e.Node, "http://127.0.0.1:10249/metrics")
	for _, m := range []string{"kubeproxy_sync_proxy_rules_duration_seconds", "kubeproxy_network_programming_duration_seconds_count",
		"kubeproxy_sync_proxy_rules_endpoint_changes_total", "kubeproxy_sync_proxy_rules_service_changes_total"} {
		if err != nil || !strings.Contains(metrics, m) {
			t.Fatalf("metrics lack %s (%v)", m, err)
		}
	}

	// Restart with a connection open: it survives, new ones work.
	conn, err := client.Dial(vip, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	kp.Stop()
	if err := conn.Echo("proxy down", 2*time.Second); err != nil {
		t.Fatalf("connection broke while nsx-kube-proxy was down: %v", err)
	}
	startKubeProxy(t, e, dataplane)
	if err := conn.Echo("proxy back", 2*time.Second); err != nil {
		t.Fatalf("connection broke across the restart: %v", err)
	}
	eventually(t, "after restart", wantServers(client, vip, "c"))

	// Delete: the VIP stops answering.
	if err := cs.CoreV1().Services(ns).Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "deleted service stops answering", func() error {
		if _, _, err := client.Get(vip, time.Second); err == nil {
			return fmt.Errorf("still answers")
		}
		return nil
	})
}

// TestKubeProxyServesExternalFromTheAPI: a LoadBalancer Service with
// externalTrafficPolicy Local through the real API server and the real
// nsx-kube-proxy: a client outside the node reaches it on the NodePort (on
// the Node's InternalIP) and on the load-balancer IP, keeping its source;
// the healthCheckNodePort answers 200 with the local endpoint, then 503
// once the endpoints moved to another node, and the NodePort then drops.
func TestKubeProxyServesExternalFromTheAPI(t *testing.T) {
	for _, dp := range []string{"ovs", "ebpf"} {
		t.Run(dp, func(t *testing.T) { testKubeProxyExternal(t, dp) })
	}
}

func testKubeProxyExternal(t *testing.T, dataplane string) {
	cs := api.Client(t)
	ctx := context.Background()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: conformance.NodeName}}
	if _, err := cs.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	node, err := cs.CoreV1().Nodes().Get(ctx, conformance.NodeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: conformance.NodeIP.String()}}
	if _, err := cs.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e := conformance.NewEnv(t)
	a := e.AddPod("a", 101, 10)
	a.Serve(t, 8080)
	outside := e.ExternalClient()
	// Each run has its own load-balancer IP: without a namespace
	// controller here, an earlier run's Service stays in the API and keeps
	// claiming its IP.
	lbIP := map[string]string{"ovs": "192.0.2.30", "ebpf": "192.0.2.31"}[dataplane]
	e.RouteToNode(netip.MustParseAddr(lbIP))
	api.ExposeIn(t, e.Node)
	startKubeProxy(t, e, dataplane)
	ns := newNamespace(t, cs)
	svc, err := cs.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal,
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http"), Protocol: corev1.ProtocolTCP}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cs.CoreV1().Services(ns).Delete(context.Background(), "web", metav1.DeleteOptions{}) })
	svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: lbIP}}
	if _, err := cs.CoreV1().Services(ns).UpdateStatus(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	es, err := cs.DiscoveryV1().EndpointSlices(ns).Create(ctx, slice(ns, "web", a), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nodePort := fmt.Sprintf("%s:%d", conformance.NodeIP, svc.Spec.Ports[0].NodePort)
	health := fmt.Sprintf("http://%s:%d/", conformance.NodeIP, svc.Spec.HealthCheckNodePort)
	for _, to := range []string{nodePort, lbIP + ":80"} {
		eventually(t, "from outside to "+to, func() error {
			server, source, err := outside.Get(to, time.Second)
			if err == nil && (server != "a" || source != outside.IP.String()) {
				err = fmt.Errorf("server %s saw %s, want a seeing the client's %s", server, source, outside.IP)
			}
			return err
		})
	}
	eventually(t, "healthCheckNodePort with the local endpoint", func() error {
		body, err := httpGetIn(outside.NS, health)
		if err == nil && !strings.Contains(body, `"localEndpoints": 1`) {
			err = fmt.Errorf("body %q", body)
		}
		return err
	})
	// The endpoint moves to another node: 503, and the NodePort drops.
	moved := slice(ns, "web", a)
	other := "node-elsewhere"
	moved.Endpoints[0].NodeName = &other
	cur, err := cs.DiscoveryV1().EndpointSlices(ns).Get(ctx, es.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cur.Endpoints = moved.Endpoints
	if _, err := cs.DiscoveryV1().EndpointSlices(ns).Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "healthCheckNodePort without a local endpoint", func() error {
		body, err := httpGetIn(outside.NS, health)
		if err == nil || !strings.Contains(err.Error(), "503") || !strings.Contains(body, `"localEndpoints": 0`) {
			return fmt.Errorf("got %q, %v; want 503 with localEndpoints 0", body, err)
		}
		return nil
	})
	if _, _, err := outside.Get(nodePort, time.Second); err == nil {
		t.Fatal("the NodePort answered without a local endpoint under externalTrafficPolicy Local")
	}
}

// TestSwitchDataplane moves a node ovs -> ebpf -> ovs: each time the
// Service keeps working and nothing of the other dataplane stays behind.
// Switching a running node's dataplane (the proxy restarted with the other
// one, as a ConfigMap change and a rolling restart do) keeps established
// connections each way and fails no new connection (see the README);
// afterwards only the new dataplane's state is left (eBPF:
// after switch_drain_period).
func TestSwitchDataplane(t *testing.T) {
	cs := api.Client(t)
	e := conformance.NewEnv(t)
	// Four backends: a connection moved to another one breaks (RST), so
	// one kept across a switch kept its backend.
	var backends []*conformance.Pod
	for i, name := range []string{"a", "b", "c", "d"} {
		p := e.AddPod(name, 102, 20+i)
		p.Serve(t, 8080)
		backends = append(backends, p)
	}
	client := e.AddPod("client", 101, 50)
	prober := e.AddPod("prober", 101, 51)
	api.ExposeIn(t, e.Node)
	ns := newNamespace(t, cs)
	ctx := context.Background()
	svc, err := cs.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.DiscoveryV1().EndpointSlices(ns).Create(ctx, slice(ns, "web", backends...), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	vip := svc.Spec.ClusterIP + ":80"
	ourFlows := func() int {
		out := e.OVS.Ofctl(t, "br-int", "-O", "OpenFlow15", "dump-flows", "cookie=0x5a00000000000000/0xfe00000000000000")
		return strings.Count(out, "cookie=")
	}
	pins := bpfPinDir(t, e)
	pinned := func() bool { _, err := os.Stat(filepath.Join(pins, "nsx_services")); return err == nil }
	var p *cluster.Process
	for i, dp := range []string{"ovs", "ebpf", "ovs"} {
		var held []*conformance.Conn
		var probe *newConnProbe
		if p != nil {
			// The old dataplane serves: a connection through it, and a
			// steady stream of new ones across the switch.
			// Eight connections over four backends: one moved to another
			// backend breaks (RST), so all eight surviving a switch by
			// luck is a chance of 4^-8.
			for range 8 {
				c, err := client.Dial(vip, 5*time.Second)
				if err != nil {
					t.Fatalf("round %d: connection before the switch: %v", i, err)
				}
				defer c.Close()
				held = append(held, c)
			}
			probe = startNewConnProbe(prober, vip)
			p.Stop()
		}
		p = startKubeProxy(t, e, dp)
		start := time.Now()
		eventually(t, dp+": serves", wantServers(client, vip, "a", "b", "c", "d"))
		switch dp {
		case "ovs":
			eventually(t, "the OVS service flows installed", func() error {
				if ourFlows() == 0 {
					return errors.New("no flows")
				}
				return nil
			})
		case "ebpf":
			eventually(t, "the OVS service flows removed", func() error {
				if n := ourFlows(); n != 0 {
					return fmt.Errorf("%d OVS service flows left", n)
				}
				return nil
			})
			if !pinned() {
				t.Fatalf("round %d (ebpf): maps not pinned", i)
			}
		}
		if len(held) > 0 {
			// OVS -> eBPF: the connection is adopted for good; eBPF ->
			// OVS: carried by the draining programs until
			// switch_drain_period ends.
			for j, c := range held {
				if err := c.Echo("after the switch", 5*time.Second); err != nil {
					t.Errorf("round %d (to %s): connection %d opened before the switch broke: %v", i, dp, j, err)
				}
			}
			// None may fail: the OVS removal is staged (no packet dropped
			// in it) and the eBPF program keeps a retransmitted SYN on its
			// first backend (README, Switching the dataplane).
			tried, failed := probe.stop()
			if failed > 0 || tried == 0 {
				t.Errorf("round %d (to %s): %d of %d new connections failed during the switch", i, dp, failed, tried)
			}
			t.Logf("switch to %s in %s: %d new connections during it, %d failed; the established ones kept",
				dp, time.Since(start).Round(time.Millisecond), tried, failed)
		}
		if dp == "ovs" && i > 0 {
			eventually(t, "the eBPF dataplane removed after its drain", func() error {
				if pinned() {
					return errors.New("eBPF maps still pinned")
				}
				return nil
			})
		}
	}
	p.Stop()
}

// newConnProbe opens new connections to a frontend back to back (each
// with a 3 s timeout: one SYN retransmission fits) until stopped, counting failures.
type newConnProbe struct {
	done          chan struct{}
	finished      chan struct{}
	tried, failed int
}

func startNewConnProbe(from *conformance.Pod, addr string) *newConnProbe {
	pr := &newConnProbe{done: make(chan struct{}), finished: make(chan struct{})}
	go func() {
		defer close(pr.finished)
		for {
			select {
			case <-pr.done:
				return
			default:
			}
			pr.tried++
			if _, _, err := from.Get(addr, 3*time.Second); err != nil {
				pr.failed++
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	return pr
}

func (pr *newConnProbe) stop() (tried, failed int) {
	close(pr.done)
	<-pr.finished
	return pr.tried, pr.failed
}

func updateSlice(t *testing.T, cs kubernetes.Interface, es *discoveryv1.EndpointSlice, pods ...*conformance.Pod) {
	t.Helper()
	cur, err := cs.DiscoveryV1().EndpointSlices(es.Namespace).Get(context.Background(), es.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	next := slice(es.Namespace, es.Labels[discoveryv1.LabelServiceName], pods...)
	cur.Endpoints, cur.Annotations = next.Endpoints, next.Annotations
	if _, err := cs.DiscoveryV1().EndpointSlices(es.Namespace).Update(context.Background(), cur, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}
