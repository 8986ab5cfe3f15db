package conformance

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
	"github.com/nsx-ujo/nsx-ujo/pkg/proxy"
)

// Service is the test Service (VIP port 80 -> target port "http"), with
// internalTrafficPolicy Local or Cluster.
func Service(local bool) *corev1.Service {
	policy := corev1.ServiceInternalTrafficPolicyCluster
	if local {
		policy = corev1.ServiceInternalTrafficPolicyLocal
	}
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "svc"},
		Spec: corev1.ServiceSpec{ClusterIP: vip, ClusterIPs: []string{vip}, InternalTrafficPolicy: &policy,
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http"), Protocol: corev1.ProtocolTCP}}},
	}
}

// DualStackService is Service(false) with a ClusterIP of each family in
// fams, in that order: RequireDualStack with both, SingleStack with one
// (the other family removed, as a Service downgraded to single-stack).
func DualStackService(fams ...Family) *corev1.Service {
	svc := Service(false)
	svc.Spec.ClusterIPs, svc.Spec.IPFamilies = nil, nil
	for _, f := range fams {
		svc.Spec.ClusterIPs = append(svc.Spec.ClusterIPs, VIP(f).String())
		svc.Spec.IPFamilies = append(svc.Spec.IPFamilies, map[Family]corev1.IPFamily{IPv4: corev1.IPv4Protocol, IPv6: corev1.IPv6Protocol}[f])
	}
	svc.Spec.ClusterIP = svc.Spec.ClusterIPs[0]
	policy := corev1.IPFamilyPolicySingleStack
	if len(fams) > 1 {
		policy = corev1.IPFamilyPolicyRequireDualStack
	}
	svc.Spec.IPFamilyPolicy = &policy
	return svc
}

// SliceEndpoint is one endpoint of Slice.
type SliceEndpoint struct {
	Pod                         *Pod
	Ready, Serving, Terminating bool
	Node                        string
}

// Slice is an EndpointSlice of the test Service with port "http" = 8080.
func Slice(eps ...SliceEndpoint) *discoveryv1.EndpointSlice { return SliceIn(IPv4, eps...) }

// SliceIn is Slice of family f (svc-1 for IPv4, svc-6 for IPv6): the pods'
// addresses of that family.
func SliceIn(f Family, eps ...SliceEndpoint) *discoveryv1.EndpointSlice {
	name, port, proto := "http", int32(8080), corev1.ProtocolTCP
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: "svc-1", Labels: map[string]string{discoveryv1.LabelServiceName: "svc"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &port, Protocol: &proto}},
	}
	if f == IPv6 {
		s.Name, s.AddressType = "svc-6", discoveryv1.AddressTypeIPv6
	}
	for _, e := range eps {
		r, sv, tm, node := e.Ready, e.Serving, e.Terminating, e.Node
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{e.Pod.Addr(f).String()}, NodeName: &node,
			Conditions: discoveryv1.EndpointConditions{Ready: &r, Serving: &sv, Terminating: &tm}})
	}
	return s
}

// ReadySlice is an EndpointSlice of Service namespace/svc: port "http" =
// 8080/TCP on each pod, ready, on this node, stamped with the change
// trigger time the proxy measures programming latency from.
func ReadySlice(namespace, svc string, pods ...*Pod) *discoveryv1.EndpointSlice {
	name, port, proto, ready := "http", int32(8080), corev1.ProtocolTCP, true
	node := NodeName
	s := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: svc + "-1", Namespace: namespace, Labels: map[string]string{discoveryv1.LabelServiceName: svc},
			Annotations: map[string]string{"endpoints.kubernetes.io/last-change-trigger-time": time.Now().UTC().Format(time.RFC3339Nano)}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &port, Protocol: &proto}},
	}
	for _, p := range pods {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{p.IP.String()},
			Conditions: discoveryv1.EndpointConditions{Ready: &ready}, NodeName: &node})
	}
	return s
}

// FromAPI builds the model nsx-kube-proxy's core derives from the objects.
func FromAPI(svc *corev1.Service, slices []*discoveryv1.EndpointSlice) *dataplane.Model {
	return &dataplane.Model{Frontends: proxy.BuildFrontends(svc, slices, proxy.Node{Name: NodeName, Addresses: []netip.Addr{NodeIP, NodeIP6}})}
}

// Instance is one backend under test.
type Instance struct {
	Backend dataplane.ServiceBackend
	// Leftovers lists what of any backend instance remains on the node
	// (flows, groups, maps, programs); it must be empty after Cleanup.
	Leftovers func() []string
	// Close releases the instance without cleaning the dataplane, as a
	// process exit would.
	Close func()
	// Dataplane is nsxctl's name of it (ovs, ebpf); PinDir, its bpffs
	// pin dir (eBPF).
	Dataplane, PinDir string
}

// Factory makes a backend for the env's node. It may be called more than
// once per env (restart).
type Factory func(t *testing.T, e *Env) *Instance

const (
	vip     = "10.96.0.10"
	vip6    = "fd00:10:96::10"
	timeout = 2 * time.Second
)

// VIP is the test Service's ClusterIP in family f.
func VIP(f Family) netip.Addr {
	if f == IPv6 {
		return netip.MustParseAddr(vip6)
	}
	return netip.MustParseAddr(vip)
}

// named prefixes a case's name with its family: IPv4 names stay as they
// were, IPv6 ones start with "IPv6: " (one -run pattern selects them).
func named(f Family, name string) string {
	if f == IPv6 {
		return "IPv6: " + name
	}
	return name
}

// Case is one behaviour.
type Case struct {
	Name string
	Row  string // docs/services.md row(s)
	Run  func(t *testing.T, e *Env, inst *Instance, f Factory)
}

// Run runs every case against the backend factory, each on a fresh node.
func Run(t *testing.T, f Factory) {
	for _, c := range Cases {
		t.Run(c.Name, func(t *testing.T) {
			e := NewEnv(t)
			inst := f(t, e)
			t.Cleanup(func() {
				if inst.Close != nil {
					inst.Close()
				}
			})
			c.Run(t, e, inst, f)
		})
	}
}

// udpMovesOn serves UDP from pod a, lets a client socket reach it in
// family f, runs change (which makes pod b the only endpoint), and checks
// that the same socket (same 5-tuple) reaches b, not a stale conntrack
// entry to a.
func udpMovesOn(t *testing.T, f Family, e *Env, inst *Instance, change func(b *Pod)) {
	t.Helper()
	a, b := e.AddPod("a", 101, 10), e.AddPod("b", 102, 20)
	client := e.AddPod("client", 101, 50)
	a.Serve(t, 5353)
	b.Serve(t, 5353)
	syncModel(t, inst, Model(FrontendIn(f, 53, dataplane.UDP, []*Pod{a}, 5353)))
	c, err := client.UDPConn(addrIn(f, 53))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, err := c.Ask(timeout); err != nil || !strings.HasPrefix(got, "a ") {
		t.Fatalf("first answer %q, %v", got, err)
	}
	change(b)
	if got, err := c.Ask(timeout); err != nil || !strings.HasPrefix(got, "b ") {
		t.Fatalf("after the change the same socket got %q, %v; want b", got, err)
	}
}

// Frontend builds a frontend of the test VIP.
func Frontend(port uint16, proto dataplane.Protocol, eps []*Pod, targetPort uint16) *dataplane.Frontend {
	return FrontendIn(IPv4, port, proto, eps, targetPort)
}

// FrontendIn builds a frontend of the test VIP of family f, over the pods'
// addresses of that family.
func FrontendIn(f Family, port uint16, proto dataplane.Protocol, eps []*Pod, targetPort uint16) *dataplane.Frontend {
	fe := &dataplane.Frontend{Key: dataplane.FrontendKey{IP: VIP(f), Port: port, Protocol: proto},
		Name: dataplane.ServicePortName{Namespace: "default", Name: "svc", Port: fmt.Sprint(port)}}
	for _, p := range eps {
		fe.Endpoints = append(fe.Endpoints, dataplane.Endpoint{IP: p.Addr(f), Port: targetPort, Ready: true, Serving: true, NodeName: NodeName})
	}
	sort.Slice(fe.Endpoints, func(i, j int) bool { return fe.Endpoints[i].IP.Less(fe.Endpoints[j].IP) })
	return fe
}

// NodePortNumber is the nodePort of the test Service.
const NodePortNumber = 30080

// External turns fe into an external frontend of kind on address a:
// externalTrafficPolicy Local (only local endpoints, drop without one) or
// Cluster (SNAT to the node's address of a's family, as
// proxy.BuildFrontends sets it).
func External(fe *dataplane.Frontend, kind dataplane.FrontendKind, a netip.Addr, port uint16, local bool) *dataplane.Frontend {
	fe.Key.IP, fe.Key.Port, fe.Kind, fe.Local = a, port, kind, local
	if local {
		fe.IfEmpty = dataplane.Drop
	} else {
		fe.SNAT = NodeAddr(FamilyOf(a))
	}
	return fe
}

// NodePort is the NodePort frontend on the node's address.
func NodePort(proto dataplane.Protocol, eps []*Pod, local bool) *dataplane.Frontend {
	return NodePortIn(IPv4, proto, eps, local)
}

// NodePortIn is the NodePort frontend on the node's address of family f.
func NodePortIn(f Family, proto dataplane.Protocol, eps []*Pod, local bool) *dataplane.Frontend {
	return External(FrontendIn(f, 80, proto, eps, 8080), dataplane.NodePort, NodeAddr(f), NodePortNumber, local)
}

// Model collects frontends.
func Model(fes ...*dataplane.Frontend) *dataplane.Model {
	m := &dataplane.Model{Frontends: map[dataplane.FrontendKey]*dataplane.Frontend{}}
	for _, fe := range fes {
		m.Frontends[fe.Key] = fe
	}
	return m
}

func syncModel(t *testing.T, inst *Instance, m *dataplane.Model) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := inst.Backend.Sync(ctx, m, dataplane.SyncOptions{}); err != nil {
		t.Fatalf("Sync: %v", err)
	}
}

func addr(port uint16) string { return addrIn(IPv4, port) }

// addrIn is the test VIP's port in family f, as Dial takes it.
func addrIn(f Family, port uint16) string { return netip.AddrPortFrom(VIP(f), port).String() }

// servers gets n times and returns the set of servers that answered.
func servers(t *testing.T, client *Pod, a string, n int, udp bool) map[string]int {
	t.Helper()
	seen := map[string]int{}
	for i := 0; i < n; i++ {
		server, _, err := client.Ask(a, udp, timeout)
		if err != nil {
			t.Fatalf("request %d to %s: %v", i, a, err)
		}
		seen[server]++
	}
	return seen
}

// reachesEveryEndpoint serves port 8080 on eps, syncs TCP and UDP
// frontends of family f on port 80 over them, and checks that client
// reaches every endpoint over both and that the endpoints see client's own
// address.
func reachesEveryEndpoint(t *testing.T, f Family, inst *Instance, client *Pod, eps ...*Pod) {
	t.Helper()
	var names []string
	for _, p := range eps {
		p.Serve(t, 8080)
		names = append(names, p.Name)
	}
	sort.Strings(names)
	want := strings.Join(names, ",")
	syncModel(t, inst, Model(FrontendIn(f, 80, dataplane.TCP, eps, 8080), FrontendIn(f, 80, dataplane.UDP, eps, 8080)))
	n := 15 * len(eps)
	if got := keys(servers(t, client, addrIn(f, 80), n, false)); got != want {
		t.Fatalf("TCP from %s reached %s, want %s", client.Name, got, want)
	}
	if got := keys(servers(t, client, addrIn(f, 80), n, true)); got != want {
		t.Fatalf("UDP from %s reached %s, want %s", client.Name, got, want)
	}
	for _, udp := range []bool{false, true} {
		_, source, err := client.Ask(addrIn(f, 80), udp, timeout)
		if err != nil || source != client.Addr(f).String() {
			t.Fatalf("UDP=%v: server saw source %q (%v), want %s's %s", udp, source, err, client.Name, client.Addr(f))
		}
	}
}

func keys(m map[string]int) string {
	var k []string
	for s := range m {
		k = append(k, s)
	}
	sort.Strings(k)
	return strings.Join(k, ",")
}

func isRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

func isTimeout(err error) bool {
	return errors.Is(err, os.ErrDeadlineExceeded) || strings.Contains(fmt.Sprint(err), "timeout")
}

// Cases is the behaviour table.
var Cases = []Case{
	inspectCase(IPv4),
	reachCase(IPv4),
	nodeReachesCase(IPv4),
	nodePortCase(IPv4),
	affinityRemovedCase(IPv4),
	firstEndpointCase(IPv4),
	{Name: "a SYN from outside whose first copy was lost after the node NATed it connects on its retransmission", Row: "18", Run: func(t *testing.T, e *Env, inst *Instance, _ Factory) {
		a := e.AddPod("a", 101, 10)
		a.Serve(t, 8080)
		outside := e.ExternalClient()
		syncModel(t, inst, Model(NodePort(dataplane.TCP, []*Pod{a}, false)))
		// The router drops the first NATed SYN on its way to the pod: the
		// node has committed the connection, the client sends the SYN again
		// after a second.
		e.Router.Run(t, "nft", "add table ip lose; add chain ip lose lossy { type filter hook forward priority 0 ; }; "+
			"add rule ip lose lossy tcp dport 8080 tcp flags syn / syn,ack drop")
		go func() {
			time.Sleep(300 * time.Millisecond)
			e.Router.Run(t, "nft", "delete table ip lose")
		}()
		if _, _, err := outside.Get(netip.AddrPortFrom(NodeIP, NodePortNumber).String(), 2500*time.Millisecond); err != nil {
			t.Fatalf("the retransmitted SYN did not connect: %v", err)
		}
	}},
	etpLocalCase(IPv4),
	externalIPsCase(IPv4),
	{Name: "multiport service maps each port to its target port", Row: "1", Run: func(t *testing.T, e *Env, inst *Instance, _ Factory) {
		a, b := e.AddPod("a", 101, 10), e.AddPod("b", 102, 20)
		client := e.AddPod("client", 101, 50)
		a.Serve(t, 8080)
		b.Serve(t, 9090)
		syncModel(t, inst, Model(Frontend(80, dataplane.TCP, []*Pod{a}, 8080), Frontend(81, dataplane.TCP, []*Pod{b}, 9090)))
		if got := keys(servers(t, client, addr(80), 5, false)); got != "a" {
			t.Fatalf("port 80 reached %s", got)
		}
		if got := keys(servers(t, client, addr(81), 5, false)); got != "b" {
			t.Fatalf("port 81 reached %s", got)
		}
	}},
	{Name: "endpoints added and removed; established connections keep their backend", Row: "1", Run: func(t *testing.T, e *Env, inst *Instance, _ Factory) {
		a, b := e.AddPod("a", 101, 10), e.AddPod("b", 102, 20)
		client := e.AddPod("client", 101, 50)
		a.Serve(t, 8080)
		b.Serve(t, 8080)
		syncModel(t, inst, Model(Frontend(80, dataplane.TCP, []*Pod{a}, 8080)))
		conn, err := client.Dial(addr(80), timeout)
		if err != nil || conn.Server != "a" {
			t.Fatalf("first connection: %v, server %v", err, conn)
		}
		defer conn.Close()
		syncModel(t, inst, Model(Frontend(80, dataplane.TCP, []*Pod{a, b}, 8080)))
		for i := 0; i < 5; i++ {
			if err := conn.Echo(fmt.Sprint("after add ", i), timeout); err != nil {
				t.Fatalf("established connection broke when an endpoint was added: %v", err)
			}
		}
		if got := keys(servers(t, client, addr(80), 30, false)); got != "a,b" {
			t.Fatalf("after add reached %s, want a,b", got)
		}
		syncModel(t, inst, Model(Frontend(80, dataplane.TCP, []*Pod{b}, 8080)))
		if got := keys(servers(t, client, addr(80), 15, false)); got != "b" {
			t.Fatalf("after removing a reached %s, want b", got)
		}
		if err := conn.Echo("after remove", timeout); err != nil {
			t.Fatalf("established connection to a (still running) broke: %v", err)
		}
	}},
	udpRemovedCase(IPv4),
	udpRecreatedCase(IPv4),
	{Name: "UDP client outside the node moves on when its NodePort endpoint is removed", Row: "9, 18", Run: func(t *testing.T, e *Env, inst *Instance, _ Factory) {
		a, b := e.AddPod("a", 101, 10), e.AddPod("b", 102, 20)
		a.Serve(t, 8080)
		b.Serve(t, 8080)
		outside := e.ExternalClient()
		syncModel(t, inst, Model(NodePort(dataplane.UDP, []*Pod{a}, false)))
		c, err := outside.UDPConn(netip.AddrPortFrom(NodeIP, NodePortNumber).String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if got, err := c.Ask(timeout); err != nil || !strings.HasPrefix(got, "a ") {
			t.Fatalf("first answer %q, %v", got, err)
		}
		syncModel(t, inst, Model(NodePort(dataplane.UDP, []*Pod{b}, false)))
		if got, err := c.Ask(timeout); err != nil || !strings.HasPrefix(got, "b ") {
			t.Fatalf("after the endpoint change the same socket got %q, %v; want b", got, err)
		}
	}},
	{Name: "SCTP: served when the endpoints listen on the Service port, refused otherwise (CRC32c), and a refused change keeps what was served", Row: "14", Run: func(t *testing.T, e *Env, inst *Instance, _ Factory) {
		a, b := e.AddPod("a", 101, 10), e.AddPod("b", 102, 20)
		same := Frontend(3868, dataplane.SCTP, []*Pod{a, b}, 3868)
		rewrite := Frontend(80, dataplane.SCTP, []*Pod{a}, 8080)
		tcp := Frontend(80, dataplane.TCP, []*Pod{a}, 8080)
		held := func() map[dataplane.FrontendKey][]netip.AddrPort {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			hs, err := Nsxctl(e, inst).Held(ctx, inst.Dataplane)
			if err != nil {
				t.Fatal(err)
			}
			out := map[dataplane.FrontendKey][]netip.AddrPort{}
			for _, h := range hs {
				out[h.Key] = h.Endpoints
			}
			return out
		}
		refusedOnly := func(err error, k dataplane.FrontendKey) {
			t.Helper()
			var fe *dataplane.FrontendErrors
			if !errors.As(err, &fe) || len(fe.Failed) != 1 || fe.Failed[0].Key != k || !errors.Is(fe.Failed[0].Err, dataplane.ErrSCTPPortRewrite) {
				t.Fatalf("Sync: %v; want %s refused alone for its SCTP port rewrite", err, k)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		refusedOnly(inst.Backend.Sync(ctx, Model(same, rewrite, tcp), dataplane.SyncOptions{}), rewrite.Key)
		h := held()
		if got := h[same.Key]; len(got) != 2 || got[0].Port() != 3868 {
			t.Errorf("SCTP frontend on its endpoints' port: held %v, want both endpoints on 3868", got)
		}
		if _, ok := h[rewrite.Key]; ok {
			t.Errorf("SCTP frontend with a port rewrite is programmed: %v", h[rewrite.Key])
		}
		if len(h[tcp.Key]) != 1 {
			t.Errorf("the TCP frontend beside the refused one: held %v", h[tcp.Key])
		}
		// The served one's endpoints move to another port: refused, and it
		// keeps serving what it had (as any refused frontend).
		moved := Frontend(3868, dataplane.SCTP, []*Pod{a, b}, 3869)
		refusedOnly(inst.Backend.Sync(ctx, Model(moved, tcp), dataplane.SyncOptions{Full: true}), moved.Key)
		if got := held()[same.Key]; len(got) != 2 || got[0].Port() != 3868 {
			t.Errorf("after a refused change the SCTP frontend holds %v, want what it had (3868)", got)
		}
	}},
	deletedCase(IPv4),
	affinityExpiresCase(IPv4),
	noEndpointsCase(IPv4),
	itpLocalDropCase(IPv4),
	{Name: "terminating endpoints serve only when no endpoint is ready", Row: "6", Run: func(t *testing.T, e *Env, inst *Instance, _ Factory) {
		a, b, c := e.AddPod("a", 101, 10), e.AddPod("b", 102, 20), e.AddPod("c", 101, 30)
		client := e.AddPod("client", 101, 50)
		for _, p := range []*Pod{a, b, c} {
			p.Serve(t, 8080)
		}
		svc := Service(false)
		// a: serving and terminating; b: terminating, not serving.
		slices := []*discoveryv1.EndpointSlice{Slice(
			SliceEndpoint{Pod: a, Ready: false, Serving: true, Terminating: true, Node: NodeName},
			SliceEndpoint{Pod: b, Ready: false, Serving: false, Terminating: true, Node: NodeName})}
		syncModel(t, inst, FromAPI(svc, slices))
		if got := keys(servers(t, client, addr(80), 10, false)); got != "a" {
			t.Fatalf("with no ready endpoint reached %s, want the serving terminating a", got)
		}
		slices = append(slices, Slice(SliceEndpoint{Pod: c, Ready: true, Serving: true, Node: NodeName}))
		slices[1].Name = "svc-2"
		syncModel(t, inst, FromAPI(svc, slices))
		if got := keys(servers(t, client, addr(80), 10, false)); got != "c" {
			t.Fatalf("with c ready reached %s, want only c", got)
		}
	}},
	{Name: "internalTrafficPolicy Local uses only this node's endpoints", Row: "5", Run: func(t *testing.T, e *Env, inst *Instance, _ Factory) {
		a, b := e.AddPod("a", 101, 10), e.AddPod("b", 102, 20)
		client := e.AddPod("client", 101, 50)
		a.Serve(t, 8080)
		b.Serve(t, 8080)
		slices := []*discoveryv1.EndpointSlice{Slice(
			SliceEndpoint{Pod: a, Ready: true, Serving: true, Node: NodeName},
			SliceEndpoint{Pod: b, Ready: true, Serving: true, Node: "node2"})}
		syncModel(t, inst, FromAPI(Service(true), slices))
		if got := keys(servers(t, client, addr(80), 15, false)); got != "a" {
			t.Fatalf("Local policy reached %s, want only the local a", got)
		}
		syncModel(t, inst, FromAPI(Service(false), slices))
		if got := keys(servers(t, client, addr(80), 30, false)); got != "a,b" {
			t.Fatalf("Cluster policy reached %s, want a,b", got)
		}
	}},
	hairpinCase(IPv4),
	{Name: "restart of the backend keeps established connections", Row: "15", Run: func(t *testing.T, e *Env, inst *Instance, f Factory) {
		a, b := e.AddPod("a", 101, 10), e.AddPod("b", 102, 20)
		client := e.AddPod("client", 101, 50)
		a.Serve(t, 8080)
		b.Serve(t, 8080)
		m := Model(Frontend(80, dataplane.TCP, []*Pod{a, b}, 8080))
		syncModel(t, inst, m)
		conn, err := client.Dial(addr(80), timeout)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		inst.Close()
		inst.Close = nil
		if err := conn.Echo("while down", timeout); err != nil {
			t.Fatalf("connection broke while the proxy was down: %v", err)
		}
		again := f(t, e)
		t.Cleanup(func() {
			if again.Close != nil {
				again.Close()
			}
		})
		syncModel(t, again, Model(Frontend(80, dataplane.TCP, []*Pod{a, b}, 8080)))
		if err := conn.Echo("after restart", timeout); err != nil {
			t.Fatalf("connection broke across the restart: %v", err)
		}
		if got := keys(servers(t, client, addr(80), 20, false)); got != "a,b" {
			t.Fatalf("after restart reached %s", got)
		}
	}},
	{Name: "endpoints whose flows once collided are both served", Row: "1", Run: func(t *testing.T, e *Env, inst *Instance, _ Factory) {
		// 10.1.23.199:8080 and 10.2.7.132:8080 had the same 32-bit
		// cookie hash in the OVS driver that identified flows by it: one
		// of them got no DNAT flow and its connections were dropped.
		a, b := e.AddPod("a", 103, 199), e.AddPod("b", 104, 132)
		client := e.AddPod("client", 101, 50)
		a.Serve(t, 8080)
		b.Serve(t, 8080)
		syncModel(t, inst, Model(Frontend(80, dataplane.TCP, []*Pod{a, b}, 8080)))
		seen := map[string]int{}
		missing := func() string {
			var m []string
			for _, p := range []*Pod{a, b} {
				if seen[p.Name] == 0 {
					m = append(m, fmt.Sprintf("%s (%s:8080)", p.Name, p.IP))
				}
			}
			return strings.Join(m, ", ")
		}
		for i := 0; i < 200 && len(seen) < 2; i++ {
			server, _, err := client.Get(addr(80), timeout)
			if err != nil {
				t.Fatalf("connection %d failed, endpoint not served so far: %s: %v", i, missing(), err)
			}
			seen[server]++
		}
		if len(seen) != 2 {
			t.Fatalf("endpoint %s never answered in 200 connections (answered: %v)", missing(), seen)
		}
	}},
	{Name: "a Service with 2000 endpoints is balanced; small Services beside it keep changing", Row: "1", Run: func(t *testing.T, e *Env, inst *Instance, _ Factory) {
		const perPod, base = 500, 20000
		pods := []*Pod{e.AddPod("a", 101, 10), e.AddPod("b", 102, 20), e.AddPod("c", 101, 30), e.AddPod("d", 102, 40)}
		client := e.AddPod("client", 101, 50)
		big := Frontend(80, dataplane.TCP, nil, 0)
		for _, p := range pods {
			for i := 0; i < perPod; i++ {
				port := uint16(base + i)
				p.ServeAs(t, port, fmt.Sprintf("%s:%d", p.Name, port))
				big.Endpoints = append(big.Endpoints, dataplane.Endpoint{IP: p.IP, Port: port, Ready: true, Serving: true, NodeName: NodeName})
			}
		}
		pods[0].Serve(t, 8080)
		pods[1].Serve(t, 8080)
		small := Frontend(81, dataplane.TCP, pods[:1], 8080)
		syncModel(t, inst, Model(big, small))
		const conns = 400
		seen := servers(t, client, addr(80), conns, false)
		perPodSeen := map[string]int{}
		most := 0
		for ep, n := range seen {
			pod, _, _ := strings.Cut(ep, ":")
			perPodSeen[pod] += n
			most = max(most, n)
		}
		// 400 uniform picks from 2000: about 360 distinct, none more than
		// a handful of times, about 100 per pod.
		if len(seen) < 300 || most > 8 {
			t.Errorf("%d connections reached %d distinct endpoints, the busiest %d times: not balanced over 2000", conns, len(seen), most)
		}
		for _, p := range pods {
			if perPodSeen[p.Name] < 50 {
				t.Errorf("pod %s got %d of %d connections (per pod: %v)", p.Name, perPodSeen[p.Name], conns, perPodSeen)
			}
		}
		if got := servers(t, client, addr(81), 5, false); keys(got) != "a" {
			t.Fatalf("small service reached %s, want a", keys(got))
		}
		// The small one changes while the big one is installed.
		small = Frontend(81, dataplane.TCP, pods[1:2], 8080)
		syncModel(t, inst, Model(big, small))
		if got := servers(t, client, addr(81), 5, false); keys(got) != "b" {
			t.Fatalf("after its change the small service reached %s, want b", keys(got))
		}
		if _, _, err := client.Get(addr(80), timeout); err != nil {
			t.Fatalf("big service after the change: %v", err)
		}
	}},
	{Name: "Cleanup leaves no trace", Row: "-", Run: func(t *testing.T, e *Env, inst *Instance, _ Factory) {
		a := e.AddPod("a", 101, 10)
		client := e.AddPod("client", 101, 50)
		a.Serve(t, 8080)
		fe := Frontend(80, dataplane.TCP, []*Pod{a}, 8080)
		fe.AffinityTimeout = time.Minute
		syncModel(t, inst, Model(fe, Frontend(81, dataplane.UDP, nil, 53)))
		if _, _, err := client.Get(addr(80), timeout); err != nil {
			t.Fatal(err)
		}
		if err := inst.Backend.Cleanup(context.Background()); err != nil {
			t.Fatal(err)
		}
		if left := inst.Leftovers(); len(left) != 0 {
			t.Fatalf("after Cleanup: %v", left)
		}
		if _, _, err := client.Get(addr(80), time.Second); err == nil {
			t.Fatal("service still served after Cleanup")
		}
	}},
	inspectCase(IPv6),
	reachCase(IPv6),
	nodeReachesCase(IPv6),
	nodePortCase(IPv6),
	affinityRemovedCase(IPv6),
	firstEndpointCase(IPv6),
	etpLocalCase(IPv6),
	externalIPsCase(IPv6),
	udpRemovedCase(IPv6),
	udpRecreatedCase(IPv6),
	deletedCase(IPv6),
	affinityExpiresCase(IPv6),
	noEndpointsCase(IPv6),
	itpLocalDropCase(IPv6),
	hairpinCase(IPv6),
	dualStackCase,
}

func reachCase(f Family) Case {
	return Case{Name: named(f, "TCP and UDP on one port reach every endpoint, source IP kept"), Row: "1, 8, 10", Run: func(t *testing.T, e *Env, inst *Instance, _ Factory) {
		client := e.AddPod("client", 101, 50)
		reachesEveryEndpoint(t, f, inst, client, e.AddPod("a", 101, 10), e.AddPod("b", 102, 20), e.AddPod("c", 101, 30))
	}}
}

func nodeReachesCase(f Family) Case {
	return Case{Name: named(f, "the node itself reaches a ClusterIP (TCP and UDP), its source kept"), Row: "17", Run: func(t *testing.T, e *Env, inst *Instance, _ Factory) {
		eps := []*Pod{e.AddPod("a", 101, 10), e.AddPod("b", 102, 20)}
		reachesEveryEndpoint(t, f, inst, e.NodeClient(), eps...)
	}}
}

func nodePortCase(f Family) Case {
	return Case{Name: named(f, "NodePort from outside the node (SNAT to the node), from a pod and from the node; TCP and UDP"), Row: "18, 22", Run: func(t *testing.T, e *Env, inst *Instance, _ Factory) {
		eps := []*Pod{e.AddPod("a", 101, 10), e.AddPod("b", 102, 20)}
		for _, p := range eps {
			p.Serve(t, 8080)
		}
		outside, pod, node := e.ExternalClient(), e.AddPod("client", 101, 50), e.NodeClient()
		syncModel(t, inst, Model(FrontendIn(f, 80, dataplane.TCP, eps, 8080), NodePortIn(f, dataplane.TCP, eps, false), NodePortIn(f, dataplane.UDP, eps, false)))
		np := netip.AddrPortFrom(NodeAddr(f), NodePortNumber).String()
		for _, c := range []struct {
			client *Pod
			source netip.Addr
		}{{outside, NodeAddr(f)}, {pod, pod.Addr(f)}} {
			for _, udp := range []bool{false, true} {
				if got := keys(servers(t, c.client, np, 30, udp)); got != "a,b" {
					t.Fatalf("%s over UDP=%v reached %s, want a,b", c.client.Name, udp, got)
				}
			}
			conn, err := c.client.Dial(np, timeout)
			if err != nil {
				t.Fatalf("%s: %v", c.client.Name, err)
			}
			for i := 0; i < 3; i++ {
				if err := conn.Echo(fmt.Sprint("line ", i), timeout); err != nil {
					t.Fatalf("%s: established NodePort connection: %v", c.client.Name, err)
				}
			}
			conn.Close()
			if conn.Source != c.source.String() {
				t.Fatalf("from %s the server saw %s, want %s", c.client.Name, conn.Source, c.source)
			}
		}
		// The node reaches its own NodePort through loopback, redirected
		// to the ClusterIP (backends.WithLocalNodePorts).
		if got := keys(servers(t, node, np, 30, false)); got != "a,b" {
			t.Fatalf("the node reaching its own NodePort reached %s, want a,b", got)
		}
		// Session affinity holds for clients outside the node.
		aff := NodePortIn(f, dataplane.TCP, eps, false)
		aff.AffinityTimeout = time.Minute
		syncModel(t, inst, Model(aff))
		if seen := servers(t, outside, np, 10, false); len(seen) != 1 {
			t.Fatalf("affinity on a NodePort did not stick for a client outside the node: %v", seen)
		}
		// Without endpoints: rejected from outside too.
		syncModel(t, inst, Model(NodePortIn(f, dataplane.TCP, nil, false)))
		if srv, _, err := outside.Get(np, 5*time.Second); !isRefused(err) {
			t.Fatalf("NodePort without endpoints from outside: %v (server %q), want connection refused", err, srv)
		}
	}}
}

func affinityRemovedCase(f Family) Case {
	return Case{Name: named(f, "ClientIP affinity never follows a removed endpoint, even one another frontend still uses"), Row: "4", Run: func(t *testing.T, e *Env, inst *Instance, _ Factory) {
		a, b := e.AddPod("a", 101, 10), e.AddPod("b", 102, 20)
		client := e.AddPod("client", 101, 50)
		a.Serve(t, 8080)
		b.Serve(t, 8080)
		affine := FrontendIn(f, 80, dataplane.TCP, []*Pod{a}, 8080)
		affine.AffinityTimeout = time.Minute
		other := FrontendIn(f, 81, dataplane.TCP, []*Pod{a}, 8080) // keeps a:8080 an endpoint of the node
		syncModel(t, inst, Model(affine, other))
		if srv, _, err := client.Get(addrIn(f, 80), timeout); err != nil || srv != "a" {
			t.Fatalf("first connection: %q, %v", srv, err)
		}
		moved := FrontendIn(f, 80, dataplane.TCP, []*Pod{b}, 8080)
		moved.AffinityTimeout = time.Minute
		syncModel(t, inst, Model(moved, other))
		for i := 0; i < 5; i++ {
			if srv, _, err := client.Get(addrIn(f, 80), timeout); err != nil || srv != "b" {
				t.Fatalf("connection %d after a left the frontend reached %q (%v), want b: the client's affinity outlived its endpoint", i, srv, err)
			}
		}
	}}
}

func firstEndpointCase(f Family) Case {
	return Case{Name: named(f, "a frontend that gets its first endpoint serves the next connection, TCP and UDP (no cached reject)"), Row: "1, 3", Run: func(t *testing.T, e *Env, inst *Instance, _ Factory) {
		a := e.AddPod("a", 101, 10)
		client := e.AddPod("client", 101, 50)
		a.Serve(t, 8080)
		for i := 0; i < 4; i++ {
			for _, udp := range []bool{false, true} {
				proto := map[bool]dataplane.Protocol{false: dataplane.TCP, true: dataplane.UDP}[udp]
				syncModel(t, inst, Model(FrontendIn(f, 80, proto, nil, 8080)))
				for j := 0; j < 3; j++ {
					if _, _, err := client.Ask(addrIn(f, 80), udp, timeout); !isRefused(err) {
						t.Fatalf("round %d %s without endpoints: %v, want refused", i, proto, err)
					}
				}
				syncModel(t, inst, Model(FrontendIn(f, 80, proto, []*Pod{a}, 8080)))
				if srv, _, err := client.Ask(addrIn(f, 80), udp, timeout); err != nil || srv != "a" {
					t.Fatalf("round %d: the first %s connection after the frontend got an endpoint: %q, %v", i, proto, srv, err)
				}
			}
		}
	}}
}

func etpLocalCase(f Family) Case {
	return Case{Name: named(f, "externalTrafficPolicy Local keeps the client's source; no local endpoint drops"), Row: "19", Run: func(t *testing.T, e *Env, inst *Instance, _ Factory) {
		a := e.AddPod("a", 101, 10)
		a.Serve(t, 8080)
		outside := e.ExternalClient()
		np := netip.AddrPortFrom(NodeAddr(f), NodePortNumber).String()
		syncModel(t, inst, Model(NodePortIn(f, dataplane.TCP, []*Pod{a}, true), NodePortIn(f, dataplane.UDP, []*Pod{a}, true)))
		for _, udp := range []bool{false, true} {
			_, source, err := outside.Ask(np, udp, timeout)
			if err != nil || source != outside.Addr(f).String() {
				t.Fatalf("UDP=%v: server saw %q (%v), want the client's %s", udp, source, err, outside.Addr(f))
			}
		}
		syncModel(t, inst, Model(NodePortIn(f, dataplane.TCP, nil, true)))
		if _, _, err := outside.Get(np, time.Second); !isTimeout(err) {
			t.Fatalf("Local policy without a local endpoint: %v, want the connection dropped (timeout)", err)
		}
	}}
}

func externalIPsCase(f Family) Case {
	return Case{Name: named(f, "external IPs and load-balancer IPs; loadBalancerSourceRanges enforced"), Row: "21", Run: func(t *testing.T, e *Env, inst *Instance, _ Factory) {
		a := e.AddPod("a", 101, 10)
		a.Serve(t, 8080)
		outside, pod := e.ExternalClient(), e.AddPod("client", 102, 50)
		extIP, lbIP := netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("192.0.2.20")
		outsideRange, podRange := ExternalSubnet+".0/24", vlanSubnets[102]+".0/24"
		if f == IPv6 {
			extIP, lbIP = netip.MustParseAddr("2001:db8::10"), netip.MustParseAddr("2001:db8::20")
			outsideRange, podRange = ExternalSubnet6+"/64", subnet6(102)+"/64"
		}
		e.RouteToNode(extIP)
		e.RouteToNode(lbIP)
		ext := External(FrontendIn(f, 80, dataplane.TCP, []*Pod{a}, 8080), dataplane.ExternalIP, extIP, 80, false)
		lb := func(ranges ...string) *dataplane.Frontend {
			fe := External(FrontendIn(f, 80, dataplane.TCP, []*Pod{a}, 8080), dataplane.LoadBalancerIP, lbIP, 80, false)
			for _, r := range ranges {
				fe.SourceRanges = append(fe.SourceRanges, netip.MustParsePrefix(r))
			}
			return fe
		}
		syncModel(t, inst, Model(ext, lb(outsideRange, podRange)))
		for _, c := range []*Pod{outside, pod} {
			for _, to := range []netip.Addr{extIP, lbIP} {
				if _, _, err := c.Get(netip.AddrPortFrom(to, 80).String(), timeout); err != nil {
					t.Fatalf("%s to %s: %v", c.Name, to, err)
				}
			}
		}
		syncModel(t, inst, Model(ext, lb(podRange)))
		if _, _, err := outside.Get(netip.AddrPortFrom(lbIP, 80).String(), time.Second); !isTimeout(err) {
			t.Fatalf("a client outside loadBalancerSourceRanges: %v, want dropped (timeout)", err)
		}
		if _, _, err := pod.Get(netip.AddrPortFrom(lbIP, 80).String(), timeout); err != nil {
			t.Fatalf("a client inside loadBalancerSourceRanges: %v", err)
		}
	}}
}

func udpRemovedCase(f Family) Case {
	return Case{Name: named(f, "UDP client moves on when its endpoint is removed"), Row: "9", Run: func(t *testing.T, e *Env, inst *Instance, _ Factory) {
		// The server pod cycles: a goes, b comes.
		udpMovesOn(t, f, e, inst, func(b *Pod) {
			syncModel(t, inst, Model(FrontendIn(f, 53, dataplane.UDP, []*Pod{b}, 5353)))
		})
	}}
}

func udpRecreatedCase(f Family) Case {
	return Case{Name: named(f, "UDP client moves on when its Service is deleted and created again with another endpoint"), Row: "9, 16", Run: func(t *testing.T, e *Env, inst *Instance, _ Factory) {
		// Found by the differential test: the frontend's conntrack entries
		// outlived it, and a client on the same 5-tuple kept reaching the
		// old endpoint of the recreated Service.
		udpMovesOn(t, f, e, inst, func(b *Pod) {
			syncModel(t, inst, Model())
			syncModel(t, inst, Model(FrontendIn(f, 53, dataplane.UDP, []*Pod{b}, 5353)))
		})
	}}
}

func deletedCase(f Family) Case {
	return Case{Name: named(f, "deleted service stops serving"), Row: "16", Run: func(t *testing.T, e *Env, inst *Instance, _ Factory) {
		a := e.AddPod("a", 101, 10)
		client := e.AddPod("client", 101, 50)
		a.Serve(t, 8080)
		syncModel(t, inst, Model(FrontendIn(f, 80, dataplane.TCP, []*Pod{a}, 8080)))
		if _, _, err := client.Get(addrIn(f, 80), timeout); err != nil {
			t.Fatal(err)
		}
		syncModel(t, inst, Model())
		if _, _, err := client.Get(addrIn(f, 80), time.Second); err == nil {
			t.Fatal("deleted service still answers")
		}
		// Recreated with the same name and VIP: works again.
		syncModel(t, inst, Model(FrontendIn(f, 80, dataplane.TCP, []*Pod{a}, 8080)))
		if _, _, err := client.Get(addrIn(f, 80), timeout); err != nil {
			t.Fatalf("recreated service: %v", err)
		}
	}}
}

func affinityExpiresCase(f Family) Case {
	return Case{Name: named(f, "ClientIP affinity sticks, then expires"), Row: "4", Run: func(t *testing.T, e *Env, inst *Instance, _ Factory) {
		pods := []*Pod{e.AddPod("a", 101, 10), e.AddPod("b", 102, 20), e.AddPod("c", 101, 30)}
		client := e.AddPod("client", 101, 50)
		for _, p := range pods {
			p.Serve(t, 8080)
		}
		fe := FrontendIn(f, 80, dataplane.TCP, pods, 8080)
		fe.AffinityTimeout = time.Second
		syncModel(t, inst, Model(fe))
		first := ""
		changed := false
		// Until the backend changes: with three backends, staying on one
		// for 12 expiries by chance is 3^-11 (6 rounds, 3^-5, failed
		// about once in 250 runs).
		for round := 0; round < 12 && !changed; round++ {
			seen := servers(t, client, addrIn(f, 80), 10, false)
			if len(seen) != 1 {
				t.Fatalf("round %d: affinity did not stick: %v", round, seen)
			}
			if first == "" {
				first = keys(seen)
			} else if keys(seen) != first {
				changed = true
			}
			time.Sleep(2500 * time.Millisecond) // > timeout: affinity expires
		}
		if !changed {
			t.Fatalf("after 12 expiries every round still went to %s: affinity never expired", first)
		}
	}}
}

func noEndpointsCase(f Family) Case {
	return Case{Name: named(f, "no endpoints: rejected at once"), Row: "2, 3", Run: func(t *testing.T, e *Env, inst *Instance, _ Factory) {
		client := e.AddPod("client", 101, 50)
		syncModel(t, inst, Model(FrontendIn(f, 80, dataplane.TCP, nil, 8080), FrontendIn(f, 80, dataplane.UDP, nil, 8080)))
		start := time.Now()
		_, _, err := client.Get(addrIn(f, 80), 5*time.Second)
		if !isRefused(err) || time.Since(start) > 3*time.Second {
			t.Fatalf("TCP to a service without endpoints: %v after %v, want connection refused at once", err, time.Since(start))
		}
		if _, err := client.UDP(addrIn(f, 80), 3*time.Second); !isRefused(err) {
			t.Fatalf("UDP to a service without endpoints: %v, want ICMP port unreachable (connection refused)", err)
		}
	}}
}

func itpLocalDropCase(f Family) Case {
	return Case{Name: named(f, "internalTrafficPolicy Local without local endpoints: dropped"), Row: "3, 5", Run: func(t *testing.T, e *Env, inst *Instance, _ Factory) {
		client := e.AddPod("client", 101, 50)
		fe := FrontendIn(f, 80, dataplane.TCP, nil, 8080)
		fe.Local, fe.IfEmpty = true, dataplane.Drop
		syncModel(t, inst, Model(fe))
		if _, _, err := client.Get(addrIn(f, 80), time.Second); err == nil || isRefused(err) || !isTimeout(err) {
			t.Fatalf("Local without endpoints: %v, want a timeout (drop), not a reject", err)
		}
	}}
}

func hairpinCase(f Family) Case {
	return Case{Name: named(f, "hairpin: a pod reaches itself and sees another source"), Row: "7", Run: func(t *testing.T, e *Env, inst *Instance, _ Factory) {
		a := e.AddPod("a", 101, 10)
		a.Serve(t, 8080)
		syncModel(t, inst, Model(FrontendIn(f, 80, dataplane.TCP, []*Pod{a}, 8080)))
		for i := 0; i < 3; i++ {
			conn, err := a.Dial(addrIn(f, 80), timeout)
			if err != nil {
				t.Fatalf("hairpin connection: %v", err)
			}
			if conn.Server != "a" || conn.Source != HairpinIP(f).String() {
				t.Fatalf("hairpin: server %s saw source %s, want the hairpin address %s (the pod's own address is %s)", conn.Server, conn.Source, HairpinIP(f), a.Addr(f))
			}
			if err := conn.Echo("hairpin", timeout); err != nil {
				t.Fatal(err)
			}
			conn.Close()
		}
	}}
}

// dualStackCase: a RequireDualStack Service has a ClusterIP per family,
// each a frontend of its own (dataplane.FrontendKey) balancing over the
// EndpointSlice of its family; either family's removal leaves the other
// serving, its established connections too.
var dualStackCase = Case{Name: "dual-stack: a ClusterIP per family, each served by its own family's endpoints; removing one family leaves the other serving", Row: "13",
	Run: func(t *testing.T, e *Env, inst *Instance, _ Factory) {
		a, b := e.AddPod("a", 101, 10), e.AddPod("b", 102, 20)
		client := e.AddPod("client", 101, 50)
		a.Serve(t, 8080)
		b.Serve(t, 8080)
		ep := func(p *Pod) SliceEndpoint { return SliceEndpoint{Pod: p, Ready: true, Serving: true, Node: NodeName} }
		// The IPv6 slice holds b alone: which endpoints a frontend reaches
		// tells whose slice it balances over.
		eps := []*discoveryv1.EndpointSlice{SliceIn(IPv4, ep(a), ep(b)), SliceIn(IPv6, ep(b))}
		want := map[Family]string{IPv4: "a,b", IPv6: "b"}
		sync := func(fams ...Family) {
			t.Helper()
			m := FromAPI(DualStackService(fams...), eps)
			if len(m.Frontends) != len(fams) {
				t.Fatalf("the model of a Service with ClusterIPs %v has %d frontends: %v", fams, len(m.Frontends), m.Frontends)
			}
			for k, fe := range m.Frontends {
				for _, ep := range fe.Endpoints {
					if ep.IP.Is6() != k.IP.Is6() {
						t.Fatalf("frontend %s has endpoint %s of the other family", k, ep.AddrPort())
					}
				}
			}
			syncModel(t, inst, m)
		}
		check := func(step string, fams ...Family) {
			t.Helper()
			for _, f := range []Family{IPv4, IPv6} {
				if !slices.Contains(fams, f) {
					if srv, _, err := client.Get(addrIn(f, 80), time.Second); err == nil {
						t.Fatalf("%s: the removed %s ClusterIP still answers (server %s)", step, f, srv)
					}
					continue
				}
				if got := keys(servers(t, client, addrIn(f, 80), 20, false)); got != want[f] {
					t.Fatalf("%s: the %s ClusterIP reached %s, want %s", step, f, got, want[f])
				}
				if _, source, err := client.Get(addrIn(f, 80), timeout); err != nil || source != client.Addr(f).String() {
					t.Fatalf("%s: over %s the server saw %q (%v), want the client's %s", step, f, source, err, client.Addr(f))
				}
			}
		}
		sync(IPv4, IPv6)
		check("dual-stack", IPv4, IPv6)
		held6, err := client.Dial(addrIn(IPv6, 80), timeout)
		if err != nil {
			t.Fatal(err)
		}
		defer held6.Close()
		sync(IPv6)
		check("IPv4 ClusterIP removed", IPv6)
		if err := held6.Echo("IPv4 removed", timeout); err != nil {
			t.Fatalf("an IPv6 connection broke when the IPv4 ClusterIP was removed: %v", err)
		}
		sync(IPv4, IPv6)
		check("IPv4 ClusterIP back", IPv4, IPv6)
		held4, err := client.Dial(addrIn(IPv4, 80), timeout)
		if err != nil {
			t.Fatal(err)
		}
		defer held4.Close()
		sync(IPv4)
		check("IPv6 ClusterIP removed", IPv4)
		if err := held4.Echo("IPv6 removed", timeout); err != nil {
			t.Fatalf("an IPv4 connection broke when the IPv6 ClusterIP was removed: %v", err)
		}
	}}
