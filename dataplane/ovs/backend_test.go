package ovs

import (
	"context"
	"errors"
	"net/netip"
	"sort"
	"strings"
	"testing"
	"time"

	"antrea.io/libOpenflow/openflow15"
	"antrea.io/libOpenflow/util"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
	"github.com/nsx-ujo/nsx-ujo/pkg/openflow"
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
		"nat(dst=10.0.1.5:8080)", "nat(dst=10.0.2.6:8080)", "resubmit(,SvcAffinity),resubmit(,SvcAffinityCheck)",
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

	// A new process adopts: group ids stay, and flows that are still
	// wanted are rewritten in place (an add replaces a flow of the same
	// key atomically), never deleted first.
	before := groupIDs(o.Ofctl(t, "br-int", "-O", "OpenFlow15", "dump-groups"))
	flowsBefore := flowKeys(o.Ofctl(t, "br-int", "-O", "OpenFlow15", "dump-flows", "--no-stats"))
	core, logs := observer.New(zapcore.InfoLevel)
	b2, err := New(Options{Bridge: "br-int", OVSRunDir: o.RunDir, NodeName: "node1", Timeout: 5 * time.Second, Log: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b2.Close() })
	if err := b2.Sync(ctx, m, dataplane.SyncOptions{}); err != nil {
		t.Fatalf("adopting Sync: %v", err)
	}
	// Whoever reads the log after a crash learns what the new process
	// found.
	if found := logs.FilterMessageSnippet("found the services of an earlier nsx-kube-proxy").All(); len(found) != 1 || found[0].ContextMap()["frontends"] != int64(3) {
		t.Errorf("the adopting proxy's log: %v", logs.All())
	}
	if after := groupIDs(o.Ofctl(t, "br-int", "-O", "OpenFlow15", "dump-groups")); after != before {
		t.Fatalf("group ids changed on restart:\n%s\n%s", before, after)
	}
	if after := flowKeys(o.Ofctl(t, "br-int", "-O", "OpenFlow15", "dump-flows", "--no-stats")); after != flowsBefore {
		t.Fatalf("flows changed on restart:\n%s\n%s", flowsBefore, after)
	}
	// And then it knows what it wrote: the same model again sends nothing.
	if err := b2.Sync(ctx, m, dataplane.SyncOptions{Full: true}); err != nil || b2.Stats().LastChanges != 0 {
		t.Fatalf("full Sync after adoption: %v, %d changes", err, b2.Stats().LastChanges)
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

// groupIDs lists the group ids of a dump-groups output.
func groupIDs(dump string) string {
	var ids []string
	for _, l := range strings.Split(dump, "\n") {
		if i := strings.Index(l, "group_id="); i >= 0 {
			ids = append(ids, strings.SplitN(l[i:], ",", 2)[0])
		}
	}
	sort.Strings(ids)
	return strings.Join(ids, " ")
}

// flowKeys lists table, priority and match of a dump-flows output.
func flowKeys(dump string) string {
	var keys []string
	for _, l := range strings.Split(dump, "\n") {
		l = strings.TrimSpace(l)
		i := strings.Index(l, "table=")
		if i < 0 {
			continue
		}
		j := strings.Index(l[i:], " actions=")
		if j < 0 {
			continue
		}
		keys = append(keys, l[i:i+j])
	}
	sort.Strings(keys)
	return strings.Join(keys, "\n")
}

// refusingConn is the switch connection with a fault-injection seam: it
// refuses every bundle that modifies a group in refuse, as a switch
// refuses a message it cannot take, naming the message.
type refusingConn struct {
	SwitchConn
	refuse map[uint32]bool
}

func (c *refusingConn) Bundle(ctx context.Context, msgs []util.Message) error {
	for i, m := range msgs {
		if gm, ok := m.(*openflow15.GroupMod); ok && c.refuse[gm.GroupId] && gm.Command != openflow15.OFPGC_DELETE {
			return &openflow.MessageError{Index: i, Type: 6, Code: 0, Text: "injected refusal"}
		}
	}
	return c.SwitchConn.Bundle(ctx, msgs)
}

// One frontend the switch refuses does not keep the others from
// converging, in the same Sync and in the ones after; it is reported by
// key and Service, and applied once the switch takes it.
func TestRefusedFrontendDoesNotBlockOthers(t *testing.T) {
	o := harness.StartOVS(t, harness.OVSOptions{Bridges: []string{"br-int"}})
	ctx := context.Background()
	rc := &refusingConn{refuse: map[uint32]bool{}}
	b, err := New(Options{Bridge: "br-int", OVSRunDir: o.RunDir, NodeName: "node1", Timeout: 5 * time.Second, Log: zaptest.NewLogger(t),
		Conn: func(onReconnect func()) SwitchConn {
			rc.SwitchConn = openflow.New(openflow.Options{Socket: o.RunDir + "/br-int.mgmt", OnReconnect: onReconnect})
			return rc
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	bad := fe("10.96.0.10", 80, dataplane.TCP, "10.0.1.5:8080")
	good := fe("10.96.0.20", 80, dataplane.TCP, "10.0.1.6:8080")
	m := model(bad, good)
	if err := b.Sync(ctx, model(), dataplane.SyncOptions{}); err != nil {
		t.Fatal(err)
	}
	// Ids are given in key order: bad gets 1.
	rc.refuse[frontendGroupID(1)] = true
	err = b.Sync(ctx, m, dataplane.SyncOptions{})
	var fe2 *dataplane.FrontendErrors
	if !errors.As(err, &fe2) || len(fe2.Failed) != 1 || fe2.Failed[0].Key != bad.Key || fe2.Failed[0].Name.Name != "svc" {
		t.Fatalf("Sync = %v, want the refused frontend %s reported", err, bad.Key)
	}
	flows := o.Ofctl(t, "br-int", "-O", "OpenFlow15", "dump-flows")
	if !strings.Contains(flows, "nw_dst=10.96.0.20") || !strings.Contains(flows, "nat(dst=10.0.1.6:8080)") {
		t.Fatalf("the good frontend is not installed:\n%s", flows)
	}
	if strings.Contains(flows, "nw_dst=10.96.0.10") || strings.Contains(flows, "10.0.1.5:8080") {
		t.Fatalf("the refused frontend is half installed:\n%s", flows)
	}
	// The good one keeps converging while the bad one is still refused.
	good2 := fe("10.96.0.20", 80, dataplane.TCP, "10.0.1.7:8080")
	m.Frontends[good2.Key] = good2
	if err := b.Sync(ctx, m, dataplane.SyncOptions{}); !errors.As(err, &fe2) {
		t.Fatalf("Sync = %v", err)
	}
	if flows := o.Ofctl(t, "br-int", "-O", "OpenFlow15", "dump-flows"); !strings.Contains(flows, "nat(dst=10.0.1.7:8080)") {
		t.Fatalf("the good frontend's change is not applied:\n%s", flows)
	}
	// The switch takes it now: the next Sync applies it.
	delete(rc.refuse, frontendGroupID(1))
	if err := b.Sync(ctx, m, dataplane.SyncOptions{}); err != nil {
		t.Fatal(err)
	}
	if flows := o.Ofctl(t, "br-int", "-O", "OpenFlow15", "dump-flows"); !strings.Contains(flows, "nw_dst=10.96.0.10") || !strings.Contains(flows, "nat(dst=10.0.1.5:8080)") {
		t.Fatalf("the once refused frontend is not installed:\n%s", flows)
	}
	// Refused again with a change: the frontend keeps what it had, in an
	// incremental and in a full sync alike.
	rc.refuse[frontendGroupID(1)] = true
	bad2 := fe("10.96.0.10", 80, dataplane.TCP, "10.0.1.8:8080")
	m.Frontends[bad2.Key] = bad2
	for _, full := range []bool{false, true} {
		if err := b.Sync(ctx, m, dataplane.SyncOptions{Full: full}); !errors.As(err, &fe2) {
			t.Fatalf("Sync (full %v) = %v", full, err)
		}
		flows := o.Ofctl(t, "br-int", "-O", "OpenFlow15", "dump-flows")
		if !strings.Contains(flows, "nat(dst=10.0.1.5:8080)") || strings.Contains(flows, "10.0.1.8") || !strings.Contains(flows, "nw_dst=10.96.0.10") {
			t.Fatalf("full %v: the refused frontend lost its previous state or got half of the new one:\n%s", full, flows)
		}
	}
	if got := b.Stats().Refused; got != 4 {
		t.Errorf("Refused = %d, want 4", got)
	}
}
