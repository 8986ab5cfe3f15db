package ovs

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
	"github.com/nsx-ujo/nsx-ujo/tests/harness"
)

func fe(ip string, port uint16, proto dataplane.Protocol, eps ...string) *dataplane.Frontend {
	f := &dataplane.Frontend{Key: dataplane.FrontendKey{IP: netip.MustParseAddr(ip), Port: port, Protocol: proto},
		Name: dataplane.ServicePortName{Namespace: "ns", Name: "svc"}}
	for _, e := range eps {
		ap := netip.MustParseAddrPort(e)
		f.Endpoints = append(f.Endpoints, dataplane.Endpoint{IP: ap.Addr(), Port: ap.Port(), Ready: true, Serving: true, NodeName: "node1"})
	}
	return f
}

func model(fs ...*dataplane.Frontend) *dataplane.Model {
	m := &dataplane.Model{Frontends: map[dataplane.FrontendKey]*dataplane.Frontend{}}
	for _, f := range fs {
		m.Frontends[f.Key] = f
	}
	return m
}

func newBackend(t *testing.T, o *harness.OVS) *Backend {
	b, err := New(Options{Bridge: "br-int", OVSRunDir: o.RunDir, NodeName: "node1", Timeout: 5 * time.Second, Log: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func TestSyncAdoptCleanupOnRealOVS(t *testing.T) {
	o := harness.StartOVS(t, harness.OVSOptions{Bridges: []string{"br-int"}})
	ctx := context.Background()
	b := newBackend(t, o)
	web := fe("10.96.0.10", 80, dataplane.TCP, "10.0.1.5:8080", "10.0.2.6:8080")
	dns := fe("10.96.0.53", 53, dataplane.UDP, "10.0.1.7:53")
	dns.AffinityTimeout = 30 * time.Second
	empty := fe("10.96.0.99", 443, dataplane.TCP)
	m := model(web, dns, empty)
	if err := b.Sync(ctx, m, dataplane.SyncOptions{}); err != nil {
		t.Fatal(err)
	}
	flows := o.Ofctl(t, "br-int", "-O", "OpenFlow15", "dump-flows", "--names", "--no-stats")
	for _, want := range []string{
		"priority=200,tcp,nw_dst=10.96.0.10,tp_dst=80 actions=ct(table=SvcLB,zone=65520,nat)",
		"nat(dst=10.0.1.5:8080)", "nat(dst=10.0.2.6:8080)", "resubmit(,SvcAffinity),resubmit(,SvcDNAT)",
		"ct_state=+new+trk,tcp,nw_dst=10.96.0.99,tp_dst=443 actions=CONTROLLER",
	} {
		if !strings.Contains(flows, want) {
			t.Errorf("flows lack %q:\n%s", want, flows)
		}
	}
	groups := o.Ofctl(t, "br-int", "-O", "OpenFlow15", "dump-groups")
	if strings.Count(groups, "group_id=") != 3 {
		t.Fatalf("groups:\n%s", groups)
	}
	// Idempotent: same model, nothing sent; a full sync finds no drift.
	if err := b.Sync(ctx, m, dataplane.SyncOptions{}); err != nil || b.Stats().LastChanges != 0 {
		t.Fatalf("second Sync: %v, %d changes", err, b.Stats().LastChanges)
	}
	if err := b.Sync(ctx, m, dataplane.SyncOptions{Full: true}); err != nil || b.Stats().LastChanges != 0 {
		t.Fatalf("full Sync: %v, %d changes", err, b.Stats().LastChanges)
	}
	// One endpoint added: O(1) changes (group mod + its endpoint's flows).
	web2 := fe("10.96.0.10", 80, dataplane.TCP, "10.0.1.5:8080", "10.0.2.6:8080", "10.0.3.7:8080")
	m.Frontends[web2.Key] = web2
	if err := b.Sync(ctx, m, dataplane.SyncOptions{}); err != nil {
		t.Fatal(err)
	}
	if n := b.Stats().LastChanges; n != 3 {
		t.Fatalf("endpoint add made %d changes, want 3 (group mod; DNAT and hairpin flows of the local endpoint)", n)
	}
	// Drift: someone deletes a flow; the full sync puts it back.
	o.Ofctl(t, "br-int", "-O", "OpenFlow15", "del-flows", "--strict", "table=72,priority=100,tcp,reg3=0xa000105,reg2=0x1f90/0xffff")
	if err := b.Sync(ctx, m, dataplane.SyncOptions{Full: true}); err != nil || b.Stats().LastChanges != 1 {
		t.Fatalf("drift repair: %v, %d changes", err, b.Stats().LastChanges)
	}

	// A new process adopts: group ids and flows stay, nothing is sent.
	before := o.Ofctl(t, "br-int", "-O", "OpenFlow15", "dump-groups")
	b2 := newBackend(t, o)
	if err := b2.Sync(ctx, m, dataplane.SyncOptions{}); err != nil || b2.Stats().LastChanges != 0 {
		t.Fatalf("adopting Sync: %v, %d changes", err, b2.Stats().LastChanges)
	}
	if after := o.Ofctl(t, "br-int", "-O", "OpenFlow15", "dump-groups"); after != before {
		t.Fatalf("groups changed on restart:\n%s\n%s", before, after)
	}
	// Service removed.
	delete(m.Frontends, dns.Key)
	if err := b2.Sync(ctx, m, dataplane.SyncOptions{}); err != nil {
		t.Fatal(err)
	}
	if flows := o.Ofctl(t, "br-int", "-O", "OpenFlow15", "dump-flows"); strings.Contains(flows, "10.96.0.53") || strings.Contains(flows, "10.0.1.7") {
		t.Fatalf("removed frontend left flows:\n%s", flows)
	}
	// Cleanup leaves the bridge as it was: only the NORMAL flow.
	if err := b2.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	flows = o.Ofctl(t, "br-int", "-O", "OpenFlow15", "dump-flows", "--no-stats")
	if lines := strings.Split(strings.TrimSpace(flows), "\n"); len(lines) != 1 || !strings.Contains(lines[0], "priority=0 actions=NORMAL") {
		t.Fatalf("after Cleanup:\n%s", flows)
	}
	if g := o.Ofctl(t, "br-int", "-O", "OpenFlow15", "dump-groups"); strings.Contains(g, "group_id") {
		t.Fatalf("groups after Cleanup:\n%s", g)
	}
	if ft := o.Vsctl(t, "get", "Bridge", "br-int", "flow_tables"); strings.TrimSpace(ft) != "{}" {
		t.Fatalf("flow_tables after Cleanup: %s", ft)
	}
}
