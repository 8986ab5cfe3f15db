package nsxctl

import (
	"bytes"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
	"github.com/nsx-ujo/nsx-ujo/pkg/agent/ports"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata")

var (
	a   = netip.MustParseAddrPort("10.0.1.10:8080")
	b   = netip.MustParseAddrPort("10.0.2.20:8080")
	vip = netip.MustParseAddr("10.96.0.10")
)

func key(port uint16, p dataplane.Protocol) dataplane.FrontendKey {
	return dataplane.FrontendKey{IP: vip, Port: port, Protocol: p}
}

func frontend(port uint16, eps ...netip.AddrPort) *dataplane.Frontend {
	f := &dataplane.Frontend{Key: key(port, dataplane.TCP), Name: dataplane.ServicePortName{Namespace: "default", Name: "web", Port: "http"}}
	for _, e := range eps {
		f.Endpoints = append(f.Endpoints, dataplane.Endpoint{IP: e.Addr(), Port: e.Port(), Ready: true, Serving: true})
	}
	return f
}

// servicesFixture: every kind of row BuildServices makes.
func servicesFixture() ([]dataplane.Held, *dataplane.Model) {
	same := frontend(80, a, b)
	moved := frontend(81, a, b)
	affinity := frontend(82, a)
	affinity.AffinityTimeout = 3 * time.Hour
	local := frontend(83)
	local.Local, local.IfEmpty = true, dataplane.Drop
	onlyAPI := frontend(84, a)
	np := frontend(85, a, b)
	np.Key.IP, np.Key.Port, np.Kind, np.SNAT = netip.MustParseAddr("192.168.1.2"), 30080, dataplane.NodePort, netip.MustParseAddr("192.168.1.2")
	m := &dataplane.Model{Frontends: map[dataplane.FrontendKey]*dataplane.Frontend{}}
	for _, f := range []*dataplane.Frontend{same, moved, affinity, local, onlyAPI, np} {
		m.Frontends[f.Key] = f
	}
	held := []dataplane.Held{
		{Key: same.Key, Endpoints: []netip.AddrPort{b, a}, NewConnections: 12},
		{Key: moved.Key, Endpoints: []netip.AddrPort{a}},                                    // b missing
		{Key: affinity.Key, Endpoints: []netip.AddrPort{a}, AffinityTimeout: 3 * time.Hour}, // as the model
		{Key: local.Key, IfEmpty: dataplane.Reject},                                         // should drop
		{Key: key(99, dataplane.UDP), Endpoints: []netip.AddrPort{b}},                       // not in the API
		{Key: np.Key, External: true, SNAT: np.SNAT, Endpoints: []netip.AddrPort{a, b}, NewConnections: 3},
	}
	for i := range held {
		held[i].Normalize()
	}
	return held, m
}

func TestBuildServices(t *testing.T) {
	held, m := servicesFixture()
	rows := BuildServices(held, m, "")
	drift := map[string]string{}
	for _, r := range rows {
		drift[r.Frontend] = strings.Join(r.Drift, "; ")
	}
	want := map[string]string{
		"10.96.0.10:80/TCP":     "",
		"10.96.0.10:81/TCP":     "1 endpoint missing",
		"10.96.0.10:82/TCP":     "",
		"10.96.0.10:83/TCP":     "without endpoints: want drop, holds reject",
		"10.96.0.10:84/TCP":     NotInDataplane,
		"10.96.0.10:99/UDP":     NotInAPI,
		"192.168.1.2:30080/TCP": "",
	}
	for f, d := range want {
		if got, ok := drift[f]; !ok || got != d {
			t.Errorf("%s: drift %q (row present %v), want %q", f, got, ok, d)
		}
	}
	if len(rows) != len(want) {
		t.Errorf("%d rows, want %d", len(rows), len(want))
	}
	// Without the API: the dataplane's rows only, no drift.
	rows = BuildServices(held, nil, "")
	if len(rows) != len(held) {
		t.Fatalf("without the API: %d rows, want %d", len(rows), len(held))
	}
	for _, r := range rows {
		if len(r.Drift) > 0 || r.Service != "" {
			t.Errorf("without the API a row has a name or drift: %+v", r)
		}
	}
	// Filters: one Service, one namespace, none.
	if got := BuildServices(held, m, "default/web"); len(got) != 6 {
		t.Errorf("filter default/web: %d rows, want the 6 of the Service", len(got))
	}
	if got := BuildServices(held, m, "other/"); len(got) != 0 {
		t.Errorf("filter other/: %d rows", len(got))
	}
	// A frontend both dataplanes refuse is shown with the reason, and is
	// not drift (nsxctl services exits 0 for it).
	sctp := &dataplane.Frontend{Key: dataplane.FrontendKey{IP: netip.MustParseAddr("10.96.0.10"), Port: 80, Protocol: dataplane.SCTP},
		Name:      dataplane.ServicePortName{Namespace: "default", Name: "diameter", Port: "sctp"},
		Endpoints: []dataplane.Endpoint{{IP: netip.MustParseAddr("10.0.1.5"), Port: 3868, Ready: true, Serving: true}}}
	rows = BuildServices(nil, &dataplane.Model{Frontends: map[dataplane.FrontendKey]*dataplane.Frontend{sctp.Key: sctp}}, "")
	if len(rows) != 1 || len(rows[0].Drift) != 0 || !strings.Contains(rows[0].Refused, "SCTP") {
		t.Errorf("refused SCTP frontend: %+v", rows)
	}
}

// golden compares got with testdata/name, or rewrites it under -update:
// the JSON and table outputs are what scripts and people read.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (go test -run %s -update writes it)", err, t.Name())
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s changed:\n%s\nwant:\n%s", path, got, want)
	}
}

func TestOutputsAreStable(t *testing.T) {
	held, m := servicesFixture()
	last := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	reports := map[string]Tabler{
		"services": &ServicesReport{Node: "node1", Dataplane: "ovs", APIChecked: true, Services: BuildServices(held, m, "")},
		"pods": &PodsReport{Node: "node1", Bridge: "br-int", Pods: []PodRow{{Pod: "default/client", UID: "u1", ContainerID: "0123456789abcdef",
			Port: "veth1", OFPort: 3, VLAN: 101, IP: "10.0.1.50/24", MAC: "02:00:00:65:32:01", Netns: "/var/run/netns/c", AttachedAt: "2026-12-04T11:59:00Z", EBPF: true, Audit: "ok"},
			{Pod: "default/dual", UID: "u2", ContainerID: "fedcba9876543210", Port: "veth2", OFPort: 4, VLAN: 101, IP: "10.0.1.51/24",
				IP6: "fd00:10:0:1::51/64", MAC: "02:00:00:65:32:02", Netns: "/var/run/netns/d", AttachedAt: "2026-12-04T11:59:30Z", Audit: "ok"}}},
		"trace": &TraceReport{Node: "node1", Dataplane: "ebpf", Pod: "default/client", Port: "veth1", Source: "10.0.1.50:61234",
			Destination: "10.96.0.10:80", Protocol: "TCP", Frontend: "10.96.0.10:80/TCP", Service: "default/web:http", Verdict: "forward",
			Backend: a.String(), Reason: "a new connection, balanced over the frontend's 2 endpoints", NAT: []string{"dst 10.96.0.10:80 -> " + a.String()}},
		"conntrack": &ConntrackReport{Node: "node1", Dataplane: "ovs", Connections: []ConnRow{{Protocol: "TCP", Client: "10.0.1.50:40000",
			Frontend: "10.96.0.10:80", Backend: b.String(), Service: "default/web:http", State: "ESTABLISHED", Open: true}}},
		"status": &StatusReport{Node: "node1", Dataplane: "ovs", Holding: []string{"ovs"}, ConfigSource: "annotation", LastSync: &last,
			Components: []Component{{Name: "ovs", Healthy: true, Detail: "answers"}, {Name: "nsx-kube-proxy", Healthy: false, Detail: "connection refused"}}},
	}
	for name, r := range reports {
		for _, f := range []Format{JSON, Table} {
			var buf bytes.Buffer
			if err := Print(&buf, f, r); err != nil {
				t.Fatal(err)
			}
			golden(t, name+"."+string(f), buf.Bytes())
		}
	}
}

func TestReason(t *testing.T) {
	local := frontend(83)
	local.Local, local.IfEmpty = true, dataplane.Drop
	for _, c := range []struct {
		t    dataplane.Trace
		h    *dataplane.Held
		f    *dataplane.Frontend
		want string
	}{
		{dataplane.Trace{Verdict: dataplane.VerdictPass}, nil, nil, "not a Service"},
		{dataplane.Trace{Verdict: dataplane.VerdictForward, Established: true}, nil, nil, "open connection"},
		{dataplane.Trace{Verdict: dataplane.VerdictForward, Affinity: "used"}, nil, nil, "affinity"},
		{dataplane.Trace{Verdict: dataplane.VerdictForward}, &dataplane.Held{Endpoints: []netip.AddrPort{a, b}}, nil, "2 endpoints"},
		{dataplane.Trace{Verdict: dataplane.VerdictReject}, &dataplane.Held{}, nil, "no endpoints"},
		{dataplane.Trace{Verdict: dataplane.VerdictDrop}, &dataplane.Held{IfEmpty: dataplane.Drop}, local, "traffic policy Local"},
		{dataplane.Trace{Verdict: dataplane.VerdictDrop}, &dataplane.Held{Endpoints: []netip.AddrPort{a},
			SourceRanges: []netip.Prefix{netip.MustParsePrefix("1.2.3.0/24")}}, nil, "loadBalancerSourceRanges"},
	} {
		if got := reason(&c.t, c.h, c.f); !strings.Contains(got, c.want) {
			t.Errorf("reason(%+v) = %q, want it to say %q", c.t, got, c.want)
		}
	}
}

// A dual-stack pod's row carries the IPv6 address its port records.
func TestPodRowDualStack(t *testing.T) {
	at := time.Date(2026, 12, 4, 11, 59, 0, 0, time.FixedZone("x", 3600))
	r := podRow(&ports.PodPort{Name: "veth2", PodNamespace: "default", PodName: "dual", IP: "10.0.1.51/24", IP6: "fd00:10:0:1::51/64",
		AttachedAt: at}, false)
	if r.Pod != "default/dual" || r.IP != "10.0.1.51/24" || r.IP6 != "fd00:10:0:1::51/64" || r.AttachedAt != "2026-12-04T10:59:00Z" {
		t.Fatalf("row %+v", r)
	}
}
