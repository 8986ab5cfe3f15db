package openflow

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"antrea.io/libOpenflow/openflow15"
	"antrea.io/libOpenflow/util"
	"go.uber.org/zap/zaptest"
)

// fakeSwitch is a minimal OpenFlow switch on a unix socket, for what a
// real ovs-vswitchd cannot be made to do (go silent, speak only 1.3, send
// garbage). These tests need no root.
type fakeSwitch struct {
	t    *testing.T
	path string
	ln   net.Listener
	// mode of the i-th accepted connection: "ok" answers echo, barrier and
	// get-config; "slow" answers echo only; "silent" sends HELLO then
	// never answers; "of13" sends an OpenFlow 1.3-only HELLO; "nohello"
	// sends nothing.
	mode func(i int) string

	mu       sync.Mutex
	current  net.Conn
	received []string // what the client sent: message type names, bundle controls by type
	wg       sync.WaitGroup
}

// got returns what the client sent so far.
func (f *fakeSwitch) got() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.received...)
}

func newFakeSwitch(t *testing.T, mode func(i int) string) *fakeSwitch {
	f := &fakeSwitch{t: t, path: filepath.Join(t.TempDir(), "br0.mgmt"), mode: mode}
	ln, err := net.Listen("unix", f.path)
	if err != nil {
		t.Fatal(err)
	}
	f.ln = ln
	f.wg.Add(1)
	go f.serve()
	t.Cleanup(func() {
		ln.Close()
		f.mu.Lock()
		if f.current != nil {
			f.current.Close()
		}
		f.mu.Unlock()
		f.wg.Wait()
	})
	return f
}

func (f *fakeSwitch) serve() {
	defer f.wg.Done()
	for i := 0; ; i++ {
		nc, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.mu.Lock()
		f.current = nc
		f.mu.Unlock()
		f.wg.Add(1)
		go f.handle(nc, f.mode(i))
	}
}

// send writes raw to the latest connection.
func (f *fakeSwitch) send(raw []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.current.Write(raw); err != nil {
		f.t.Errorf("fake switch: %v", err)
	}
}

func (f *fakeSwitch) reply(nc net.Conn, raw []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, _ = nc.Write(raw)
}

func (f *fakeSwitch) handle(nc net.Conn, mode string) {
	defer f.wg.Done()
	defer nc.Close()
	switch mode {
	case "nohello":
		_, _ = io.Copy(io.Discard, nc)
		return
	case "of13":
		// Version 4 with a bitmap of 1.0 and 1.3.
		f.reply(nc, []byte{4, 0, 0, 16, 0, 0, 0, 1, 0, 1, 0, 8, 0, 0, 0, 0x12})
	default:
		f.reply(nc, hello)
	}
	for {
		raw, err := readMsg(nc)
		if err != nil || mode == "of13" {
			return
		}
		if mode == "silent" {
			continue
		}
		what := msgTypeName(raw[1])
		if raw[1] == openflow15.Type_BundleControl && len(raw) >= 16 {
			what = [...]string{"OPEN", "", "CLOSE", "", "COMMIT", "", "DISCARD", ""}[binary.BigEndian.Uint16(raw[12:])&7]
		}
		f.mu.Lock()
		if raw[1] != openflow15.Type_EchoRequest && raw[1] != openflow15.Type_Hello {
			f.received = append(f.received, what)
		}
		f.mu.Unlock()
		xid := binary.BigEndian.Uint32(raw[4:])
		switch {
		case raw[1] == openflow15.Type_EchoRequest:
			f.reply(nc, header(openflow15.Type_EchoReply, xid, 8))
		case mode == "slow":
		case raw[1] == openflow15.Type_BarrierRequest:
			f.reply(nc, header(openflow15.Type_BarrierReply, xid, 8))
		case raw[1] == openflow15.Type_GetConfigRequest:
			f.reply(nc, header(openflow15.Type_GetConfigReply, xid, 12))
		}
	}
}

func fakeClient(t *testing.T, f *fakeSwitch, o Options) *Client {
	o.Socket = f.path
	o.Log = zaptest.NewLogger(t)
	c := New(o)
	t.Cleanup(func() { c.Close() })
	return c
}

func TestRequestsWaitForAConnectionThenTimeOut(t *testing.T) {
	t.Parallel()
	c := New(Options{Socket: filepath.Join(t.TempDir(), "none.mgmt"), Timeout: 200 * time.Millisecond, Log: zaptest.NewLogger(t)})
	start := time.Now()
	err := c.Barrier(context.Background())
	if err == nil || !strings.Contains(err.Error(), "not connected") || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Barrier without a switch = %v", err)
	}
	if d := time.Since(start); d < 150*time.Millisecond || d > 3*time.Second {
		t.Errorf("Barrier gave up after %v, want about the 200ms Timeout", d)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := c.Bundle(ctx, []util.Message{ipFlow(0, 1, 1, ip4(1))}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Bundle without a switch = %v", err)
	}
	if c.Connected() || c.RoundTrips() != 0 {
		t.Errorf("Connected %v, RoundTrips %d", c.Connected(), c.RoundTrips())
	}
	c.Close()
	if err := c.Barrier(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("Barrier after Close = %v, want ErrClosed", err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
}

func TestRefusesASwitchWithoutOpenFlow15(t *testing.T) {
	t.Parallel()
	f := newFakeSwitch(t, func(int) string { return "of13" })
	c := fakeClient(t, f, Options{Timeout: time.Second})
	_, err := c.dial()
	if err == nil || !strings.Contains(err.Error(), "does not speak OpenFlow 1.5") || !strings.Contains(err.Error(), f.path) {
		t.Errorf("dial of an OpenFlow 1.3 switch = %v", err)
	}
	time.Sleep(300 * time.Millisecond)
	if c.Connected() {
		t.Error("connected to an OpenFlow 1.3 switch")
	}
}

func TestSilentSwitchIsDroppedAndReconnected(t *testing.T) {
	t.Parallel()
	f := newFakeSwitch(t, func(i int) string {
		if i == 0 {
			return "silent"
		}
		return "ok"
	})
	var calls atomic.Int32
	c := fakeClient(t, f, Options{EchoInterval: 50 * time.Millisecond, OnReconnect: func() { calls.Add(1) }})
	waitUntil(t, 5*time.Second, "reconnected", func() bool { return c.Reconnects() == 1 && c.Connected() })
	if err := c.Barrier(context.Background()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // echo replies keep the new connection
	if c.Reconnects() != 1 || calls.Load() != 1 {
		t.Errorf("Reconnects %d, OnReconnect calls %d; want 1 and 1", c.Reconnects(), calls.Load())
	}
}

func TestUndecodablePacketInsAreDropped(t *testing.T) {
	t.Parallel()
	f := newFakeSwitch(t, func(int) string { return "ok" })
	c := fakeClient(t, f, Options{EchoInterval: 50 * time.Millisecond})
	waitUntil(t, 5*time.Second, "connected", c.Connected)
	in := c.PacketIns()
	packetIn := func(match []byte) []byte {
		pi := header(openflow15.Type_PacketIn, 0, 8+16)
		binary.BigEndian.PutUint32(pi[8:], 0xffffffff) // buffer_id
		binary.BigEndian.PutUint64(pi[16:], 0x42)      // cookie
		pi = append(pi, match...)
		pi = append(pi, 0, 0)                        // pad
		pi = append(pi, []byte("0123456789abcd")...) // frame
		binary.BigEndian.PutUint16(pi[2:], uint16(len(pi)))
		return pi
	}
	inPort := []byte{0, 1, 0, 12, 0x80, 0, 0, 4, 0xff, 0xff, 0xff, 0xfe, 0, 0, 0, 0} // OXM match: in_port=LOCAL
	// NXM_NX_TUN_ID (class 1, field 16): libOpenflow has no decoder for it
	// and dereferences nil.
	tunID := []byte{0, 1, 0, 16, 0, 1, 32, 8, 0, 0, 0, 0, 0, 0, 0, 1}
	f.send(packetIn(tunID))
	f.send(header(openflow15.Type_PacketIn, 0, 12)) // truncated
	f.send(packetIn(inPort))
	select {
	case pi := <-in:
		if pi.Cookie != 0x42 || len(pi.Match.Fields) != 1 {
			t.Errorf("packet-in %+v", pi)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no packet-in")
	}
	if err := c.Barrier(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case pi := <-in:
		t.Errorf("unexpected packet-in %+v", pi)
	default:
	}
	if c.Reconnects() != 0 {
		t.Errorf("the garbage cost %d reconnections", c.Reconnects())
	}
}

// A bundle whose ADDs are not confirmed in time is discarded, never
// committed.
func TestBundleTimeoutDiscards(t *testing.T) {
	t.Parallel()
	f := newFakeSwitch(t, func(int) string { return "slow" })
	c := fakeClient(t, f, Options{})
	waitUntil(t, 5*time.Second, "connected", c.Connected)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	err := c.Bundle(ctx, []util.Message{ipFlow(0, 1, 1, ip4(1)), ipFlow(0, 1, 1, ip4(2))})
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), f.path) {
		t.Errorf("Bundle = %v, want a deadline error naming the socket", err)
	}
	want := "OPEN BUNDLE_ADD_MESSAGE BUNDLE_ADD_MESSAGE BARRIER_REQUEST DISCARD"
	waitUntil(t, 5*time.Second, "the discard", func() bool { return strings.Join(f.got(), " ") == want })
	if c.Reconnects() != 0 || !c.Connected() {
		t.Errorf("the timeout cost the connection")
	}
}

// Close does not wait for a handshake the switch never completes.
func TestCloseDuringHandshake(t *testing.T) {
	t.Parallel()
	f := newFakeSwitch(t, func(int) string { return "nohello" })
	c := fakeClient(t, f, Options{Timeout: time.Minute})
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	c.Close()
	if d := time.Since(start); d > time.Second {
		t.Errorf("Close took %v", d)
	}
}
