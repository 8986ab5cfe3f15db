package openflow

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"antrea.io/libOpenflow/openflow15"
	"antrea.io/libOpenflow/util"
	"go.uber.org/zap/zaptest"
)

const testCookie = 0x00ab_0000_0000_0000

// newClient connects a client to o's br0 and waits for the connection.
func newClient(t testing.TB, o *testOVS, opts Options) *Client {
	t.Helper()
	opts.Socket = o.Mgmt()
	if _, bench := t.(*testing.B); opts.Log == nil && !bench {
		opts.Log = zaptest.NewLogger(t)
	}
	c := New(opts)
	t.Cleanup(func() { c.Close() })
	waitUntil(t, 10*time.Second, "connected", c.Connected)
	return c
}

func waitUntil(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func ip4(i int) net.IP { return net.IPv4(10, byte(i>>16), byte(i>>8), byte(i)).To4() }

// ipFlow is an OFPFC_ADD of ip,nw_dst=dst in table with actions applied.
func ipFlow(table uint8, priority uint16, cookie uint64, dst net.IP, actions ...openflow15.Action) *openflow15.FlowMod {
	fm := openflow15.NewFlowMod()
	fm.TableId, fm.Priority, fm.Cookie = table, priority, cookie
	fm.Match.AddField(*openflow15.NewEthTypeField(0x0800))
	fm.Match.AddField(*openflow15.NewIpv4DstField(dst, nil))
	apply := openflow15.NewInstrApplyActions()
	for _, a := range actions {
		_ = apply.AddAction(a, false)
	}
	fm.AddInstruction(apply)
	return fm
}

// selectGroup is an OFPGC_ADD of a select group hashing (NTR selection
// method "hash") over the IPv4 addresses and TCP ports, with n buckets of
// weight 10+i, each setting eth_dst and outputting to LOCAL.
func selectGroup(id uint32, n int) *openflow15.GroupMod {
	gm := openflow15.NewGroupMod()
	gm.Command, gm.Type, gm.GroupId = openflow15.OFPGC_ADD, openflow15.GT_SELECT, id
	for i := range n {
		b := openflow15.NewBucket(uint32(i))
		b.AddProperty(openflow15.NewGroupBucketPropWeight(uint16(10 + i%100)))
		b.AddAction(openflow15.NewActionSetField(*openflow15.NewEthDstField(net.HardwareAddr{2, 0, 0, 0, byte(i >> 8), byte(i)}, nil)))
		b.AddAction(openflow15.NewActionOutput(openflow15.P_LOCAL))
		gm.AddBucket(*b) // after the actions: AddBucket adds the bucket's length then
	}
	ones := net.IPv4(255, 255, 255, 255).To4()
	gm.Properties = append(gm.Properties, openflow15.NewNTRSelectionMethod(openflow15.NTR_HASH, 7,
		*openflow15.NewIpv4SrcField(ones, nil), *openflow15.NewIpv4DstField(ones, nil),
		*openflow15.NewTcpSrcField(0xffff), *openflow15.NewTcpDstField(0xffff)))
	return gm
}

func countLines(s, substr string) int {
	n := 0
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			n++
		}
	}
	return n
}

func TestBundleAppliesFlowsAndGroup(t *testing.T) {
	t.Parallel()
	o := startOVS(t)
	c := newClient(t, o, Options{})
	msgs := []util.Message{
		selectGroup(1, 3),
		ipFlow(0, 100, testCookie|1, ip4(1), openflow15.NewActionGroup(1)),
		ipFlow(0, 100, testCookie|2, ip4(2), openflow15.NewActionOutput(openflow15.P_LOCAL)),
		ipFlow(1, 50, testCookie|3, ip4(3), openflow15.NewActionOutput(openflow15.P_CONTROLLER)),
	}
	before := c.RoundTrips()
	if err := c.Bundle(ctxT(t), msgs); err != nil {
		t.Fatal(err)
	}
	if n := c.RoundTrips() - before; n != 1 {
		t.Errorf("RoundTrips grew by %d for one bundle, want 1", n)
	}
	flows := o.ofctl("dump-flows")
	for _, want := range []string{
		"cookie=0xab000000000001, duration", "priority=100,ip,nw_dst=10.0.0.1 actions=group:1",
		"priority=100,ip,nw_dst=10.0.0.2 actions=LOCAL", "table=1", "priority=50,ip,nw_dst=10.0.0.3 actions=CONTROLLER:65535",
	} {
		if !strings.Contains(flows, want) {
			t.Errorf("dump-flows lacks %q:\n%s", want, flows)
		}
	}
	groups := o.ofctl("dump-groups")
	want := "group_id=1,type=select,selection_method=hash,selection_method_param=7,fields(ip_src,ip_dst,tcp_src,tcp_dst)," +
		"bucket=bucket_id:0,weight:10,actions=set_field:02:00:00:00:00:00->eth_dst,LOCAL"
	if !strings.Contains(groups, want) || countLines(strings.ReplaceAll(groups, ",bucket=", "\nbucket="), "bucket=") != 3 {
		t.Errorf("dump-groups lacks %q and 3 buckets:\n%s", want, groups)
	}
	if err := c.Bundle(ctxT(t), nil); err != nil {
		t.Errorf("empty bundle: %v", err)
	}
	if err := c.Barrier(ctxT(t)); err != nil {
		t.Errorf("barrier: %v", err)
	}
}

// unknownAction is an action of a type OpenFlow does not define: Open
// vSwitch refuses it when it decodes the message (at bundle ADD time).
type unknownAction struct{ openflow15.ActionHeader }

func (a *unknownAction) Len() uint16 { return 8 }
func (a *unknownAction) MarshalBinary() ([]byte, error) {
	return []byte{0x00, 0x7f, 0, 8, 0, 0, 0, 0}, nil
}

func TestBundleRefusedMessageAppliesNothing(t *testing.T) {
	t.Parallel()
	o := startOVS(t)
	c := newClient(t, o, Options{})
	noPrereq := openflow15.NewFlowMod() // nw_dst without eth_type=0x0800
	noPrereq.Cookie = testCookie | 9
	noPrereq.Match.AddField(*openflow15.NewIpv4DstField(ip4(9), nil))
	badGroup := selectGroup(5, 2)
	badGroup.Buckets[1].Actions = append(badGroup.Buckets[1].Actions, &unknownAction{})
	badGroup.Buckets[1].ActionArrayLen += 8
	badGroup.BucketArrayLen += 8
	for _, tc := range []struct {
		name       string
		bad        util.Message
		typ, code  uint16
		textPrefix string
	}{
		// Refused when the bundle commits: the group does not exist.
		{"flow to a missing group", ipFlow(0, 100, testCookie|9, ip4(9), openflow15.NewActionGroup(99)), 2, 9, "OFPET_BAD_ACTION/OFPBAC_BAD_OUT_GROUP"},
		// Refused when the switch decodes the ADD; the bundle must still
		// apply nothing.
		{"group with an unknown action", badGroup, 2, 0, "OFPET_BAD_ACTION/OFPBAC_BAD_TYPE"},
		{"match without its prerequisite", noPrereq, 4, 9, "OFPET_BAD_MATCH/OFPBMC_BAD_PREREQ"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msgs := []util.Message{
				selectGroup(1, 2),
				ipFlow(0, 100, testCookie|1, ip4(1), openflow15.NewActionGroup(1)),
				tc.bad,
				ipFlow(0, 100, testCookie|2, ip4(2), openflow15.NewActionOutput(openflow15.P_LOCAL)),
			}
			err := c.Bundle(ctxT(t), msgs)
			var me *MessageError
			if !errors.As(err, &me) {
				t.Fatalf("Bundle = %v, want a *MessageError", err)
			}
			if me.Index != 2 || me.Type != tc.typ || me.Code != tc.code || !strings.HasPrefix(me.Text, tc.textPrefix) {
				t.Errorf("Bundle = %#v, want Index 2, type %d, code %d, text %q...", me, tc.typ, tc.code, tc.textPrefix)
			}
			t.Logf("error: %v", err)
			flows, err := c.DumpFlows(ctxT(t), openflow15.OFPTT_ALL, testCookie, 0xffff000000000000)
			if err != nil || len(flows) != 0 {
				t.Errorf("after a refused bundle: %d flows (%v), want none:\n%s", len(flows), err, o.ofctl("dump-flows"))
			}
			groups, err := c.DumpGroups(ctxT(t))
			if err != nil || len(groups) != 0 {
				t.Errorf("after a refused bundle: %d groups (%v), want none", len(groups), err)
			}
			// The connection still works: the same bundle without the
			// refused message applies.
			if err := c.Bundle(ctxT(t), append(msgs[:2:2], msgs[3])); err != nil {
				t.Fatal(err)
			}
			if flows, err := c.DumpFlows(ctxT(t), openflow15.OFPTT_ALL, testCookie, 0xffff000000000000); err != nil || len(flows) != 2 {
				t.Errorf("%d flows (%v), want 2", len(flows), err)
			}
			cleanup := openflow15.NewFlowMod()
			cleanup.Command, cleanup.TableId = openflow15.FC_DELETE, openflow15.OFPTT_ALL
			cleanup.Cookie, cleanup.CookieMask = testCookie, 0xffff000000000000
			del := openflow15.NewGroupMod()
			del.Command, del.GroupId = openflow15.OFPGC_DELETE, openflow15.OFPG_ALL
			if err := c.Bundle(ctxT(t), []util.Message{cleanup, del}); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestBundleRefusesOversizedMessageBeforeSending(t *testing.T) {
	t.Parallel()
	big := selectGroup(7, 2000)
	msgs := []util.Message{ipFlow(0, 1, testCookie, ip4(1)), big}
	// No switch at all: the refusal must not wait for a connection.
	c := New(Options{Socket: "/nonexistent/br0.mgmt", Timeout: time.Minute})
	defer c.Close()
	start := time.Now()
	err := c.Bundle(context.Background(), msgs)
	var me *MessageError
	if !errors.As(err, &me) || me.Index != 1 || me.Type != 0 || !strings.Contains(me.Text, "65535") {
		t.Fatalf("Bundle = %v, want *MessageError with Index 1 over the 65535-byte limit", err)
	}
	if time.Since(start) > time.Second || c.RoundTrips() != 0 {
		t.Errorf("the refusal took %v and %d round trips", time.Since(start), c.RoundTrips())
	}
	t.Logf("error: %v", err)
}

func TestDumpFlowsFiltersByTableAndCookie(t *testing.T) {
	t.Parallel()
	o := startOVS(t)
	c := newClient(t, o, Options{})
	var msgs []util.Message
	for i, ck := range []uint64{0x0001_0001, 0x0001_0002, 0x0002_0001, 0x0001_0003} {
		msgs = append(msgs, ipFlow(uint8(i%2), uint16(100+i), testCookie|ck, ip4(i), openflow15.NewActionOutput(openflow15.P_LOCAL)))
	}
	if err := c.Bundle(ctxT(t), msgs); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		table        uint8
		cookie, mask uint64
		want         []uint64
	}{
		{openflow15.OFPTT_ALL, testCookie | 0x0001_0000, 0xffff_ffff_ffff_0000, []uint64{0x0001_0001, 0x0001_0002, 0x0001_0003}},
		{openflow15.OFPTT_ALL, testCookie | 0x0002_0001, 0xffff_ffff_ffff_ffff, []uint64{0x0002_0001}},
		{1, testCookie | 0x0001_0000, 0xffff_ffff_ffff_0000, []uint64{0x0001_0002, 0x0001_0003}},
		{0, testCookie, 0xffff_0000_0000_0000, []uint64{0x0001_0001, 0x0002_0001}},
		{openflow15.OFPTT_ALL, 0, 0, []uint64{0, 0x0001_0001, 0x0001_0002, 0x0002_0001, 0x0001_0003}}, // with the bridge's NORMAL flow
	} {
		flows, err := c.DumpFlows(ctxT(t), tc.table, tc.cookie, tc.mask)
		if err != nil {
			t.Fatal(err)
		}
		got := map[uint64]bool{}
		for _, f := range flows {
			got[f.Cookie&^testCookie] = true
		}
		if len(flows) != len(tc.want) || len(got) != len(tc.want) {
			t.Errorf("table %d cookie %#x/%#x: got cookies %v, want %x", tc.table, tc.cookie, tc.mask, got, tc.want)
		}
		for _, w := range tc.want {
			if !got[w] {
				t.Errorf("table %d cookie %#x/%#x: missing %#x (got %v)", tc.table, tc.cookie, tc.mask, w, got)
			}
		}
	}
	// What one decoded flow looks like.
	flows, err := c.DumpFlows(ctxT(t), 1, testCookie|0x0001_0002, ^uint64(0))
	if err != nil || len(flows) != 1 {
		t.Fatalf("%d flows, %v", len(flows), err)
	}
	f := flows[0]
	if f.TableId != 1 || f.Priority != 101 || len(f.Match.Fields) != 2 || len(f.Instructions) != 1 {
		t.Fatalf("flow %+v", f)
	}
	if v, ok := f.Match.Fields[1].Value.(*openflow15.Ipv4DstField); !ok || !v.Ipv4Dst.Equal(ip4(1)) {
		t.Errorf("match field 1 = %#v, want nw_dst=10.0.0.1", f.Match.Fields[1].Value)
	}
	if ia, ok := f.Instructions[0].(*openflow15.InstrActions); !ok || len(ia.Actions) != 1 {
		t.Errorf("instruction = %#v, want apply_actions(output)", f.Instructions[0])
	} else if out, ok := ia.Actions[0].(*openflow15.ActionOutput); !ok || out.Port != openflow15.P_LOCAL {
		t.Errorf("action = %#v, want output:LOCAL", ia.Actions[0])
	}
}

// TestDumpFlowsDecodesNXMMatches shows how matches on registers and
// conntrack state come back from Open vSwitch through libOpenflow.
func TestDumpFlowsDecodesNXMMatches(t *testing.T) {
	t.Parallel()
	o := startOVS(t)
	c := newClient(t, o, Options{})
	fm := ipFlow(2, 10, testCookie|1, ip4(1), openflow15.NewActionOutput(openflow15.P_LOCAL))
	fm.Match.AddField(*openflow15.NewRegMatchField(3, 0x0a000001, nil))
	fm.Match.AddField(*openflow15.NewRegMatchFieldWithMask(2, 80, 0xffff))
	ct := openflow15.NewCTStates()
	ct.SetTrk()
	ct.SetEst()
	fm.Match.AddField(*openflow15.NewCTStateMatchField(ct))
	if err := c.Bundle(ctxT(t), []util.Message{fm}); err != nil {
		t.Fatal(err)
	}
	t.Log(o.ofctl("dump-flows", "table=2"))
	flows, err := c.DumpFlows(ctxT(t), 2, 0, 0)
	if err != nil || len(flows) != 1 {
		t.Fatalf("%d flows, %v", len(flows), err)
	}
	var regs, ctState bool
	for _, f := range flows[0].Match.Fields {
		t.Logf("class %#x field %d mask %v value %#v mask %#v", f.Class, f.Field, f.HasMask, f.Value, f.Mask)
		switch {
		case f.Class == openflow15.OXM_CLASS_PACKET_REGS && f.Field == 1:
			// xreg1 = reg2 (high 32 bits) : reg3 (low 32 bits)
			v, ok := f.Value.(*openflow15.ByteArrayField)
			m, mok := f.Mask.(*openflow15.ByteArrayField)
			regs = ok && mok && f.HasMask && fmt.Sprintf("%x/%x", v.Data, m.Data) == "000000500a000001/0000ffffffffffff"
		case f.Class == openflow15.OXM_CLASS_NXM_1 && f.Field == openflow15.NXM_NX_CT_STATE:
			v, ok := f.Value.(*openflow15.Uint32Message)
			m, mok := f.Mask.(*openflow15.Uint32Message)
			ctState = ok && mok && v.Data == ct.Data && m.Data == ct.Mask
		}
	}
	if !regs || !ctState {
		t.Errorf("decoded registers %v, ct_state %v: want reg2/reg3 as OXM packet register xreg1 and ct_state as NXM_NX_CT_STATE", regs, ctState)
	}
}

func TestDumpGroups(t *testing.T) {
	t.Parallel()
	o := startOVS(t)
	c := newClient(t, o, Options{})
	ind := openflow15.NewGroupMod()
	ind.Type, ind.GroupId = openflow15.GT_INDIRECT, 2
	b := openflow15.NewBucket(0)
	b.AddAction(openflow15.NewActionOutput(openflow15.P_LOCAL))
	ind.AddBucket(*b)
	if err := c.Bundle(ctxT(t), []util.Message{selectGroup(1, 3), ind}); err != nil {
		t.Fatal(err)
	}
	groups, err := c.DumpGroups(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(groups) != 2 {
		t.Fatalf("%d groups, want 2", len(groups))
	}
	byID := map[uint32]*openflow15.GroupDesc{}
	for _, g := range groups {
		byID[g.GroupId] = g
	}
	sel, ind2 := byID[1], byID[2]
	if sel == nil || ind2 == nil {
		t.Fatalf("groups %v", byID)
	}
	if sel.Type != openflow15.GT_SELECT || len(sel.Buckets) != 3 || ind2.Type != openflow15.GT_INDIRECT || len(ind2.Buckets) != 1 {
		t.Errorf("select group %+v, indirect group %+v", sel, ind2)
	}
	for i, bk := range sel.Buckets {
		var weight uint16
		for _, p := range bk.Properties {
			if w, ok := p.(*openflow15.GroupBucketPropWeight); ok {
				weight = w.Weight
			}
		}
		if bk.BucketId != uint32(i) || weight != uint16(10+i) || len(bk.Actions) != 2 {
			t.Errorf("bucket %d: id %d, weight %d, %d actions", i, bk.BucketId, weight, len(bk.Actions))
		}
	}
	if len(sel.Properties) != 1 {
		t.Fatalf("select group properties %#v, want the selection method", sel.Properties)
	}
	sm, ok := sel.Properties[0].(*openflow15.NTRSelectionMethod)
	if !ok || strings.TrimRight(string(sm.SelectionMethod[:]), "\x00") != "hash" || sm.SelectionParam != 7 || len(sm.Fields) != 4 {
		t.Errorf("selection method %#v", sel.Properties[0])
	}
}

func TestLargeBundleAndMultipartDump(t *testing.T) {
	t.Parallel()
	o := startOVS(t)
	c := newClient(t, o, Options{})
	const n = 20000
	msgs := make([]util.Message, n)
	for i := range msgs {
		msgs[i] = ipFlow(3, 100, testCookie|uint64(i), ip4(i), openflow15.NewActionOutput(openflow15.P_LOCAL))
	}
	start := time.Now()
	if err := c.Bundle(ctxT(t), msgs); err != nil {
		t.Fatal(err)
	}
	t.Logf("bundle of %d flows: %v", n, time.Since(start))
	start = time.Now()
	before := c.RoundTrips()
	flows, err := c.DumpFlows(ctxT(t), 3, testCookie, 0xffff000000000000)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("dump of %d flows: %v", len(flows), time.Since(start))
	if len(flows) != n || c.RoundTrips()-before != 1 {
		t.Fatalf("dumped %d flows in %d round trips, want %d in 1", len(flows), c.RoundTrips()-before, n)
	}
	seen := make([]bool, n)
	for _, f := range flows {
		i := int(f.Cookie &^ testCookie)
		if i >= n || seen[i] {
			t.Fatalf("unexpected or duplicate cookie %#x", f.Cookie)
		}
		seen[i] = true
	}
}

func TestReconnectAfterVSwitchdRestart(t *testing.T) {
	t.Parallel()
	o := startOVS(t)
	var calls atomic.Int32
	var c *Client
	reinstalled := make(chan error, 1)
	c = newClient(t, o, Options{EchoInterval: 200 * time.Millisecond, OnReconnect: func() {
		calls.Add(1)
		// The callback may use the client: reinstall.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		reinstalled <- c.Bundle(ctx, []util.Message{ipFlow(0, 100, testCookie|1, ip4(1), openflow15.NewActionOutput(openflow15.P_LOCAL))})
	}})
	if err := c.Bundle(ctxT(t), []util.Message{ipFlow(0, 100, testCookie|1, ip4(1), openflow15.NewActionOutput(openflow15.P_LOCAL))}); err != nil {
		t.Fatal(err)
	}
	o.KillVSwitchd(t) // SIGKILL, then started again with an empty flow table
	select {
	case err := <-reinstalled:
		if err != nil {
			t.Fatalf("bundle from OnReconnect: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no reconnection")
	}
	if err := c.Bundle(ctxT(t), []util.Message{ipFlow(0, 100, testCookie|2, ip4(2), openflow15.NewActionOutput(openflow15.P_LOCAL))}); err != nil {
		t.Fatal(err)
	}
	flows, err := c.DumpFlows(ctxT(t), openflow15.OFPTT_ALL, testCookie, 0xffff000000000000)
	if err != nil || len(flows) != 2 {
		t.Errorf("after the restart: %d flows (%v), want 2", len(flows), err)
	}
	time.Sleep(3 * 200 * time.Millisecond) // a few echo intervals: no spurious reconnection
	if n := calls.Load(); n != 1 || c.Reconnects() != 1 {
		t.Errorf("OnReconnect called %d times, Reconnects() = %d; want 1 and 1", n, c.Reconnects())
	}
}

func TestPacketIn(t *testing.T) {
	t.Parallel()
	o := startOVS(t)
	c := newClient(t, o, Options{})
	pis := c.PacketIns()
	fm := openflow15.NewFlowMod()
	fm.TableId, fm.Priority, fm.Cookie = 0, 200, testCookie|0x77
	fm.Match.AddField(*openflow15.NewInPortField(openflow15.P_LOCAL))
	fm.Match.AddField(*openflow15.NewEthTypeField(0x0800))
	apply := openflow15.NewInstrApplyActions()
	_ = apply.AddAction(openflow15.NewActionOutput(openflow15.P_CONTROLLER), false)
	fm.AddInstruction(apply)
	if err := c.Bundle(ctxT(t), []util.Message{fm}); err != nil {
		t.Fatal(err)
	}
	// An IPv4/UDP packet from LOCAL, sent through the tables by another
	// connection.
	pkt := "020000000001" + "020000000002" + "0800" +
		"4500001c0000000040110000" + "0a000001" + "0a000002" + "04d2162e00080000"
	o.ofctl("packet-out", "in_port=LOCAL,packet="+pkt+",actions=table")
	select {
	case pi := <-pis:
		data, _ := pi.Data.MarshalBinary()
		if pi.Cookie != testCookie|0x77 || pi.TableId != 0 || fmt.Sprintf("%x", data) != pkt {
			t.Errorf("packet-in cookie %#x table %d reason %d data %x", pi.Cookie, pi.TableId, pi.Reason, data)
		}
		var inPort uint32
		for _, f := range pi.Match.Fields {
			if v, ok := f.Value.(*openflow15.InPortField); ok {
				inPort = v.InPort
			}
		}
		if inPort != openflow15.P_LOCAL {
			t.Errorf("packet-in in_port %#x, want LOCAL", inPort)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no packet-in")
	}
	if c.PacketIns() != pis {
		t.Error("PacketIns returned another channel")
	}
}

// BenchmarkBundleOneFlow measures one change on the switch: a bundle of
// one flow mod (OPEN, ADD, BARRIER; COMMIT), waiting for the commit.
func BenchmarkBundleOneFlow(b *testing.B) {
	o := startOVS(b)
	c := newClient(b, o, Options{})
	ctx := context.Background()
	i := 0
	for b.Loop() {
		fm := ipFlow(0, 100, testCookie|uint64(i%1000), ip4(i%1000), openflow15.NewActionOutput(openflow15.P_LOCAL))
		if err := c.Bundle(ctx, []util.Message{fm}); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkBarrier is the bare round trip to ovs-vswitchd, for reference.
func BenchmarkBarrier(b *testing.B) {
	o := startOVS(b)
	c := newClient(b, o, Options{})
	ctx := context.Background()
	for b.Loop() {
		if err := c.Barrier(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// libOpenflow writes OutPort into out_group too; the client writes
// OutGroup there, so deletes filtered by group work.
func TestDeleteFlowsByOutGroup(t *testing.T) {
	t.Parallel()
	o := startOVS(t)
	c := newClient(t, o, Options{})
	msgs := []util.Message{
		selectGroup(1, 1), selectGroup(2, 1),
		ipFlow(0, 100, testCookie|1, ip4(1), openflow15.NewActionGroup(1)),
		ipFlow(0, 100, testCookie|2, ip4(2), openflow15.NewActionGroup(2)),
		ipFlow(0, 100, testCookie|3, ip4(3), openflow15.NewActionOutput(openflow15.P_LOCAL)),
	}
	if err := c.Bundle(ctxT(t), msgs); err != nil {
		t.Fatal(err)
	}
	del := openflow15.NewFlowMod()
	del.Command, del.TableId, del.OutGroup = openflow15.FC_DELETE, openflow15.OFPTT_ALL, 1
	if err := c.Bundle(ctxT(t), []util.Message{del}); err != nil {
		t.Fatal(err)
	}
	flows, err := c.DumpFlows(ctxT(t), openflow15.OFPTT_ALL, testCookie, 0xffff000000000000)
	if err != nil {
		t.Fatal(err)
	}
	left := map[uint64]bool{}
	for _, f := range flows {
		left[f.Cookie&^testCookie] = true
	}
	if len(flows) != 2 || !left[2] || !left[3] {
		t.Errorf("after deleting the flows of group 1: %v, want 2 and 3", left)
	}
}

// A flow libOpenflow cannot decode (nw_frag: NXM_NX_IP_FRAG has no
// decoder) fails the dump with an error naming it, instead of a panic.
func TestDumpFlowsNamesAnUndecodableFlow(t *testing.T) {
	t.Parallel()
	o := startOVS(t)
	c := newClient(t, o, Options{})
	o.ofctl("add-flow", "table=4,priority=9,cookie=0xab00000000000042,ip,nw_frag=first,actions=drop")
	_, err := c.DumpFlows(ctxT(t), 4, 0, 0)
	if err == nil || !strings.Contains(err.Error(), "table 4, priority 9, cookie 0xab00000000000042") || !strings.Contains(err.Error(), o.Mgmt()) {
		t.Fatalf("DumpFlows = %v, want an error naming the flow", err)
	}
	t.Logf("error: %v", err)
	if err := c.Barrier(ctxT(t)); err != nil || c.Reconnects() != 0 {
		t.Errorf("after the undecodable dump: barrier %v, %d reconnections", err, c.Reconnects())
	}
}
