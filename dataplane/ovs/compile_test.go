package ovs

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
)

func TestCompileFrontendText(t *testing.T) {
	o := compileOptions{NodeName: "node1", HairpinIP: DefaultHairpinIP}
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
		}, []string{"nw_src=fd00"}},
		{"affinity clamps to 65535 s", func() *dataplane.Frontend {
			f := fe("10.96.0.12", 80, dataplane.TCP, "10.0.1.7:80")
			f.AffinityTimeout = 86400 * time.Second
			return f
		}(), []string{"resubmit(,71),resubmit(,72)", "table=72,priority=50,tcp,nw_dst=10.96.0.12,tp_dst=80,actions=group:",
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
			all = append(all, c.group.text())
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
	f := fe("10.96.0.10", 80, dataplane.TCP, "10.0.1.5:8080")
	f.Endpoints[0].NodeName = "node2"
	c := compileFrontend(f, 1, compileOptions{NodeName: "node1", HairpinIP: DefaultHairpinIP})
	for _, fl := range c.shared {
		if fl.Table == tHairpin {
			t.Fatalf("hairpin flow for a remote endpoint: %s", fl.text())
		}
	}
}

func TestCookiesIdentifyFlows(t *testing.T) {
	a := Flow{Table: 70, Priority: 100, Match: "tcp", Actions: "drop", Owner: 5}
	b := a
	b.Actions = "NORMAL"
	if a.Cookie() == b.Cookie() {
		t.Fatal("different flows share a cookie")
	}
	if a.Cookie()>>56 != compCompiled || cookieOwner(a.Cookie()) != 5 {
		t.Fatalf("cookie %x does not carry component and owner", a.Cookie())
	}
}

func TestGroupSignatureMatchesOVSDump(t *testing.T) {
	g := Group{ID: groupBase | 1, Fields: hashFields(dataplane.TCP, false), Buckets: []string{
		regLoads(netip.MustParseAddrPort("10.0.1.10:8080")) + ",resubmit(,72)",
		regLoads(netip.MustParseAddrPort("10.0.1.30:8080")) + ",resubmit(,78)",
	}}
	// As ovs-ofctl dump-groups prints it.
	dumped := "group_id=1509949441,type=select,selection_method=hash,fields(ip_src,ip_dst,tcp_src,tcp_dst)," +
		"bucket=bucket_id:0,weight:100,actions=set_field:0xa00010a->reg3,set_field:0x1f90/0xffff->reg2,resubmit(,72)," +
		"bucket=bucket_id:1,weight:100,actions=set_field:0xa00011e->reg3,set_field:0x1f90/0xffff->reg2,resubmit(,78)"
	if g.signature() != groupSignature(dumped) {
		t.Fatalf("signatures differ:\n%s\n%s", g.signature(), groupSignature(dumped))
	}
	if groupSignature(strings.Replace(dumped, "0xa00011e", "0xa00011f", 1)) == g.signature() {
		t.Fatal("a changed endpoint has the same signature")
	}
}

func TestParseFrontendMatch(t *testing.T) {
	k, ok := parseFrontendMatch("udp6,ipv6_dst=fd00::10,tp_dst=53")
	if !ok || k.Protocol != dataplane.UDP || k.IP.String() != "fd00::10" || k.Port != 53 {
		t.Fatalf("got %+v %v", k, ok)
	}
	if _, ok := parseFrontendMatch("tcp,nw_dst=10.96.0.10"); ok {
		t.Fatal("accepted a match without a port")
	}
}
