package conformance

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
	"github.com/nsx-ujo/nsx-ujo/pkg/config"
	"github.com/nsx-ujo/nsx-ujo/pkg/nsxctl"
)

// DialFrom is Dial from a given source port.
func (p *Pod) DialFrom(addr string, sport uint16, timeout time.Duration) (*Conn, error) {
	to, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, err
	}
	d := net.Dialer{Timeout: timeout, LocalAddr: &net.TCPAddr{IP: p.Addr(FamilyOf(to.Addr())).AsSlice(), Port: int(sport)}}
	var c net.Conn
	err = p.NS.Do(func() error {
		var err error
		c, err = d.Dial("tcp", addr)
		return err
	})
	if err != nil {
		return nil, err
	}
	return greet(c, addr, timeout)
}

// LocalPort is the connection's source port.
func (c *Conn) LocalPort() uint16 { return uint16(c.c.LocalAddr().(*net.TCPAddr).Port) }

// notAService is an address of each family no frontend has.
var notAService = map[Family]netip.Addr{IPv4: netip.MustParseAddr("10.96.0.99"), IPv6: netip.MustParseAddr("fd00:10:96::99")}

// Nsxctl is what nsxctl, run on the env's node, sees: its ncp.ini paths
// point at the env's OVS and the instance's pin dir. No API client: rows
// carry no names and no drift, which the case computes from the model.
func Nsxctl(e *Env, inst *Instance) *nsxctl.Node {
	cfg := config.Defaults()
	cfg.NodeAgent.OVSRunDir, cfg.NodeAgent.OVSBridge, cfg.NodeAgent.OVSUplinkPort = e.OVS.RunDir, "br-int", Uplink
	cfg.NodeAgent.OVSOperationTimeout = 5 * time.Second
	cfg.KubeProxy.Dataplane, cfg.KubeProxy.BPFPinDir = inst.Dataplane, inst.PinDir
	return &nsxctl.Node{Name: NodeName, Config: &cfg}
}

// inspectCase checks nsxctl on the dataplane in family f: what it reads
// back equals the model after a Sync, and trace names what real traffic
// meets.
func inspectCase(f Family) Case {
	return Case{Name: named(f, "nsxctl reads back what Sync wrote; trace names the backend, reject, drop and pass"), Row: "nsxctl", Run: func(t *testing.T, e *Env, inst *Instance, _ Factory) {
		a, b := e.AddPod("a", 101, 10), e.AddPod("b", 102, 20)
		client := e.AddPod("client", 101, 50)
		for _, p := range []*Pod{a, b} {
			p.Serve(t, 8080)
		}
		eps := []*Pod{a, b}
		balanced := FrontendIn(f, 80, dataplane.TCP, eps, 8080)
		reject := FrontendIn(f, 81, dataplane.TCP, nil, 8080)
		drop := FrontendIn(f, 82, dataplane.TCP, nil, 8080)
		drop.Local, drop.IfEmpty = true, dataplane.Drop
		affinity := FrontendIn(f, 83, dataplane.UDP, []*Pod{a}, 8080)
		affinity.AffinityTimeout = 90 * time.Second
		m := Model(balanced, reject, drop, affinity, NodePortIn(f, dataplane.TCP, eps, false))
		syncModel(t, inst, m)

		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		node := Nsxctl(e, inst)
		held, err := node.Held(ctx, inst.Dataplane)
		if err != nil {
			t.Fatal(err)
		}
		rows := nsxctl.BuildServices(held, m, "")
		if len(rows) != len(m.Frontends) {
			t.Fatalf("nsxctl services: %d rows for %d frontends: %+v", len(rows), len(m.Frontends), rows)
		}
		for _, r := range rows {
			if len(r.Drift) > 0 {
				t.Errorf("nsxctl services: %s drifts from the model after a Sync: %v (row %+v)", r.Frontend, r.Drift, r)
			}
		}
		if t.Failed() {
			t.FailNow()
		}

		// An open connection: trace follows it to the backend it uses.
		conn, err := client.Dial(addrIn(f, 80), timeout)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ip := map[string]netip.Addr{"a": a.Addr(f), "b": b.Addr(f)}[conn.Server]
		tr, err := node.Trace(ctx, inst.Dataplane, nsxctl.TraceRequest{PodNamespace: "default", PodName: "client",
			To: netip.MustParseAddrPort(addrIn(f, 80)), Protocol: dataplane.TCP, SrcPort: conn.LocalPort()})
		if err != nil {
			t.Fatal(err)
		}
		if tr.Verdict != "forward" || !tr.Established || tr.Backend != netip.AddrPortFrom(ip, 8080).String() {
			t.Fatalf("trace of the open connection to %s (server %s): %+v", addrIn(f, 80), conn.Server, tr)
		}
		if err := conn.Echo("still there", timeout); err != nil {
			t.Fatalf("the traced connection broke: %v", err)
		}
		ct, err := node.Conntrack(ctx, inst.Dataplane, nsxctl.ConntrackFilter{Frontend: netip.MustParseAddrPort(addrIn(f, 80))})
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, c := range ct.Connections {
			found = found || (c.Client == netip.AddrPortFrom(client.Addr(f), conn.LocalPort()).String() && c.Backend == tr.Backend && c.Open)
		}
		if !found {
			t.Fatalf("nsxctl conntrack does not show the open connection %s -> %s: %+v", conn.Source, tr.Backend, ct.Connections)
		}

		// A new connection: balanced to an endpoint; the trace leaves nothing
		// behind, and the real connection from that port works.
		const sport = 61234
		tr, err = node.Trace(ctx, inst.Dataplane, nsxctl.TraceRequest{PodNamespace: "default", PodName: "client",
			To: netip.MustParseAddrPort(addrIn(f, 80)), Protocol: dataplane.TCP, SrcPort: sport})
		if err != nil {
			t.Fatal(err)
		}
		if tr.Verdict != "forward" || tr.Established || (tr.Backend != netip.AddrPortFrom(a.Addr(f), 8080).String() && tr.Backend != netip.AddrPortFrom(b.Addr(f), 8080).String()) {
			t.Fatalf("trace of a new connection: %+v", tr)
		}
		ct, err = node.Conntrack(ctx, inst.Dataplane, nsxctl.ConntrackFilter{})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range ct.Connections {
			if strings.HasSuffix(c.Client, ":61234") {
				t.Fatalf("the trace left a conntrack entry: %+v", c)
			}
		}
		real, err := client.DialFrom(addrIn(f, 80), sport, timeout)
		if err != nil {
			t.Fatalf("a real connection from the traced port: %v", err)
		}
		real.Close()
		if inst.Dataplane == nsxctl.OVS && netip.AddrPortFrom(map[string]netip.Addr{"a": a.Addr(f), "b": b.Addr(f)}[real.Server], 8080).String() != tr.Backend {
			// OVS picks the bucket by a hash of the packet's fields: the
			// trace names the backend the real connection gets.
			t.Fatalf("trace said %s, the real connection from port %d reached %s", tr.Backend, sport, real.Server)
		}

		for _, c := range []struct {
			to, verdict string
			proto       dataplane.Protocol
		}{
			{addrIn(f, 81), "reject", dataplane.TCP}, // no endpoints
			{addrIn(f, 82), "drop", dataplane.TCP},   // Local, no local endpoint
			{netip.AddrPortFrom(notAService[f], 80).String(), "pass", dataplane.TCP},
			{addrIn(f, 83), "forward", dataplane.UDP},
		} {
			tr, err := node.Trace(ctx, inst.Dataplane, nsxctl.TraceRequest{PodNamespace: "default", PodName: "client",
				To: netip.MustParseAddrPort(c.to), Protocol: c.proto})
			if err != nil {
				t.Fatal(err)
			}
			if tr.Verdict != c.verdict || tr.Reason == "" {
				t.Errorf("trace to %s/%s: verdict %q (%s), want %s", c.to, c.proto, tr.Verdict, tr.Reason, c.verdict)
			}
		}

		// ClientIP affinity: the first connection creates the client's entry,
		// a later one uses it (the trace removes what it created on eBPF;
		// ofproto/trace learns nothing).
		affTo := netip.MustParseAddrPort(addrIn(f, 83))
		tr, err = node.Trace(ctx, inst.Dataplane, nsxctl.TraceRequest{PodNamespace: "default", PodName: "client", To: affTo, Protocol: dataplane.UDP})
		if err != nil || tr.Affinity != "created" {
			t.Fatalf("trace to the affinity frontend before any connection: %+v, %v; want the affinity entry created", tr, err)
		}
		if srv, _, err := client.Ask(addrIn(f, 83), true, timeout); err != nil || srv != "a" {
			t.Fatalf("UDP to the affinity frontend: %q, %v", srv, err)
		}
		tr, err = node.Trace(ctx, inst.Dataplane, nsxctl.TraceRequest{PodNamespace: "default", PodName: "client", To: affTo, Protocol: dataplane.UDP})
		if err != nil || tr.Affinity != "used" || tr.Backend != netip.AddrPortFrom(a.Addr(f), 8080).String() {
			t.Fatalf("trace to the affinity frontend after a connection: %+v, %v; want the client's entry used, to a", tr, err)
		}

		// What the dataplane counts: the real connections of frontend :80.
		held, err = node.Held(ctx, inst.Dataplane)
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range held {
			if h.Key == balanced.Key && h.NewConnections < 2 {
				t.Errorf("frontend %s counts %d new connections, want at least the 2 real ones", h.Key, h.NewConnections)
			}
		}
		pods, err := node.Pods(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(pods.Pods) != 3 || pods.Stale() {
			t.Fatalf("nsxctl pods: %+v", pods.Pods)
		}
		for _, p := range pods.Pods {
			if p.EBPF != (inst.Dataplane == nsxctl.EBPF) || p.OFPort <= 0 || p.IP == "" {
				t.Errorf("nsxctl pods: %+v", p)
			}
		}
	}}
}
