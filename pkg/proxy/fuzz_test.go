package proxy

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
)

// fuzzInput is what the API server can hand the proxy for one Service:
// objects it accepted, which need not be sensible.
type fuzzInput struct {
	Service v1.Service                `json:"service"`
	Slices  []discovery.EndpointSlice `json:"slices"`
}

func fuzzSeed(f *testing.F, svc *v1.Service, slices ...*discovery.EndpointSlice) {
	in := fuzzInput{Service: *svc}
	for _, s := range slices {
		in.Slices = append(in.Slices, *s)
	}
	b, err := json.Marshal(in)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
}

// FuzzBuildFrontends feeds BuildFrontends Services and EndpointSlices with
// extreme values (65535 ports, a thousand endpoints, duplicates across
// slices, IPv4-mapped IPv6, addresses that do not parse, families that do
// not match): it never panics, and every frontend it builds is one a
// dataplane can program.
func FuzzBuildFrontends(f *testing.F) {
	many := make([]discovery.Endpoint, 0, 1000)
	for i := 0; i < 1000; i++ {
		many = append(many, endpoint(fmt.Sprintf("10.%d.%d.%d", i/65536, i/256%256, i%256), "", readyC))
	}
	big := mkSlice("ns", "web", "web-big", discovery.AddressTypeIPv4, httpEP, many...)
	fuzzSeed(f, mkService("ns", "web"), big)
	fuzzSeed(f, mkService("ns", "web", withPorts(v1.ServicePort{Name: "http", Protocol: v1.ProtocolTCP, Port: 65535, NodePort: 32767})),
		mkSlice("ns", "web", "a", discovery.AddressTypeIPv4, []discovery.EndpointPort{eport("http", v1.ProtocolTCP, 65535)},
			endpoint("10.1.0.1", "", readyC)),
		mkSlice("ns", "web", "b", discovery.AddressTypeIPv4, []discovery.EndpointPort{eport("http", v1.ProtocolTCP, 65535)},
			endpoint("10.1.0.1", "", readyC), endpoint("::ffff:10.1.0.2", "", readyC), endpoint("not-an-ip", "", readyC)))
	fuzzSeed(f, mkService("ns", "dual", withIPs("10.96.0.20", "fd00::20")),
		mkSlice("ns", "dual", "d4", discovery.AddressTypeIPv6, httpEP, endpoint("10.1.0.3", "", readyC)),
		mkSlice("ns", "dual", "d6", discovery.AddressTypeIPv4, httpEP, endpoint("fd01::3", "", readyC)))
	fuzzSeed(f, mkService("ns", "ext", func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.ExternalIPs = []string{"192.0.2.1", "bogus", "::ffff:192.0.2.2"}
		s.Spec.LoadBalancerSourceRanges = []string{" 10.0.0.0/8 ", "garbage", "::/0"}
		s.Spec.Ports[0].NodePort = 30080
	}))
	node := Node{Name: testNode, Addresses: []netip.Addr{netip.MustParseAddr("192.168.1.2"), netip.MustParseAddr("fd00::2")}}
	f.Fuzz(func(t *testing.T, data []byte) {
		var in fuzzInput
		if err := json.Unmarshal(data, &in); err != nil || skipReason(&in.Service) != "" {
			return
		}
		slices := make([]*discovery.EndpointSlice, len(in.Slices))
		for i := range in.Slices {
			slices[i] = &in.Slices[i]
		}
		for k, fe := range BuildFrontends(&in.Service, slices, node) {
			if err := programmable(k, fe); err != nil {
				t.Fatalf("frontend %s of %s: %v", k, data, err)
			}
		}
	})
}

// programmable checks what both dataplanes rely on.
func programmable(k dataplane.FrontendKey, fe *dataplane.Frontend) error {
	var errs []string
	if fe.Key != k {
		errs = append(errs, fmt.Sprintf("key %s under %s", fe.Key, k))
	}
	if !k.IP.IsValid() || k.IP.Is4In6() || k.IP.Zone() != "" {
		errs = append(errs, fmt.Sprintf("address %s", k.IP))
	}
	if k.Port == 0 {
		errs = append(errs, "port 0")
	}
	if _, ok := dataplane.ProtocolOf(k.Protocol.Number()); !ok {
		errs = append(errs, fmt.Sprintf("protocol %q", k.Protocol))
	}
	seen := map[netip.AddrPort]bool{}
	for _, e := range fe.Endpoints {
		a := e.AddrPort()
		switch {
		case !e.IP.IsValid() || e.IP.Is4In6():
			errs = append(errs, fmt.Sprintf("endpoint address %s", e.IP))
		case e.IP.Is4() != k.IP.Is4():
			errs = append(errs, fmt.Sprintf("endpoint %s of another family", a))
		case e.Port == 0:
			errs = append(errs, fmt.Sprintf("endpoint %s without a port", a))
		case seen[a]:
			errs = append(errs, fmt.Sprintf("endpoint %s twice", a))
		}
		seen[a] = true
	}
	for _, p := range fe.SourceRanges {
		if !p.IsValid() {
			errs = append(errs, fmt.Sprintf("source range %s", p))
		}
	}
	if fe.SNAT.IsValid() && fe.SNAT.Is4() != k.IP.Is4() {
		errs = append(errs, fmt.Sprintf("SNAT address %s of another family", fe.SNAT))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}
