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

	"github.com/nsx-ujo/nsx-ujo/tests/harness"
)

// flow is a flow mod adding table/priority/udp_dst=port with cookie and
// output actions (or a group).
func flow(table uint8, prio uint16, port uint16, cookie uint64, group uint32) *openflow15.FlowMod {
	fm := openflow15.NewFlowMod()
	fm.TableId, fm.Priority, fm.Cookie = table, prio, cookie
	fm.Match.AddField(*openflow15.NewEthTypeField(0x0800))
	fm.Match.AddField(*openflow15.NewIpProtoField(17))
	fm.Match.AddField(*openflow15.NewUdpDstField(port))
	in := openflow15.NewInstrApplyActions()
	if group != 0 {
		_ = in.AddAction(openflow15.NewActionGroup(group), false)
	} else {
		_ = in.AddAction(openflow15.NewActionOutput(openflow15.P_NORMAL), false)
	}
	fm.AddInstruction(in)
	return fm
}

func selectGroup(id uint32, buckets int) *openflow15.GroupMod {
	gm := openflow15.NewGroupMod()
	gm.Type, gm.GroupId = openflow15.GT_SELECT, id
	for i := 0; i < buckets; i++ {
		b := openflow15.NewBucket(uint32(i))
		b.AddProperty(openflow15.NewGroupBucketPropWeight(100))
		b.AddAction(openflow15.NewActionSetField(*openflow15.NewRegMatchField(3, uint32(i), nil)))
		b.AddAction(openflow15.NewActionOutput(openflow15.P_NORMAL))
		gm.AddBucket(*b)
	}
	return gm
}

func start(t *testing.T, o Options) (*harness.OVS, *Client) {
	t.Helper()
	ovs := harness.StartOVS(t, harness.OVSOptions{Bridges: []string{"br0"}})
	o.Socket = ovs.MgmtSocket("br0")
	c := New(o)
	t.Cleanup(func() { c.Close() })
	return ovs, c
}

func TestBundleIsAtomicAndNamesTheRefusedMessage(t *testing.T) {
	ovs, c := start(t, Options{})
	ctx := t.Context()
	ok := []util.Message{selectGroup(7, 2), flow(1, 100, 53, 0x77, 7), flow(1, 100, 54, 0x77, 0)}
	if err := c.Bundle(ctx, ok); err != nil {
		t.Fatal(err)
	}
	if flows := ovs.Ofctl(t, "br0", "-O", "OpenFlow15", "dump-flows", "table=1"); strings.Count(flows, "cookie=0x77") != 2 {
		t.Fatalf("flows:\n%s", flows)
	}
	// The second message points at a group that does not exist: the
	// switch refuses it, and the first (valid) one is not applied either.
	bad := []util.Message{flow(2, 100, 55, 0x78, 0), flow(2, 100, 56, 0x78, 999), flow(2, 100, 57, 0x78, 0)}
	err := c.Bundle(ctx, bad)
	var me *MessageError
	if !errors.As(err, &me) || me.Index != 1 {
		t.Fatalf("Bundle with a bad message = %v, want a MessageError with Index 1", err)
	}
	if flows := ovs.Ofctl(t, "br0", "-O", "OpenFlow15", "dump-flows", "table=2"); strings.Contains(flows, "cookie=") {
		t.Fatalf("a refused bundle applied something:\n%s", flows)
	}
	// The connection is still good.
	if err := c.Bundle(ctx, []util.Message{flow(2, 100, 58, 0x78, 0)}); err != nil {
		t.Fatal(err)
	}
}

func TestOversizedMessageRefusedBeforeSending(t *testing.T) {
	_, c := start(t, Options{})
	if err := c.Barrier(t.Context()); err != nil { // connected
		t.Fatal(err)
	}
	before := c.RoundTrips()
	err := c.Bundle(t.Context(), []util.Message{flow(1, 1, 1, 1, 0), selectGroup(8, 2000)})
	var me *MessageError
	if !errors.As(err, &me) || me.Index != 1 || !strings.Contains(me.Error(), "limit") {
		t.Fatalf("Bundle with a 2000-bucket group = %v, want a MessageError with Index 1 naming the limit", err)
	}
	if c.RoundTrips() != before {
		t.Fatal("something was sent")
	}
}

// A dump is filtered by cookie and follows multipart replies to the end.
func TestDumpFlowsByCookieAcrossMultipartReplies(t *testing.T) {
	_, c := start(t, Options{Timeout: 60 * time.Second})
	ctx := t.Context()
	const n = 20000
	msgs := make([]util.Message, 0, n+3)
	for i := 0; i < n; i++ {
		msgs = append(msgs, flow(uint8(1+i/60000), 100, uint16(i), 0x5a00000100000000|uint64(i), 0))
	}
	for i := 0; i < 3; i++ {
		msgs = append(msgs, flow(3, 100, uint16(i), 0x1234, 0))
	}
	if err := c.Bundle(ctx, msgs); err != nil {
		t.Fatal(err)
	}
	got, err := c.DumpFlows(ctx, openflow15.OFPTT_ALL, 0x5a00000100000000, 0xffffffff00000000)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != n {
		t.Fatalf("dumped %d flows, want %d", len(got), n)
	}
	seen := map[uint64]bool{}
	for _, f := range got {
		seen[f.Cookie] = true
	}
	if len(seen) != n {
		t.Fatalf("%d distinct cookies", len(seen))
	}
	if other, err := c.DumpFlows(ctx, 3, 0x1234, ^uint64(0)); err != nil || len(other) != 3 {
		t.Fatalf("dump of table 3: %d flows, %v", len(other), err)
	}
	if err := c.Bundle(ctx, []util.Message{selectGroup(9, 3)}); err != nil {
		t.Fatal(err)
	}
	groups, err := c.DumpGroups(ctx)
	if err != nil || len(groups) != 1 || groups[0].GroupId != 9 || len(groups[0].Buckets) != 3 {
		t.Fatalf("groups %+v, %v", groups, err)
	}
}

func TestReconnectsAfterVSwitchdCrash(t *testing.T) {
	var calls atomic.Int32
	var c *Client
	replayed := make(chan error, 1)
	ovs, c := start(t, Options{EchoInterval: 200 * time.Millisecond, OnReconnect: func() {
		calls.Add(1)
		// The callback may use the client: reinstall.
		replayed <- c.Bundle(context.Background(), []util.Message{flow(1, 100, 53, 0x77, 0)})
	}})
	if err := c.Bundle(t.Context(), []util.Message{flow(1, 100, 53, 0x77, 0)}); err != nil {
		t.Fatal(err)
	}
	ovs.KillVSwitchd(t)
	select {
	case err := <-replayed:
		if err != nil {
			t.Fatalf("bundle from OnReconnect: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("no reconnection 15 s after ovs-vswitchd restarted")
	}
	if calls.Load() != 1 || c.Reconnects() != 1 {
		t.Fatalf("OnReconnect called %d times, Reconnects() = %d; want 1, 1", calls.Load(), c.Reconnects())
	}
	if flows := ovs.Ofctl(t, "br0", "-O", "OpenFlow15", "dump-flows", "table=1"); !strings.Contains(flows, "cookie=0x77") {
		t.Fatalf("the flow was not reinstalled:\n%s", flows)
	}
}

func TestPacketIns(t *testing.T) {
	ovs, c := start(t, Options{})
	in := c.PacketIns()
	fm := openflow15.NewFlowMod()
	fm.TableId, fm.Priority, fm.Cookie = 0, 100, 0x99
	fm.Match.AddField(*openflow15.NewEthTypeField(0x0800))
	ins := openflow15.NewInstrApplyActions()
	ctl := openflow15.NewActionOutput(openflow15.P_CONTROLLER)
	ctl.MaxLen = 0xffff
	_ = ins.AddAction(ctl, false)
	fm.AddInstruction(ins)
	if err := c.Bundle(t.Context(), []util.Message{fm}); err != nil {
		t.Fatal(err)
	}
	// A packet injected into the bridge hits the flow and comes to us.
	pkt := "ffffffffffff" + "020000000001" + "0800" + "4500001c0000000040110000" + "0a000001" + "0a000002" + "0035003500080000"
	ovs.Ofctl(t, "br0", "-O", "OpenFlow15", "packet-out", "in_port=LOCAL packet="+pkt+" actions=resubmit(,0)")
	select {
	case pi := <-in:
		if pi.Cookie != 0x99 || pi.TableId != 0 {
			t.Fatalf("packet-in cookie %x table %d", pi.Cookie, pi.TableId)
		}
		data, _ := pi.Data.MarshalBinary()
		if !strings.HasPrefix(fmt.Sprintf("%x", data), pkt[:24]) {
			t.Fatalf("packet-in data %x", data)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no packet-in")
	}
}

func TestRequestsWaitForTheConnectionThenTimeOut(t *testing.T) {
	dir := t.TempDir()
	sock := dir + "/none.mgmt"
	c := New(Options{Socket: sock, Timeout: 300 * time.Millisecond})
	defer c.Close()
	start := time.Now()
	err := c.Barrier(t.Context())
	if err == nil || !strings.Contains(err.Error(), "not connected") || time.Since(start) > 5*time.Second {
		t.Fatalf("Barrier without a switch = %v after %v", err, time.Since(start))
	}
	// A switch that speaks an older OpenFlow is refused with the reason.
	ln, err := net.Listen("unix", dir+"/old.mgmt")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = conn.Write([]byte{4, 0, 0, 8, 0, 0, 0, 1}) // OpenFlow 1.3 HELLO
			time.Sleep(50 * time.Millisecond)
			conn.Close()
		}
	}()
	c2 := New(Options{Socket: dir + "/old.mgmt", Timeout: 300 * time.Millisecond})
	defer c2.Close()
	if _, err := c2.dial(); err == nil || !strings.Contains(err.Error(), "OpenFlow 1.5") {
		t.Fatalf("dial of an OpenFlow 1.3 switch = %v", err)
	}
}

// BenchmarkBundleOneFlow is the cost of one change: one flow mod in one
// bundle, committed (one round trip).
func BenchmarkBundleOneFlow(b *testing.B) {
	ovs := harness.StartOVS(b, harness.OVSOptions{Bridges: []string{"br0"}})
	c := New(Options{Socket: ovs.MgmtSocket("br0")})
	defer c.Close()
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := c.Bundle(ctx, []util.Message{flow(1, 100, uint16(i), 0x77, 0)}); err != nil {
			b.Fatal(err)
		}
	}
}
