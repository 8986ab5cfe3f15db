package ovs

import (
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"antrea.io/libOpenflow/openflow15"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
)

func TestCompileFrontendText(t *testing.T) {
	o := compileOptions{NodeName: "node1", HairpinIP: dataplane.DefaultHairpinIP, HairpinIP6: dataplane.DefaultHairpinIP6}
	cases := []struct {
		name  string
		fe    *dataplane.Frontend
		want  []string // substrings of some flow or the group
		avoid []string
	}{
		{"tcp v4", fe("10.96.0.10", 80, dataplane.TCP, "10.0.1.5:8080"), []string{
			"table=0,priority=200,tcp,nw_dst=10.96.0.10,tp_dst=80,actions=ct(table=70,zone=65520,nat)",
			"table=70,priority=100,ct_state=+new+trk,tcp,nw_dst=10.96.0.10,tp_dst=80,actions=group:1509949447",
			"table=72,priority=100,tcp,reg3=0xa000105,reg2=0x1f90/0xffff,actions=ct(commit,table=73,zone=65520,nat(dst=10.0.1.5:8080))",
			"table=73,priority=100,ip,nw_src=10.0.1.5,nw_dst=10.0.1.5,actions=ct(commit,table=74,zone=65521,nat(src=169.254.169.253))",
			"selection_method=hash,fields(ip_src,ip_dst,tcp_src,tcp_dst)",
		}, []string{"learn"}},
		{"sctp compiles like tcp", fe("10.96.0.11", 9000, dataplane.SCTP, "10.0.1.6:9000"), []string{
			"sctp,nw_dst=10.96.0.11,tp_dst=9000", "fields(ip_src,ip_dst,sctp_src,sctp_dst)", "nat(dst=10.0.1.6:9000)",
		}, nil},
		{"ipv6", fe("fd00::10", 53, dataplane.UDP, "[fd00:1::5]:5353"), []string{
			"udp6,ipv6_dst=fd00::10,tp_dst=53", "xxreg1=0xfd000001000000000000000000000005", "nat(dst=[fd00:1::5]:5353)",
			"fields(ipv6_src,ipv6_dst,udp_src,udp_dst)",
			// A local IPv6 endpoint reaching itself gets the IPv6 hairpin source.
			"table=73,priority=100,ipv6,ipv6_src=fd00:1::5,ipv6_dst=fd00:1::5,actions=ct(commit,table=74,zone=65521,nat(src=fd00:a9fe:a9fe::fd))",
		}, []string{"nw_src=fd00", "169.254"}},
		{"ipv6 affinity learns IPv6 fields into xxreg1", func() *dataplane.Frontend {
			f := fe("fd00::12", 80, dataplane.TCP, "[fd00:1::7]:80")
			f.AffinityTimeout = time.Minute
			return f
		}(), []string{"eth_type=0x86dd,nw_proto=6,NXM_NX_IPV6_SRC[],NXM_NX_IPV6_DST[],NXM_OF_TCP_DST[],load:NXM_NX_XXREG1[]->NXM_NX_XXREG1[]",
			"table=82,priority=100,tcp6,ipv6_dst=fd00::12,tp_dst=80,xxreg1=0xfd000001000000000000000000000007,reg2=0x50/0xffff,actions=resubmit(,72)"},
			[]string{"NXM_OF_IP_SRC", "REG3"}},
		{"ipv6 no endpoints rejects", fe("fd00::13", 80, dataplane.UDP), []string{
			"table=70,priority=100,ct_state=+new+trk,udp6,ipv6_dst=fd00::13,tp_dst=80,actions=controller"}, []string{"group:"}},
		{"affinity clamps to 65535 s", func() *dataplane.Frontend {
			f := fe("10.96.0.12", 80, dataplane.TCP, "10.0.1.7:80")
			f.AffinityTimeout = 86400 * time.Second
			return f
		}(), []string{"resubmit(,71),resubmit(,82)", "table=82,priority=50,tcp,nw_dst=10.96.0.12,tp_dst=80,actions=group:",
			// A learned endpoint is followed only while it is one of the frontend's.
			"table=82,priority=100,tcp,nw_dst=10.96.0.12,tp_dst=80,reg3=0xa000107,reg2=0x50/0xffff,actions=resubmit(,72)",
			"idle_timeout=65535", "resubmit(,78)"}, nil},
		{"no endpoints rejects", fe("10.96.0.13", 80, dataplane.TCP), []string{"actions=controller"}, []string{"group:"}},
		{"local policy drops", func() *dataplane.Frontend {
			f := fe("10.96.0.14", 80, dataplane.TCP)
			f.Local, f.IfEmpty = true, dataplane.Drop
			return f
		}(), []string{"ct_state=+new+trk,tcp,nw_dst=10.96.0.14,tp_dst=80,actions=drop"}, []string{"controller"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := compileFrontend(tc.fe, 7, o)
			var all []string
			for _, f := range append(c.flows, c.shared...) {
				all = append(all, f.text())
			}
			for _, g := range c.groups {
				all = append(all, g.text())
			}
			text := strings.Join(all, "\n")
			for _, w := range tc.want {
				if !strings.Contains(text, w) {
					t.Errorf("missing %q in\n%s", w, text)
				}
			}
			for _, a := range tc.avoid {
				if strings.Contains(text, a) {
					t.Errorf("unexpected %q in\n%s", a, text)
				}
			}
		})
	}
}

func TestRemoteEndpointHasNoHairpinFlow(t *testing.T) {
	for _, f := range []*dataplane.Frontend{fe("10.96.0.10", 80, dataplane.TCP, "10.0.1.5:8080"), fe("fd00::10", 80, dataplane.TCP, "[fd00:1::5]:8080")} {
		f.Endpoints[0].NodeName = "node2"
		c := compileFrontend(f, 1, compileOptions{NodeName: "node1", HairpinIP: dataplane.DefaultHairpinIP, HairpinIP6: dataplane.DefaultHairpinIP6})
		for _, fl := range c.shared {
			if fl.Table == tHairpin {
				t.Fatalf("hairpin flow for a remote endpoint: %s", fl.text())
			}
		}
	}
}

// Hairpin is per family: each hairpin address has its classifier flow
// (the replies to it) and the hairpin replies of both families are
// un-DNATed; a family without a hairpin address gets neither flow.
func TestHairpinFlowsPerFamily(t *testing.T) {
	text := func(fl []Flow) string {
		var s []string
		for _, f := range fl {
			s = append(s, f.text())
		}
		return strings.Join(s, "\n")
	}
	both := text(staticFlows(compileOptions{HairpinIP: dataplane.DefaultHairpinIP, HairpinIP6: dataplane.DefaultHairpinIP6}))
	for _, w := range []string{
		"table=0,priority=210,ip,nw_dst=169.254.169.253,actions=ct(table=75,zone=65521,nat)",
		"table=0,priority=210,ipv6,ipv6_dst=fd00:a9fe:a9fe::fd,actions=ct(table=75,zone=65521,nat)",
		"table=75,priority=100,ct_state=+rpl+trk,ip,actions=ct(table=76,zone=65520,nat)",
		"table=75,priority=100,ct_state=+rpl+trk,ipv6,actions=ct(table=76,zone=65520,nat)",
	} {
		if !strings.Contains(both, w) {
			t.Errorf("missing %q in\n%s", w, both)
		}
	}
	only4 := compileOptions{NodeName: "node1", HairpinIP: dataplane.DefaultHairpinIP}
	if s := text(staticFlows(only4)); strings.Contains(s, "priority=210,ipv6") {
		t.Errorf("an IPv6 hairpin reply flow without an IPv6 hairpin address:\n%s", s)
	}
	c := compileFrontend(fe("fd00::10", 80, dataplane.TCP, "[fd00:1::5]:8080"), 1, only4)
	if s := text(c.shared); strings.Contains(s, "table=73,priority=100") {
		t.Errorf("an IPv6 hairpin flow without an IPv6 hairpin address:\n%s", s)
	}
}

// The pair of endpoints whose DNAT flows shared a cookie hash (and so one
// key) in the hash-identified driver: each is its own flow now.
func TestCollidingEndpointsAreDistinctFlows(t *testing.T) {
	o := compileOptions{NodeName: "node1", HairpinIP: dataplane.DefaultHairpinIP}
	c := compileFrontend(fe("10.96.0.10", 80, dataplane.TCP, "10.1.23.199:8080", "10.2.7.132:8080"), 1, o)
	keys := map[flowKey]Flow{}
	for _, f := range c.shared {
		if prev, dup := keys[f.key()]; dup {
			t.Fatalf("two flows share a key:\n%s\n%s", prev.text(), f.text())
		}
		keys[f.key()] = f
	}
	var nat []string
	for _, f := range c.shared {
		if f.Table == tDNAT {
			nat = append(nat, f.text())
		}
	}
	if len(nat) != 2 || !strings.Contains(strings.Join(nat, "\n"), "nat(dst=10.1.23.199:8080)") || !strings.Contains(strings.Join(nat, "\n"), "nat(dst=10.2.7.132:8080)") {
		t.Fatalf("DNAT flows: %v", nat)
	}
}

// Every message fits OpenFlow's 64 KiB, whatever the frontend's size, and
// every endpoint is in exactly one bucket, weights following the split.
func TestLargeFrontendSplitsGroups(t *testing.T) {
	for _, n := range []int{1, 256, 257, 2000, 10000} {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			f := fe("10.96.0.10", 80, dataplane.TCP)
			for i := 0; i < n; i++ {
				f.Endpoints = append(f.Endpoints, dataplane.Endpoint{IP: netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), Port: 8080})
			}
			f.AffinityTimeout = 3 * time.Hour // the largest buckets: learn path
			c := compileFrontend(f, 9, compileOptions{})
			seen := map[netip.AddrPort]int{}
			total := 0
			for i, g := range c.groups {
				data, err := g.groupMod(openflow15.OFPGC_ADD).MarshalBinary()
				if err != nil || len(data) > 65535-16 {
					t.Fatalf("group %d: %d bytes, %v", g.ID, len(data), err)
				}
				if len(g.Buckets) > maxBuckets {
					t.Fatalf("group %d has %d buckets", g.ID, len(g.Buckets))
				}
				for _, b := range g.Buckets {
					switch a := b.Actions[0].(type) {
					case LoadEndpoint:
						seen[netip.AddrPort(a)]++
					case ToGroup:
						if i != 0 {
							t.Fatalf("sub-group %d points at a group", g.ID)
						}
						total += int(b.Weight)
					}
				}
			}
			if len(seen) != n {
				t.Fatalf("%d endpoints in buckets, want %d", len(seen), n)
			}
			for ep, k := range seen {
				if k != 1 {
					t.Fatalf("%s in %d buckets", ep, k)
				}
			}
			if n > maxBuckets && total != n {
				t.Fatalf("top-level weights sum to %d, want %d", total, n)
			}
			if c.groups[0].ID != frontendGroupID(9) {
				t.Fatalf("frontend group id %x", c.groups[0].ID)
			}
		})
	}
}

// Every flow the compiler makes encodes, and its key decodes back from the
// encoded match (what adoption reads from the switch).
func TestFlowsEncodeAndKeysDecode(t *testing.T) {
	aff := fe("10.96.0.12", 80, dataplane.TCP, "10.0.1.7:80")
	aff.AffinityTimeout = time.Hour
	aff6 := fe("fd00::12", 80, dataplane.UDP, "[fd00:1::7]:80")
	aff6.AffinityTimeout = time.Hour
	np := fe("10.0.100.2", 30080, dataplane.TCP, "10.0.1.5:8080")
	np.Kind, np.SNAT = dataplane.NodePort, netip.MustParseAddr("10.0.100.2")
	lb := fe("192.0.2.10", 80, dataplane.UDP, "10.0.1.5:8080")
	lb.Kind, lb.Local = dataplane.LoadBalancerIP, true
	lb.SourceRanges = []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("203.0.113.7/32")}
	lb6 := fe("2001:db8::10", 80, dataplane.TCP, "[fd00:1::5]:8080")
	lb6.Kind, lb6.SNAT = dataplane.ExternalIP, netip.MustParseAddr("fd00:100::2")
	lb6.SourceRanges = []netip.Prefix{netip.MustParsePrefix("2001:db8:1::/48")}
	var flows []Flow
	o := compileOptions{NodeName: "node1", HairpinIP: dataplane.DefaultHairpinIP, HairpinIP6: dataplane.DefaultHairpinIP6, Uplink: 7}
	for _, f := range []*dataplane.Frontend{fe("10.96.0.10", 80, dataplane.TCP, "10.0.1.5:8080"),
		fe("10.96.0.11", 9000, dataplane.SCTP, "10.0.1.6:9000"), fe("fd00::10", 53, dataplane.UDP, "[fd00:1::5]:5353"),
		aff, aff6, fe("10.96.0.13", 80, dataplane.TCP), np, lb, lb6} {
		c := compileFrontend(f, 3, o)
		flows = append(append(flows, c.flows...), c.shared...)
		for _, g := range c.groups {
			if _, err := g.groupMod(openflow15.OFPGC_ADD).MarshalBinary(); err != nil {
				t.Errorf("group %s: %v", g.text(), err)
			}
		}
	}
	flows = append(flows, staticFlows(o)...)
	for _, f := range flows {
		fm := f.flowMod(makeCookie(compCompiled, f.Owner, 1))
		if _, err := fm.MarshalBinary(); err != nil {
			t.Errorf("%s: %v", f.text(), err)
			continue
		}
		// The match as the switch sends it back in a flow dump.
		data, err := fm.Match.MarshalBinary()
		if err != nil {
			t.Errorf("%s: match: %v", f.text(), err)
			continue
		}
		var back openflow15.FlowDesc
		if err := back.Match.UnmarshalBinary(data); err != nil {
			t.Errorf("%s: decode: %v", f.text(), err)
			continue
		}
		back.TableId, back.Priority = fm.TableId, fm.Priority
		k, ok := decodeKey(&back)
		if !ok || k != f.key() {
			t.Errorf("%s: key decodes to %+v (%v), want %+v", f.text(), k, ok, f.key())
		}
	}
}
