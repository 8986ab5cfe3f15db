package proxy

import (
	"net/netip"
	"reflect"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/utils/ptr"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
)

func TestSkipReason(t *testing.T) {
	for _, tc := range []struct {
		name string
		svc  *v1.Service
		want string
	}{
		{"ClusterIP", mkService("ns", "a"), ""},
		{"dual-stack", mkService("ns", "a", withIPs("10.96.0.10", "fd00::10")), ""},
		{"headless", mkService("ns", "a", withIPs("None")), "headless"},
		{"ExternalName", mkService("ns", "a", func(s *v1.Service) {
			s.Spec.Type, s.Spec.ClusterIP, s.Spec.ClusterIPs, s.Spec.ExternalName = v1.ServiceTypeExternalName, "", nil, "example.com"
		}), "ExternalName"},
		{"no cluster IP", mkService("ns", "a", func(s *v1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = "", nil }), "no cluster IP"},
		{"legacy clusterIP only", mkService("ns", "a", func(s *v1.Service) { s.Spec.ClusterIPs = nil }), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := skipReason(tc.svc); got != tc.want {
				t.Errorf("skipReason = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestBuildFrontends(t *testing.T) {
	const ns, name = "ns", "web"
	v4, v6 := discovery.AddressTypeIPv4, discovery.AddressTypeIPv6
	httpPort := []discovery.EndpointPort{eport("http", v1.ProtocolTCP, 8080)}
	spn := func(port string) dataplane.ServicePortName {
		return dataplane.ServicePortName{Namespace: ns, Name: name, Port: port}
	}
	web := fk("10.96.0.10", 80, dataplane.TCP)
	// fe builds the expected frontend of the default "http" port.
	fe := func(key dataplane.FrontendKey, eps ...dataplane.Endpoint) *dataplane.Frontend {
		return &dataplane.Frontend{Key: key, Name: spn("http"), Endpoints: eps, IfEmpty: dataplane.Reject}
	}
	local := func(f *dataplane.Frontend, ifEmpty dataplane.NoEndpointsAction) *dataplane.Frontend {
		f.Local, f.IfEmpty = true, ifEmpty
		return f
	}

	for _, tc := range []struct {
		name   string
		svc    *v1.Service
		slices []*discovery.EndpointSlice
		want   []*dataplane.Frontend
	}{
		{
			name: "single stack, endpoints sorted by address",
			svc:  mkService(ns, name),
			slices: []*discovery.EndpointSlice{mkSlice(ns, name, "s1", v4, httpPort,
				endpoint("10.1.0.20", "node-b", readyC), endpoint("10.1.0.3", testNode, readyC))},
			want: []*dataplane.Frontend{fe(web, readyEP("10.1.0.3", 8080, testNode), readyEP("10.1.0.20", 8080, "node-b"))},
		},
		{
			name: "dual stack: one frontend per family, endpoints of its family",
			svc:  mkService(ns, name, withIPs("10.96.0.10", "fd00::10")),
			slices: []*discovery.EndpointSlice{
				mkSlice(ns, name, "s4", v4, httpPort, endpoint("10.1.0.1", "", readyC)),
				mkSlice(ns, name, "s6", v6, httpPort, endpoint("fd01::1", "", readyC)),
			},
			want: []*dataplane.Frontend{
				fe(web, readyEP("10.1.0.1", 8080, "")),
				fe(fk("fd00::10", 80, dataplane.TCP), readyEP("fd01::1", 8080, "")),
			},
		},
		{
			name: "multiport: slice ports matched by name",
			svc:  mkService(ns, name, withPorts(sport("http", v1.ProtocolTCP, 80), sport("metrics", v1.ProtocolTCP, 9090))),
			slices: []*discovery.EndpointSlice{mkSlice(ns, name, "s1", v4,
				[]discovery.EndpointPort{eport("metrics", v1.ProtocolTCP, 9100), eport("http", v1.ProtocolTCP, 8080)},
				endpoint("10.1.0.1", "", readyC))},
			want: []*dataplane.Frontend{
				fe(web, readyEP("10.1.0.1", 8080, "")),
				{Key: fk("10.96.0.10", 9090, dataplane.TCP), Name: spn("metrics"), Endpoints: []dataplane.Endpoint{readyEP("10.1.0.1", 9100, "")}},
			},
		},
		{
			name: "TCP and UDP on the same port are two frontends",
			svc:  mkService(ns, name, withPorts(sport("dns-tcp", v1.ProtocolTCP, 53), sport("dns", v1.ProtocolUDP, 53))),
			slices: []*discovery.EndpointSlice{mkSlice(ns, name, "s1", v4,
				[]discovery.EndpointPort{eport("dns", v1.ProtocolUDP, 5353), eport("dns-tcp", v1.ProtocolTCP, 5354)},
				endpoint("10.1.0.1", "", readyC))},
			want: []*dataplane.Frontend{
				{Key: fk("10.96.0.10", 53, dataplane.TCP), Name: spn("dns-tcp"), Endpoints: []dataplane.Endpoint{readyEP("10.1.0.1", 5354, "")}},
				{Key: fk("10.96.0.10", 53, dataplane.UDP), Name: spn("dns"), Endpoints: []dataplane.Endpoint{readyEP("10.1.0.1", 5353, "")}},
			},
		},
		{
			name: "SCTP",
			svc:  mkService(ns, name, withPorts(sport("sctp", v1.ProtocolSCTP, 9999))),
			slices: []*discovery.EndpointSlice{mkSlice(ns, name, "s1", v4,
				[]discovery.EndpointPort{eport("sctp", v1.ProtocolSCTP, 9999)}, endpoint("10.1.0.1", "", readyC))},
			want: []*dataplane.Frontend{
				{Key: fk("10.96.0.10", 9999, dataplane.SCTP), Name: spn("sctp"), Endpoints: []dataplane.Endpoint{readyEP("10.1.0.1", 9999, "")}},
			},
		},
		{
			name: "named target port resolves per slice",
			svc:  mkService(ns, name),
			slices: []*discovery.EndpointSlice{
				mkSlice(ns, name, "s1", v4, []discovery.EndpointPort{eport("http", v1.ProtocolTCP, 8080)}, endpoint("10.1.0.1", "", readyC)),
				mkSlice(ns, name, "s2", v4, []discovery.EndpointPort{eport("http", v1.ProtocolTCP, 9000)}, endpoint("10.1.0.2", "", readyC)),
			},
			want: []*dataplane.Frontend{fe(web, readyEP("10.1.0.1", 8080, ""), readyEP("10.1.0.2", 9000, ""))},
		},
		{
			name: "slice ports of another name or protocol do not match",
			svc:  mkService(ns, name),
			slices: []*discovery.EndpointSlice{mkSlice(ns, name, "s1", v4,
				[]discovery.EndpointPort{eport("other", v1.ProtocolTCP, 8080), eport("http", v1.ProtocolUDP, 8080)},
				endpoint("10.1.0.1", "", readyC))},
			want: []*dataplane.Frontend{fe(web)},
		},
		{
			name: "unnamed port, nil conditions mean ready and serving",
			svc:  mkService(ns, name, withPorts(sport("", v1.ProtocolTCP, 80))),
			slices: []*discovery.EndpointSlice{mkSlice(ns, name, "s1", v4,
				[]discovery.EndpointPort{{Name: ptr.To(""), Port: ptr.To(int32(8080))}},
				endpoint("10.1.0.1", "", conds(nil, nil, nil)))},
			want: []*dataplane.Frontend{{Key: web, Name: spn(""), Endpoints: []dataplane.Endpoint{readyEP("10.1.0.1", 8080, "")}}},
		},
		{
			name: "ready endpoints only when there are some",
			svc:  mkService(ns, name),
			slices: []*discovery.EndpointSlice{mkSlice(ns, name, "s1", v4, httpPort,
				endpoint("10.1.0.1", "", readyC), endpoint("10.1.0.2", "", servingTermC), endpoint("10.1.0.3", "", notReadyC))},
			want: []*dataplane.Frontend{fe(web, readyEP("10.1.0.1", 8080, ""))},
		},
		{
			name: "no ready endpoint: fall back to serving terminating ones",
			svc:  mkService(ns, name),
			slices: []*discovery.EndpointSlice{mkSlice(ns, name, "s1", v4, httpPort,
				endpoint("10.1.0.1", "", deadTermC), endpoint("10.1.0.2", "", servingTermC), endpoint("10.1.0.3", "", notReadyC))},
			want: []*dataplane.Frontend{fe(web, dep("10.1.0.2", 8080, "", false, true, true))},
		},
		{
			name:   "no endpoints: reject",
			svc:    mkService(ns, name),
			slices: nil,
			want:   []*dataplane.Frontend{fe(web)},
		},
		{
			name: "only unusable endpoints: reject",
			svc:  mkService(ns, name),
			slices: []*discovery.EndpointSlice{mkSlice(ns, name, "s1", v4, httpPort,
				endpoint("10.1.0.1", "", deadTermC), endpoint("10.1.0.3", "", notReadyC))},
			want: []*dataplane.Frontend{fe(web)},
		},
		{
			name: "internalTrafficPolicy Local: local endpoints only",
			svc:  mkService(ns, name, withLocal),
			slices: []*discovery.EndpointSlice{mkSlice(ns, name, "s1", v4, httpPort,
				endpoint("10.1.0.1", "node-b", readyC), endpoint("10.1.0.2", testNode, readyC))},
			want: []*dataplane.Frontend{local(fe(web, readyEP("10.1.0.2", 8080, testNode)), dataplane.Drop)},
		},
		{
			name: "Local: no local endpoint but remote ones: drop",
			svc:  mkService(ns, name, withLocal),
			slices: []*discovery.EndpointSlice{mkSlice(ns, name, "s1", v4, httpPort,
				endpoint("10.1.0.1", "node-b", readyC), endpoint("10.1.0.2", "", readyC))},
			want: []*dataplane.Frontend{local(fe(web), dataplane.Drop)},
		},
		{
			name:   "Local: no endpoints anywhere: reject, as kube-proxy",
			svc:    mkService(ns, name, withLocal),
			slices: nil,
			want:   []*dataplane.Frontend{local(fe(web), dataplane.Reject)},
		},
		{
			name: "Local: local terminating fallback even with remote ready endpoints",
			svc:  mkService(ns, name, withLocal),
			slices: []*discovery.EndpointSlice{mkSlice(ns, name, "s1", v4, httpPort,
				endpoint("10.1.0.1", "node-b", readyC), endpoint("10.1.0.2", testNode, servingTermC))},
			want: []*dataplane.Frontend{local(fe(web, dep("10.1.0.2", 8080, testNode, false, true, true)), dataplane.Drop)},
		},
		{
			name: "duplicate address across slices: the non-terminating copy wins",
			svc:  mkService(ns, name),
			slices: []*discovery.EndpointSlice{
				mkSlice(ns, name, "s2", v4, httpPort, endpoint("10.1.0.1", "node-b", servingTermC)),
				mkSlice(ns, name, "s1", v4, httpPort, endpoint("10.1.0.1", "node-b", readyC)),
				mkSlice(ns, name, "s3", v4, httpPort, endpoint("10.1.0.1", "node-b", servingTermC)),
			},
			want: []*dataplane.Frontend{fe(web, readyEP("10.1.0.1", 8080, "node-b"))},
		},
		{
			name: "slices of the other family and invalid addresses are ignored",
			svc:  mkService(ns, name),
			slices: []*discovery.EndpointSlice{
				mkSlice(ns, name, "s6", v6, httpPort, endpoint("fd01::1", "", readyC)),
				mkSlice(ns, name, "sf", discovery.AddressTypeFQDN, httpPort, endpoint("example.com", "", readyC)),
				mkSlice(ns, name, "s4", v4, httpPort, endpoint("not-an-ip", "", readyC), endpoint("10.1.0.9", "", readyC),
					discovery.Endpoint{Conditions: readyC}),
			},
			want: []*dataplane.Frontend{fe(web, readyEP("10.1.0.9", 8080, ""))},
		},
		{
			name: "ClientIP affinity, default timeout",
			svc:  mkService(ns, name, func(s *v1.Service) { s.Spec.SessionAffinity = v1.ServiceAffinityClientIP }),
			want: []*dataplane.Frontend{{Key: web, Name: spn("http"), AffinityTimeout: 10800 * time.Second}},
		},
		{
			name: "ClientIP affinity, explicit timeout",
			svc: mkService(ns, name, func(s *v1.Service) {
				s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
				s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To(int32(60))}}
			}),
			want: []*dataplane.Frontend{{Key: web, Name: spn("http"), AffinityTimeout: time.Minute}},
		},
		{
			name: "affinity None ignores a stale config",
			svc: mkService(ns, name, func(s *v1.Service) {
				s.Spec.SessionAffinity = v1.ServiceAffinityNone
				s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To(int32(60))}}
			}),
			want: []*dataplane.Frontend{fe(web)},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := BuildFrontends(tc.svc, tc.slices, Node{Name: testNode})
			want := map[dataplane.FrontendKey]*dataplane.Frontend{}
			for _, f := range tc.want {
				want[f.Key] = f
			}
			if len(got) != len(want) {
				t.Fatalf("got %d frontends %v, want %d", len(got), keysOf(got), len(want))
			}
			for k, w := range want {
				g := got[k]
				if g == nil {
					t.Errorf("frontend %s missing; got %v", k, keysOf(got))
					continue
				}
				if !frontendEqual(g, w) {
					t.Errorf("frontend %s:\n got %+v\nwant %+v", k, *g, *w)
				}
			}
		})
	}
}

func keysOf(m map[dataplane.FrontendKey]*dataplane.Frontend) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k.String())
	}
	return ks
}

func TestFrontendEqual(t *testing.T) {
	a := &dataplane.Frontend{Key: fk("10.96.0.1", 80, dataplane.TCP), Endpoints: []dataplane.Endpoint{readyEP("10.1.0.1", 80, "n")}}
	b := *a
	b.Endpoints = append([]dataplane.Endpoint(nil), a.Endpoints...)
	if !frontendEqual(a, &b) {
		t.Fatal("copies differ")
	}
	if !reflect.DeepEqual(*a, b) {
		t.Fatal("frontendEqual disagrees with DeepEqual on equal values")
	}
	for name, mod := range map[string]func(f *dataplane.Frontend){
		"affinity":  func(f *dataplane.Frontend) { f.AffinityTimeout = time.Second },
		"local":     func(f *dataplane.Frontend) { f.Local = true },
		"ifEmpty":   func(f *dataplane.Frontend) { f.IfEmpty = dataplane.Drop },
		"name":      func(f *dataplane.Frontend) { f.Name.Port = "x" },
		"endpoint":  func(f *dataplane.Frontend) { f.Endpoints[0].Terminating = true },
		"endpoints": func(f *dataplane.Frontend) { f.Endpoints = nil },
	} {
		c := *a
		c.Endpoints = append([]dataplane.Endpoint(nil), a.Endpoints...)
		mod(&c)
		if frontendEqual(a, &c) {
			t.Errorf("%s change not detected", name)
		}
	}
}

func TestBackoff(t *testing.T) {
	limit := time.Second
	want := []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond, time.Second, time.Second}
	for i, w := range want {
		if got := backoff(i+1, limit); got != w {
			t.Errorf("backoff(%d) = %v, want %v", i+1, got, w)
		}
	}
	if got := backoff(1000, 30*time.Second); got != 30*time.Second {
		t.Errorf("backoff(1000) = %v, want the cap", got)
	}
}

func TestBuildExternalFrontends(t *testing.T) {
	const ns, name = "ns", "web"
	node := Node{Name: testNode, Addresses: []netip.Addr{netip.MustParseAddr("10.0.100.2"), netip.MustParseAddr("fd00:100::2")}}
	snat4 := netip.MustParseAddr("10.0.100.2")
	slice := mkSlice(ns, name, "s4", discovery.AddressTypeIPv4, []discovery.EndpointPort{eport("http", v1.ProtocolTCP, 8080)},
		endpoint("10.1.0.1", testNode, servingTermC), endpoint("10.1.0.2", "node-b", readyC))
	here, there := dep("10.1.0.1", 8080, testNode, false, true, true), readyEP("10.1.0.2", 8080, "node-b")
	spn := dataplane.ServicePortName{Namespace: ns, Name: name, Port: "http"}
	nodePort := func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeNodePort
		s.Spec.Ports[0].NodePort = 30080
	}
	for _, tc := range []struct {
		name string
		svc  *v1.Service
		want []*dataplane.Frontend
	}{
		{
			name: "NodePort, Cluster policy: every node address of the Service's families, SNAT to the node",
			svc:  mkService(ns, name, nodePort),
			want: []*dataplane.Frontend{
				{Key: fk("10.96.0.10", 80, dataplane.TCP), Name: spn, Endpoints: []dataplane.Endpoint{there}},
				{Key: fk("10.0.100.2", 30080, dataplane.TCP), Name: spn, Kind: dataplane.NodePort, SNAT: snat4,
					Endpoints: []dataplane.Endpoint{there}},
			},
		},
		{
			name: "NodePort, Local policy: local serving+terminating endpoints, no SNAT; ClusterIP keeps the cluster set",
			svc: mkService(ns, name, nodePort, func(s *v1.Service) {
				s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
			}),
			want: []*dataplane.Frontend{
				{Key: fk("10.96.0.10", 80, dataplane.TCP), Name: spn, Endpoints: []dataplane.Endpoint{there}},
				{Key: fk("10.0.100.2", 30080, dataplane.TCP), Name: spn, Kind: dataplane.NodePort, Local: true,
					Endpoints: []dataplane.Endpoint{here}, IfEmpty: dataplane.Drop},
			},
		},
		{
			name: "externalIPs and VIP-mode load-balancer IPs; Proxy mode and the other family are left out; source ranges on LB IPs only",
			svc: mkService(ns, name, func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeLoadBalancer
				s.Spec.ExternalIPs = []string{"192.0.2.10", "2001:db8::10", "bogus"}
				s.Spec.LoadBalancerSourceRanges = []string{" 198.51.100.0/24 ", "203.0.113.7/32"}
				s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "192.0.2.20"},
					{IP: "192.0.2.21", IPMode: ptr.To(v1.LoadBalancerIPModeVIP)},
					{IP: "192.0.2.22", IPMode: ptr.To(v1.LoadBalancerIPModeProxy)}, {Hostname: "lb.example.com"}}
			}),
			want: []*dataplane.Frontend{
				{Key: fk("10.96.0.10", 80, dataplane.TCP), Name: spn, Endpoints: []dataplane.Endpoint{there}},
				{Key: fk("192.0.2.10", 80, dataplane.TCP), Name: spn, Kind: dataplane.ExternalIP, SNAT: snat4,
					Endpoints: []dataplane.Endpoint{there}},
				{Key: fk("192.0.2.20", 80, dataplane.TCP), Name: spn, Kind: dataplane.LoadBalancerIP, SNAT: snat4,
					Endpoints: []dataplane.Endpoint{there}, SourceRanges: []netip.Prefix{
						netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("203.0.113.7/32")}},
				{Key: fk("192.0.2.21", 80, dataplane.TCP), Name: spn, Kind: dataplane.LoadBalancerIP, SNAT: snat4,
					Endpoints: []dataplane.Endpoint{there}, SourceRanges: []netip.Prefix{
						netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("203.0.113.7/32")}},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := BuildFrontends(tc.svc, []*discovery.EndpointSlice{slice}, node)
			if len(got) != len(tc.want) {
				t.Fatalf("got %d frontends %v, want %d", len(got), keysOf(got), len(tc.want))
			}
			for _, w := range tc.want {
				if g := got[w.Key]; g == nil || !frontendEqual(g, w) {
					t.Errorf("frontend %s:\n got %+v\nwant %+v", w.Key, g, *w)
				}
			}
		})
	}
}
