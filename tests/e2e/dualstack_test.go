package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/nsx-ujo/nsx-ujo/pkg/agent/podconfig"
	"github.com/nsx-ujo/nsx-ujo/pkg/nsxctl"
	"github.com/nsx-ujo/nsx-ujo/tests/cluster"
	"github.com/nsx-ujo/nsx-ujo/tests/conformance"
)

// TestClusterDualStackService runs dual-stack Services through the whole
// path, on each dataplane: the real API server allocates the ClusterIPs of
// both families, the fabric's NCP stand-in gives the pods both addresses
// and writes one EndpointSlice per family, the real nsx-node-agent wires
// the pods dual-stack and the real nsx-kube-proxy programs both families.
// A client pod reaches each ClusterIP over TCP and UDP, always a backend
// of that ClusterIP's family, keeping its source address; an IPv6-only
// Service works beside it; a pod added or deleted changes both families.
func TestClusterDualStackService(t *testing.T) {
	for _, dp := range []string{"ovs", "ebpf"} {
		t.Run(dp, func(t *testing.T) { testDualStackService(t, dp) })
	}
}

const dualPort = 8080

func testDualStackService(t *testing.T, dp string) {
	c := cluster.Start(t, cluster.Options{Nodes: 2, Dataplane: dp, BinDir: binDir, API: api})
	// Before any pod of the test's namespace: each gets both addresses.
	c.Fabric.EnableDualStack()
	n1, n2 := c.Nodes[0], c.Nodes[1]
	ns := "dual-" + dp
	createNS(t, c, ns)
	web := map[string]string{"app": "web"}
	a := runDualStackPod(t, c, ns, "a", n1, web)
	b := runDualStackPod(t, c, ns, "b", n2, web)
	client := runDualStackPod(t, c, ns, "client", n1, nil)

	ctx := context.Background()
	dual, single := corev1.IPFamilyPolicyRequireDualStack, corev1.IPFamilyPolicySingleStack
	ports := []corev1.ServicePort{
		{Name: "tcp", Port: 80, TargetPort: intstr.FromInt32(dualPort), Protocol: corev1.ProtocolTCP},
		{Name: "udp", Port: 80, TargetPort: intstr.FromInt32(dualPort), Protocol: corev1.ProtocolUDP},
	}
	svc, err := c.Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns},
		Spec:       corev1.ServiceSpec{Selector: web, IPFamilyPolicy: &dual, Ports: ports},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	webIPs := clusterIPs(t, svc, conformance.IPv4, conformance.IPv6)
	six, err := c.Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "six", Namespace: ns},
		Spec: corev1.ServiceSpec{Selector: web, IPFamilyPolicy: &single,
			IPFamilies: []corev1.IPFamily{corev1.IPv6Protocol}, Ports: ports},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sixIPs := clusterIPs(t, six, conformance.IPv6)

	servesAll := func(what string, backends ...*dualStackPod) {
		t.Helper()
		for _, vip := range slices.Concat(webIPs, sixIPs) {
			for _, udp := range []bool{false, true} {
				servedByFamily(t, what, client, vip, udp, backends...)
			}
		}
	}
	servesAll("both backends", a, b)

	// Scale up: a pod added joins both families of both Services.
	cpod := runDualStackPod(t, c, ns, "c", n2, web)
	servesAll("after c was added", a, b, cpod)
	// Scale down: b deleted leaves both families.
	c.DeletePod(t, b.cluster)
	servesAll("after b was deleted", a, cpod)

	// What an operator sees agrees: nsxctl on the client's node lists each
	// ClusterIP's frontends with the endpoints of its family, no drift.
	want := map[string][]string{}
	for _, vip := range slices.Concat(webIPs, sixIPs) {
		fam := vipFamily(vip)
		eps := []string{netip.AddrPortFrom(a.Addr(fam), dualPort).String(), netip.AddrPortFrom(cpod.Addr(fam), dualPort).String()}
		slices.Sort(eps)
		want[vip+"/TCP"], want[vip+"/UDP"] = eps, eps
	}
	// The trace of a new connection to each ClusterIP starts from the
	// client's address of that family and picks an endpoint of it.
	for _, vip := range slices.Concat(webIPs, sixIPs) {
		out, code := n1.Nsxctl(t, "-o", "json", "trace", "--from", ns+"/client", "--to", vip)
		var tr nsxctl.TraceReport
		err := json.Unmarshal([]byte(out), &tr)
		host, _, _ := net.SplitHostPort(tr.Source)
		if err != nil || code != 0 || tr.Verdict != "forward" || !slices.Contains(want[vip+"/TCP"], tr.Backend) ||
			host != client.Addr(vipFamily(vip)).String() {
			t.Errorf("nsxctl trace to %s: exit %d, %v: %s", vip, code, err, out)
		}
	}
	eventually(t, "nsxctl services "+ns+"/ shows both families without drift", func() error {
		out, code := n1.Nsxctl(t, "-o", "json", "services", ns+"/")
		var r nsxctl.ServicesReport
		if err := json.Unmarshal([]byte(out), &r); err != nil || code != 0 || !r.APIChecked || r.Dataplane != dp {
			return fmt.Errorf("exit %d, %v: %s", code, err, out)
		}
		got := map[string][]string{}
		for _, row := range r.Services {
			eps := slices.Clone(row.Endpoints)
			slices.Sort(eps)
			got[row.Frontend] = eps
		}
		if !maps.EqualFunc(got, want, slices.Equal) {
			return fmt.Errorf("frontends %v, want %v", got, want)
		}
		return nil
	})
}

// dualStackPod is a cluster pod with the address of each family the
// agent configured, serving TCP and UDP on dualPort in both families,
// each answer naming the server's address of the family it came in on.
type dualStackPod struct {
	*conformance.Pod
	cluster *cluster.Pod
}

// runDualStackPod runs a pod through the real CNI on node, checks the
// agent gave it the IPv6 address of its network config, and serves.
func runDualStackPod(t *testing.T, c *cluster.Cluster, ns, name string, node *cluster.Node, labels map[string]string) *dualStackPod {
	t.Helper()
	p := c.RunPod(t, ns, name, node, cluster.PodOptions{Labels: labels})
	cfg, err := podconfig.Parse(p.Obj.Annotations[podconfig.AnnotationKey], string(p.Obj.UID))
	if err != nil {
		t.Fatalf("pod %s/%s: %v", ns, name, err)
	}
	if cfg.IP6 == nil {
		t.Fatalf("pod %s/%s: the fabric gave no IPv6 address: %+v", ns, name, cfg)
	}
	ip6, _ := netip.AddrFromSlice(cfg.IP6.IP)
	// What the agent put on eth0, not just what the annotation asked for.
	out := p.NS.Run(t, "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global")
	if !strings.Contains(out, " "+cfg.IP6.String()+" ") {
		t.Fatalf("pod %s/%s: eth0 lacks %s:\n%s", ns, name, cfg.IP6, out)
	}
	cp := &conformance.Pod{Name: name, NS: p.NS, IP: p.IP, IP6: ip6, VLAN: cfg.VLAN}
	cp.ServeByAddress(t, dualPort)
	return &dualStackPod{Pod: cp, cluster: p}
}

// clusterIPs checks the Service's ClusterIPs are of the families, in that
// order, and returns them as host:80.
func clusterIPs(t *testing.T, svc *corev1.Service, families ...conformance.Family) []string {
	t.Helper()
	var out []string
	for i, s := range svc.Spec.ClusterIPs {
		ip, err := netip.ParseAddr(s)
		if err != nil || i >= len(families) || conformance.FamilyOf(ip) != families[i] {
			t.Fatalf("Service %s: clusterIPs %v (families %v), want families %v", svc.Name, svc.Spec.ClusterIPs, svc.Spec.IPFamilies, families)
		}
		out = append(out, net.JoinHostPort(s, "80"))
	}
	if len(out) != len(families) {
		t.Fatalf("Service %s: clusterIPs %v, want families %v", svc.Name, svc.Spec.ClusterIPs, families)
	}
	return out
}

// servedByFamily waits until requests from client to vip (TCP or UDP)
// reach exactly the backends' addresses of vip's family, every one seeing
// the client's own address of that family.
func servedByFamily(t *testing.T, what string, client *dualStackPod, vip string, udp bool, backends ...*dualStackPod) {
	t.Helper()
	fam := vipFamily(vip)
	var want []string
	for _, b := range backends {
		want = append(want, netip.AddrPortFrom(b.Addr(fam), dualPort).String())
	}
	slices.Sort(want)
	proto := map[bool]string{false: "TCP", true: "UDP"}[udp]
	eventually(t, fmt.Sprintf("%s: %s %s from %s reaches %v", what, proto, vip, client.Name, want), func() error {
		var got []string
		for range 8 * len(want) {
			server, source, err := client.Ask(vip, udp, 2*time.Second)
			if err != nil {
				return err
			}
			if source != client.Addr(fam).String() {
				return fmt.Errorf("%s saw the client as %s, want its %s address %s", server, source, fam, client.Addr(fam))
			}
			got = append(got, server)
		}
		slices.Sort(got)
		if got = slices.Compact(got); !slices.Equal(got, want) {
			return fmt.Errorf("reached %v", got)
		}
		return nil
	})
}

// vipFamily is the family of a host:port.
func vipFamily(vip string) conformance.Family {
	return conformance.FamilyOf(netip.MustParseAddrPort(vip).Addr())
}
