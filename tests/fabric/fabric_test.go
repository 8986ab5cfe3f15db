package fabric

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/nsx-ujo/nsx-ujo/pkg/agent/podconfig"
	"github.com/nsx-ujo/nsx-ujo/tests/harness"
)

var api *harness.APIServer

func TestMain(m *testing.M) {
	if code, ok := harness.MainRequiresRoot("tests/fabric"); !ok {
		os.Exit(code)
	}
	s, stop, err := harness.StartAPIServerMain()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	api = s
	code := m.Run()
	stop()
	os.Exit(code)
}

const waitTimeout = 15 * time.Second

// eventually polls check until it passes, failing t with its last error
// after waitTimeout.
func eventually(t *testing.T, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, waitTimeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// testNode is a node netns with an OVS bridge whose uplink trunks to the
// fabric and whose pods are VLAN access ports: the layout nsx-ovs and the
// agent build, made by hand.
type testNode struct {
	ns   *harness.NetNS
	ovs  *harness.OVS
	pods int
}

func newTestNode(t *testing.T, f *Fabric, index int) *testNode {
	t.Helper()
	ns := harness.NewNetNS(t)
	f.ConnectNode(t, ns, "eth0", index)
	o := harness.StartOVS(t, harness.OVSOptions{NetNS: ns, Bridges: []string{"br-int"}})
	o.Vsctl(t, "add-port", "br-int", "eth0")
	return &testNode{ns: ns, ovs: o}
}

// addPod makes a pod netns on the node in namespace's network with host
// number host, and returns it with its address.
func (n *testNode) addPod(t *testing.T, f *Fabric, namespace string, host int) (*harness.NetNS, netip.Addr) {
	t.Helper()
	vlan, subnet, gw := f.Subnet(namespace)
	pod := harness.NewNetNS(t)
	n.pods++
	hostIf := fmt.Sprintf("pod%d", n.pods)
	harness.VethPair(t, n.ns, hostIf, pod, "eth0")
	n.ns.Run(t, "ethtool", "-K", hostIf, "tx", "off")
	pod.Run(t, "ethtool", "-K", "eth0", "tx", "off")
	ip := nthAddr(subnet, host)
	pod.Run(t, "ip", "addr", "add", netip.PrefixFrom(ip, subnet.Bits()).String(), "dev", "eth0")
	pod.Run(t, "ip", "route", "add", "default", "via", gw.String())
	n.ovs.Vsctl(t, "add-port", "br-int", hostIf, fmt.Sprintf("tag=%d", vlan))
	return pod, ip
}

// addPod6 is addPod on a dual-stack fabric: the pod gets the IPv6 address
// of the same host number too (as the NCP stand-in derives it), without
// DAD, and a default route through the IPv6 gateway.
func (n *testNode) addPod6(t *testing.T, f *Fabric, namespace string, host int) (*harness.NetNS, netip.Addr, netip.Addr) {
	t.Helper()
	pod, ip := n.addPod(t, f, namespace, host)
	subnet6, gw6 := f.Subnet6(namespace)
	if !subnet6.IsValid() {
		t.Fatalf("namespace %s has no IPv6 subnet", namespace)
	}
	nw, _ := f.network(namespace)
	ip6 := nw.addr6(ip)
	pod.Run(t, "ip", "-6", "addr", "add", netip.PrefixFrom(ip6, subnet6.Bits()).String(), "dev", "eth0", "nodad")
	pod.Run(t, "ip", "-6", "route", "add", "default", "via", gw6.String())
	return pod, ip, ip6
}

// ping waits until from reaches to (the first packets may wait for ARP and
// MAC learning).
func ping(t *testing.T, from *harness.NetNS, to netip.Addr) {
	t.Helper()
	eventually(t, fmt.Sprintf("ping %s from %s", to, from.Name), func() error {
		out, err := from.Exec(context.Background(), "ping", "-c", "1", "-W", "1", to.String()).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
		return nil
	})
}

// tcpEcho sends a line over TCP from one pod to a listener in the other:
// it fails when checksums are left to an offload nobody does.
func tcpEcho(t *testing.T, from, to *harness.NetNS, addr netip.Addr) {
	t.Helper()
	network := "tcp4"
	if addr.Is6() {
		network = "tcp6"
	}
	var ln net.Listener
	if err := to.Do(func() (err error) { ln, err = net.Listen(network, ":7000"); return err }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		line, _ := bufio.NewReader(c).ReadString('\n')
		fmt.Fprint(c, line)
	}()
	var c net.Conn
	err := from.Do(func() (err error) {
		c, err = net.DialTimeout(network, netip.AddrPortFrom(addr, 7000).String(), 5*time.Second)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintln(c, "hello")
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || got != "hello\n" {
		t.Fatalf("echo over TCP to %s: %q, %v", addr, got, err)
	}
}

func TestTraffic(t *testing.T) {
	f := Start(t, Options{})
	node1, node2 := newTestNode(t, f, 0), newTestNode(t, f, 1)

	t.Run("node network", func(t *testing.T) {
		ping(t, node1.ns, netip.MustParseAddr("172.30.0.1"))
		ping(t, node1.ns, netip.MustParseAddr("172.30.0.11"))
	})
	t.Run("one namespace across nodes", func(t *testing.T) {
		a, _ := node1.addPod(t, f, "blue", 10)
		b, bIP := node2.addPod(t, f, "blue", 11)
		ping(t, a, bIP)
		tcpEcho(t, a, b, bIP)
	})
	t.Run("two namespaces through the router", func(t *testing.T) {
		a, _ := node1.addPod(t, f, "blue", 12)
		b, bIP := node2.addPod(t, f, "green", 10)
		if vlan, subnet, _ := f.Subnet("green"); vlan != 102 || subnet.String() != "10.100.2.0/24" {
			t.Fatalf("second namespace got VLAN %d subnet %s, want 102 10.100.2.0/24", vlan, subnet)
		}
		ping(t, a, bIP)
		tcpEcho(t, a, b, bIP)
	})
}

func newNamespace(t *testing.T, c kubernetes.Interface, name string) {
	t.Helper()
	_, err := c.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// No namespace controller runs: the pods must go by hand, at once (no
	// kubelet confirms a graceful deletion).
	t.Cleanup(func() {
		err := c.CoreV1().Pods(name).DeleteCollection(context.Background(),
			metav1.DeleteOptions{GracePeriodSeconds: new(int64(0))}, metav1.ListOptions{})
		if err != nil {
			t.Errorf("delete pods of %s: %v", name, err)
		}
	})
}

func createPod(t *testing.T, c kubernetes.Interface, namespace, name, node string, labels map[string]string) *corev1.Pod {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, Labels: labels},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "w", Image: "nsx-ujo/workload:test",
			Ports: []corev1.ContainerPort{{Name: "serve", ContainerPort: 8080}}}}},
	}
	pod, err := c.CoreV1().Pods(namespace).Create(context.Background(), pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return pod
}

// waitConfig waits for the pod's network config written for uid.
func waitConfig(t *testing.T, c kubernetes.Interface, namespace, name string, uid types.UID) *podconfig.Config {
	t.Helper()
	var cfg *podconfig.Config
	eventually(t, fmt.Sprintf("config of pod %s/%s", namespace, name), func() error {
		pod, err := c.CoreV1().Pods(namespace).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		cfg, err = podconfig.Parse(pod.Annotations[podconfig.AnnotationKey], string(uid))
		return err
	})
	return cfg
}

func deletePod(t *testing.T, c kubernetes.Interface, namespace, name string, grace int64) {
	t.Helper()
	err := c.CoreV1().Pods(namespace).Delete(context.Background(), name, metav1.DeleteOptions{GracePeriodSeconds: new(grace)})
	if err != nil {
		t.Fatal(err)
	}
}

func TestPodConfig(t *testing.T) {
	c := api.Client(t)
	f := Start(t, Options{Client: c})
	newNamespace(t, c, "cfg-a")
	newNamespace(t, c, "cfg-b")

	// Created first, so the controller has seen it by the time the
	// scheduled pod below is annotated.
	unscheduled := createPod(t, c, "cfg-a", "pending", "", nil)
	p1 := createPod(t, c, "cfg-a", "p1", "node-a", nil)
	cfg := waitConfig(t, c, "cfg-a", "p1", p1.UID)
	vlan, subnet, gw := f.Subnet("cfg-a")
	if vlan != 101 || subnet.String() != "10.100.1.0/24" || gw.String() != "10.100.1.1" {
		t.Fatalf("first namespace: VLAN %d subnet %s gateway %s", vlan, subnet, gw)
	}
	if cfg.IP.String() != "10.100.1.10/24" || cfg.VLAN != vlan || !cfg.Gateway.Equal(gw.AsSlice()) ||
		cfg.MTU != 1500 || cfg.MAC.String() != "02:00:0a:64:01:0a" {
		t.Fatalf("config of p1: %+v", cfg)
	}
	if pod, err := c.CoreV1().Pods("cfg-a").Get(context.Background(), unscheduled.Name, metav1.GetOptions{}); err != nil ||
		pod.Annotations[podconfig.AnnotationKey] != "" {
		t.Fatalf("unscheduled pod: %v, annotations %v", err, pod.Annotations)
	}

	// Recreated under the same name: a config for the new uid, and not
	// the address the old pod had (its caches may still hold it).
	deletePod(t, c, "cfg-a", "p1", 0)
	eventually(t, "p1 gone", func() error {
		_, err := c.CoreV1().Pods("cfg-a").Get(context.Background(), "p1", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("still there: %v", err)
	})
	again := createPod(t, c, "cfg-a", "p1", "node-a", nil)
	if again.UID == p1.UID {
		t.Fatal("recreated pod has the old uid")
	}
	cfg2 := waitConfig(t, c, "cfg-a", "p1", again.UID)
	if !subnet.Contains(netip.MustParseAddr(cfg2.IP.IP.String())) || cfg2.IP.IP.Equal(cfg.IP.IP) {
		t.Fatalf("config of the recreated p1: %v (old %v)", cfg2.IP, cfg.IP)
	}

	// A second namespace gets the next VLAN and subnet.
	q := createPod(t, c, "cfg-b", "q", "node-b", nil)
	cfgQ := waitConfig(t, c, "cfg-b", "q", q.UID)
	if cfgQ.VLAN != 102 || cfgQ.IP.String() != "10.100.2.10/24" || cfgQ.Gateway.String() != "10.100.2.1" {
		t.Fatalf("config of q: %+v", cfgQ)
	}
}

func markReady(t *testing.T, c kubernetes.Interface, namespace, name string) {
	t.Helper()
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:"true"}}}`, ReadyAnnotation)
	if _, err := c.CoreV1().Pods(namespace).Patch(context.Background(), name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

// endpoint is what a test checks of one slice endpoint.
type endpoint struct {
	pod, addr, node          string
	ready, serving, terminat bool
}

func (e endpoint) String() string {
	return fmt.Sprintf("%s=%s@%s ready=%v serving=%v terminating=%v", e.pod, e.addr, e.node, e.ready, e.serving, e.terminat)
}

// waitSlice waits until the Service's slice holds exactly want (by pod
// name) and returns it.
func waitSlice(t *testing.T, c kubernetes.Interface, namespace, svc string, want ...endpoint) *discoveryv1.EndpointSlice {
	t.Helper()
	return waitSliceNamed(t, c, namespace, svc, svc+SliceSuffix, want...)
}

func waitSliceNamed(t *testing.T, c kubernetes.Interface, namespace, svc, name string, want ...endpoint) *discoveryv1.EndpointSlice {
	t.Helper()
	var slice *discoveryv1.EndpointSlice
	eventually(t, fmt.Sprintf("slice %s of %s/%s with %v", name, namespace, svc, want), func() error {
		var err error
		slice, err = c.DiscoveryV1().EndpointSlices(namespace).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		var got []endpoint
		for _, e := range slice.Endpoints {
			if len(e.Addresses) != 1 || e.TargetRef == nil || e.NodeName == nil ||
				e.Conditions.Ready == nil || e.Conditions.Serving == nil || e.Conditions.Terminating == nil {
				return fmt.Errorf("incomplete endpoint %+v", e)
			}
			got = append(got, endpoint{e.TargetRef.Name, e.Addresses[0], *e.NodeName,
				*e.Conditions.Ready, *e.Conditions.Serving, *e.Conditions.Terminating})
		}
		if !slices.Equal(got, want) {
			return fmt.Errorf("endpoints %v", got)
		}
		return nil
	})
	return slice
}

func TestEndpointSlices(t *testing.T) {
	c := api.Client(t)
	Start(t, Options{Client: c})
	const ns = "svc"
	newNamespace(t, c, ns)
	ctx := context.Background()
	web := map[string]string{"app": "web"}
	uids := map[string]types.UID{}
	for i, name := range []string{"web-1", "web-2"} {
		uids[name] = createPod(t, c, ns, name, fmt.Sprintf("node-%d", i), web).UID
	}
	uids["db"] = createPod(t, c, ns, "db", "node-0", map[string]string{"app": "db"}).UID
	addr := map[string]string{}
	for name, uid := range uids {
		addr[name] = waitConfig(t, c, ns, name, uid).IP.IP.String()
	}
	// Ready before the Service exists: its first sync must see it.
	markReady(t, c, ns, "db")

	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns},
		Spec: corev1.ServiceSpec{Selector: web, Ports: []corev1.ServicePort{
			{Name: "http", Port: 80, TargetPort: intstr.FromString("serve")},
			{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromInt32(5353)},
			{Name: "plain", Port: 9000},
		}},
	}
	if _, err := c.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Neither web pod is ready yet: an empty slice.
	slice := waitSlice(t, c, ns, "web")
	if slice.Labels[discoveryv1.LabelServiceName] != "web" || slice.Labels[discoveryv1.LabelManagedBy] != ManagedBy ||
		slice.AddressType != discoveryv1.AddressTypeIPv4 {
		t.Fatalf("slice metadata: %+v", slice.ObjectMeta)
	}

	markReady(t, c, ns, "web-1")
	slice = waitSlice(t, c, ns, "web", endpoint{"web-1", addr["web-1"], "node-0", true, true, false})
	var ports []string
	for _, p := range slice.Ports {
		ports = append(ports, fmt.Sprintf("%s:%d/%s", *p.Name, *p.Port, *p.Protocol))
	}
	if want := []string{"http:8080/TCP", "dns:5353/UDP", "plain:9000/TCP"}; !slices.Equal(ports, want) {
		t.Fatalf("ports %v, want %v", ports, want)
	}
	if ref := slice.Endpoints[0].TargetRef; ref.Kind != "Pod" || ref.Namespace != ns || ref.UID != uids["web-1"] {
		t.Fatalf("targetRef %+v", ref)
	}
	trigger, err := time.Parse(time.RFC3339Nano, slice.Annotations[corev1.EndpointsLastChangeTriggerTime])
	if err != nil || time.Since(trigger) > time.Minute || time.Until(trigger) > time.Second {
		t.Fatalf("trigger time %q: %v", slice.Annotations[corev1.EndpointsLastChangeTriggerTime], err)
	}

	markReady(t, c, ns, "web-2")
	waitSlice(t, c, ns, "web",
		endpoint{"web-1", addr["web-1"], "node-0", true, true, false},
		endpoint{"web-2", addr["web-2"], "node-1", true, true, false})

	// A graceful delete leaves the pod terminating (no kubelet finishes
	// it), then the forced one removes it.
	deletePod(t, c, ns, "web-1", 30)
	waitSlice(t, c, ns, "web",
		endpoint{"web-1", addr["web-1"], "node-0", false, true, true},
		endpoint{"web-2", addr["web-2"], "node-1", true, true, false})
	deletePod(t, c, ns, "web-1", 0)
	waitSlice(t, c, ns, "web", endpoint{"web-2", addr["web-2"], "node-1", true, true, false})

	// Someone deletes our slice: it comes back.
	if err := c.DiscoveryV1().EndpointSlices(ns).Delete(ctx, "web"+SliceSuffix, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitSlice(t, c, ns, "web", endpoint{"web-2", addr["web-2"], "node-1", true, true, false})

	// Services without a selector or headless get none.
	for _, s := range []*corev1.Service{
		{ObjectMeta: metav1.ObjectMeta{Name: "manual", Namespace: ns}, Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "headless", Namespace: ns}, Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Selector: web, Ports: []corev1.ServicePort{{Port: 80}}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: ns}, Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "db"}, Ports: []corev1.ServicePort{{Port: 80}}}},
	} {
		if _, err := c.CoreV1().Services(ns).Create(ctx, s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// The db Service's slice is synced after the other two were seen.
	waitSlice(t, c, ns, "db", endpoint{"db", addr["db"], "node-0", true, true, false})
	for _, name := range []string{"manual", "headless"} {
		if _, err := c.DiscoveryV1().EndpointSlices(ns).Get(ctx, name+SliceSuffix, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Fatalf("slice of %s: %v, want none", name, err)
		}
	}

	if err := c.CoreV1().Services(ns).Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "slice of web deleted", func() error {
		_, err := c.DiscoveryV1().EndpointSlices(ns).Get(ctx, "web"+SliceSuffix, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return errors.Join(errors.New("still there"), err)
	})
}

// TestDualStackTraffic: on a dual-stack fabric pods reach each other over
// IPv6 across nodes in one namespace (L2 over the trunks) and across
// namespaces (routed), and IPv4 still works beside it.
func TestDualStackTraffic(t *testing.T) {
	f := Start(t, Options{DualStack: true})
	node1, node2 := newTestNode(t, f, 0), newTestNode(t, f, 1)
	a, _, _ := node1.addPod6(t, f, "blue", 10)
	b, bIP, bIP6 := node2.addPod6(t, f, "blue", 11)
	c, cIP, cIP6 := node2.addPod6(t, f, "green", 10)
	if subnet6, gw6 := f.Subnet6("green"); subnet6.String() != "fd00:10:100:2::/64" || gw6.String() != "fd00:10:100:2::1" ||
		cIP6.String() != "fd00:10:100:2::a" {
		t.Fatalf("second namespace: IPv6 subnet %s gateway %s, pod at host 10 %s", subnet6, gw6, cIP6)
	}
	for _, to := range []struct {
		ns   *harness.NetNS
		addr netip.Addr
	}{{b, bIP6}, {c, cIP6}, {b, bIP}, {c, cIP}} {
		ping(t, a, to.addr)
		tcpEcho(t, a, to.ns, to.addr)
	}
}

// waitSlice6 is waitSlice for the IPv6 slice.
func waitSlice6(t *testing.T, c kubernetes.Interface, namespace, svc string, want ...endpoint) *discoveryv1.EndpointSlice {
	t.Helper()
	return waitSliceNamed(t, c, namespace, svc, svc+SliceSuffixIPv6, want...)
}

// noSlice waits until the slice called name is gone (or never was).
func noSlice(t *testing.T, c kubernetes.Interface, namespace, name string) {
	t.Helper()
	eventually(t, "no slice "+namespace+"/"+name, func() error {
		_, err := c.DiscoveryV1().EndpointSlices(namespace).Get(context.Background(), name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return errors.Join(errors.New("still there"), err)
	})
}

// TestDualStackEndpointSlices: on a dual-stack fabric every pod's config
// carries its IPv6 address; a Service gets one slice per family of its
// ipFamilies (IPv6 named SliceSuffixIPv6, addressType IPv6), both follow
// the pods, and a family the Service drops loses its slice.
func TestDualStackEndpointSlices(t *testing.T) {
	c := api.Client(t)
	f := Start(t, Options{Client: c, DualStack: true})
	const ns = "dual"
	newNamespace(t, c, ns)
	ctx := context.Background()
	web := map[string]string{"app": "web"}
	addr, addr6 := map[string]string{}, map[string]string{}
	for i, name := range []string{"web-1", "web-2"} {
		pod := createPod(t, c, ns, name, fmt.Sprintf("node-%d", i), web)
		cfg := waitConfig(t, c, ns, name, pod.UID)
		subnet6, gw6 := f.Subnet6(ns)
		if cfg.IP6 == nil {
			t.Fatalf("config of %s has no IPv6 address: %+v", name, cfg)
		}
		ip6, ok := netip.AddrFromSlice(cfg.IP6.IP)
		if !ok || !subnet6.Contains(ip6) || !cfg.Gateway6.Equal(gw6.AsSlice()) {
			t.Fatalf("config of %s: IPv6 %v gateway %v, want an address of %s through %s", name, cfg.IP6, cfg.Gateway6, subnet6, gw6)
		}
		if ones, _ := cfg.IP6.Mask.Size(); ones != 64 || ip6.As16()[15] != cfg.IP.IP.To4()[3] {
			t.Fatalf("config of %s: IPv6 %v for IPv4 %v, want the same host number in a /64", name, cfg.IP6, cfg.IP)
		}
		addr[name], addr6[name] = cfg.IP.IP.String(), ip6.String()
		markReady(t, c, ns, name)
	}

	dual := corev1.IPFamilyPolicyRequireDualStack
	single := corev1.IPFamilyPolicySingleStack
	for _, s := range []*corev1.Service{
		{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns}, Spec: corev1.ServiceSpec{Selector: web, IPFamilyPolicy: &dual,
			IPFamilies: []corev1.IPFamily{corev1.IPv6Protocol, corev1.IPv4Protocol}, Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("serve")}}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "six", Namespace: ns}, Spec: corev1.ServiceSpec{Selector: web, IPFamilyPolicy: &single,
			IPFamilies: []corev1.IPFamily{corev1.IPv6Protocol}, Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("serve")}}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "four", Namespace: ns}, Spec: corev1.ServiceSpec{Selector: web,
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("serve")}}}},
	} {
		if _, err := c.CoreV1().Services(ns).Create(ctx, s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	both := func(name string) (endpoint, endpoint) {
		node := map[string]string{"web-1": "node-0", "web-2": "node-1"}[name]
		return endpoint{name, addr[name], node, true, true, false}, endpoint{name, addr6[name], node, true, true, false}
	}
	w1, w1v6 := both("web-1")
	w2, w2v6 := both("web-2")
	waitSlice(t, c, ns, "web", w1, w2)
	s6 := waitSlice6(t, c, ns, "web", w1v6, w2v6)
	if s6.AddressType != discoveryv1.AddressTypeIPv6 || s6.Labels[discoveryv1.LabelServiceName] != "web" ||
		s6.Labels[discoveryv1.LabelManagedBy] != ManagedBy || len(s6.Ports) != 1 || *s6.Ports[0].Port != 8080 {
		t.Fatalf("IPv6 slice of web: type %s, labels %v, ports %v", s6.AddressType, s6.Labels, s6.Ports)
	}
	waitSlice6(t, c, ns, "six", w1v6, w2v6)
	waitSlice(t, c, ns, "four", w1, w2)

	// A pod gone leaves every family's slice.
	deletePod(t, c, ns, "web-1", 0)
	waitSlice(t, c, ns, "web", w2)
	waitSlice6(t, c, ns, "web", w2v6)
	waitSlice6(t, c, ns, "six", w2v6)
	// Checked only now, after a later sync of every Service: right after
	// the first one an unwanted slice might not have been written yet.
	noSlice(t, c, ns, "six"+SliceSuffix)
	noSlice(t, c, ns, "four"+SliceSuffixIPv6)

	// Down to single-stack IPv6 (its primary family): the IPv4 slice goes.
	svc, err := c.CoreV1().Services(ns).Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	svc.Spec.IPFamilyPolicy = &single
	svc.Spec.IPFamilies, svc.Spec.ClusterIPs = svc.Spec.IPFamilies[:1], svc.Spec.ClusterIPs[:1]
	if _, err := c.CoreV1().Services(ns).Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	noSlice(t, c, ns, "web"+SliceSuffix)
	waitSlice6(t, c, ns, "web", w2v6)
}
