package hyperbus

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/nsx-ujo/nsx-ujo/pkg/agent/podconfig"
)

func cfgFor(node, name, uid string, vlan int) ContainerConfig {
	return ContainerConfig{Node: node, Pod: PodRef{Namespace: "default", Name: name, UID: uid},
		Config: []byte(fmt.Sprintf(`{"version":1,"pod_uid":%q,"ip_address":"10.0.1.5/24","mac_address":"02:50:56:00:01:05","gateway_ip":"10.0.1.1","vlan_id":%d}`, uid, vlan))}
}

// start runs a Server for node-1 on a loopback listener.
func start(t *testing.T) (*Server, string) {
	t.Helper()
	s := NewServer(ServerOptions{Node: "node-1", Heartbeat: 200 * time.Millisecond, Log: zaptest.NewLogger(t)})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s, l.Addr().String()
}

func dial(t *testing.T, addr string) *Client {
	t.Helper()
	c, err := Dial(context.Background(), addr, "node-1", 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func get(s *Server, name, uid string, wait time.Duration) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	cfg, err := s.Get(ctx, "default", name, uid)
	if err != nil {
		return 0, err
	}
	return cfg.VLAN, nil
}

func TestSessionConfigsAndPodUID(t *testing.T) {
	s, addr := start(t)
	c := dial(t, addr)
	ctx := context.Background()
	if s.Synced() {
		t.Fatal("synced before any snapshot")
	}
	if err := c.Snapshot(ctx, []ContainerConfig{cfgFor("node-1", "a", "uid-a1", 101)}); err != nil {
		t.Fatal(err)
	}
	if v, err := get(s, "a", "uid-a1", time.Second); err != nil || v != 101 || !s.Synced() || !s.PodExists("uid-a1") {
		t.Fatalf("after the snapshot: vlan %d, %v, synced %v", v, err, s.Synced())
	}
	// A recreated pod of the same name never gets its predecessor's config:
	// Get waits for the new pod's, which an upsert brings.
	got := make(chan error, 1)
	go func() {
		v, err := get(s, "a", "uid-a2", 5*time.Second)
		if err == nil && v != 102 {
			err = fmt.Errorf("vlan %d, want 102", v)
		}
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("Get for the new uid returned before its config arrived: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	if err := c.Upsert(ctx, cfgFor("node-1", "a", "uid-a2", 102)); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatalf("Get for the new uid: %v", err)
	}
	if _, err := get(s, "a", "uid-a1", 200*time.Millisecond); err == nil || !strings.Contains(err.Error(), "uid-a2") {
		t.Fatalf("Get for the old uid: %v, want a wait naming the uid held", err)
	}
	if err := c.Delete(ctx, PodRef{Namespace: "default", Name: "a", UID: "uid-a2"}); err != nil {
		t.Fatal(err)
	}
	if s.PodExists("uid-a2") {
		t.Fatal("deleted pod still held")
	}
	// Status back to the hypervisor.
	s.ReportStatus(podconfig.PodStatus{Namespace: "default", Name: "a", UID: "uid-a2"})
	select {
	case m := <-c.Statuses():
		if m.Pod.UID != "uid-a2" || m.State != StateDetached {
			t.Fatalf("status %+v", m)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("no status")
	}
}

// Bad input is refused with the field named, and changes nothing; the
// session goes on.
func TestBadInputChangesNothing(t *testing.T) {
	s, addr := start(t)
	c := dial(t, addr)
	ctx := context.Background()
	if err := c.Snapshot(ctx, []ContainerConfig{cfgFor("node-1", "a", "uid-a", 101)}); err != nil {
		t.Fatal(err)
	}
	wrongUID := cfgFor("node-1", "c", "uid-c", 101)
	wrongUID.Config = []byte(`{"version":1,"pod_uid":"uid-x","ip_address":"10.0.1.5/24","mac_address":"02:50:56:00:01:05","vlan_id":101}`)
	for _, tc := range []struct {
		do   func() error
		want string
	}{
		{func() error { return c.Upsert(ctx, cfgFor("node-1", "b", "uid-b", 5000)) }, `config.config: field "vlan_id" = "5000"`},
		{func() error { return c.Upsert(ctx, cfgFor("node-2", "b", "uid-b", 101)) }, `config.node = "node-2": this is node "node-1"`},
		{func() error { return c.Upsert(ctx, wrongUID) }, "pod_uid"},
		{func() error {
			return c.Snapshot(ctx, []ContainerConfig{cfgFor("node-1", "b", "uid-b", 102), cfgFor("node-1", "c", "uid-c", 0)})
		}, `configs[1].config: field "vlan_id"`},
	} {
		var ae *AckError
		if err := tc.do(); !errors.As(err, &ae) || !strings.Contains(ae.Msg, tc.want) {
			t.Errorf("error %v, want an ack naming %s", err, tc.want)
		}
	}
	if v, err := get(s, "a", "uid-a", time.Second); err != nil || v != 101 || s.PodExists("uid-b") || s.PodExists("uid-c") {
		t.Fatalf("after refused messages: a vlan %d (%v), b held %v, c held %v", v, err, s.PodExists("uid-b"), s.PodExists("uid-c"))
	}
}

// A malformed frame ends that session (there is no resynchronisation
// point); the configs stay, the agent reports no session, and a new
// session's snapshot reconciles.
func TestMalformedFrameAndReconnect(t *testing.T) {
	s, addr := start(t)
	c := dial(t, addr)
	ctx := context.Background()
	if err := c.Snapshot(ctx, []ContainerConfig{cfgFor("node-1", "a", "uid-a", 101), cfgFor("node-1", "b", "uid-b", 102)}); err != nil {
		t.Fatal(err)
	}
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	hello := []byte(`{"type":"hello","versions":[1],"node":"node-1"}`)
	garbage := []byte(`{"type":"upsert","seq":1,"config":`)
	for _, f := range [][]byte{hello, garbage} {
		raw.Write(binary.BigEndian.AppendUint32(nil, uint32(len(f))))
		raw.Write(f)
	}
	// The raw session replaced c's; it ends on the bad frame.
	deadline := time.Now().Add(5 * time.Second)
	for {
		if up, since := s.Connected(); !up && !since.IsZero() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the session with a malformed frame did not end")
		}
		time.Sleep(20 * time.Millisecond)
	}
	<-c.Done()
	if v, err := get(s, "b", "uid-b", time.Second); err != nil || v != 102 {
		t.Fatalf("configs after the session ended: %d, %v", v, err)
	}
	c2 := dial(t, addr)
	if err := c2.Snapshot(ctx, []ContainerConfig{cfgFor("node-1", "a", "uid-a", 111)}); err != nil {
		t.Fatal(err)
	}
	if v, err := get(s, "a", "uid-a", time.Second); err != nil || v != 111 || s.PodExists("uid-b") {
		t.Fatalf("after the new snapshot: a vlan %d (%v), b held %v", v, err, s.PodExists("uid-b"))
	}
}

// A dual-stack pod's config (ipv6_address, ipv6_gateway_ip) comes through
// whole; a bad IPv6 field is refused naming it, and changes nothing.
func TestDualStackConfig(t *testing.T) {
	s, addr := start(t)
	c := dial(t, addr)
	ctx := context.Background()
	dual := func(name, uid, ip6, gw6 string) ContainerConfig {
		cc := cfgFor("node-1", name, uid, 101)
		cc.Config = []byte(fmt.Sprintf(`{"version":1,"pod_uid":%q,"ip_address":"10.0.1.5/24","mac_address":"02:50:56:00:01:05",`+
			`"gateway_ip":"10.0.1.1","ipv6_address":%q,"ipv6_gateway_ip":%q,"vlan_id":101}`, uid, ip6, gw6))
		return cc
	}
	if err := c.Snapshot(ctx, []ContainerConfig{dual("a", "uid-a", "fd00:10:0:1::5/64", "fd00:10:0:1::1")}); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	cfg, err := s.Get(wctx, "default", "a", "uid-a")
	if err != nil || cfg.IP.String() != "10.0.1.5/24" || cfg.IP6.String() != "fd00:10:0:1::5/64" || cfg.Gateway6.String() != "fd00:10:0:1::1" {
		t.Fatalf("dual-stack config: %+v, %v", cfg, err)
	}
	var ae *AckError
	if err := c.Upsert(ctx, dual("a", "uid-a", "fd00:10:0:1::5/64", "fd00:99::1")); !errors.As(err, &ae) ||
		!strings.Contains(ae.Msg, `config.config: field "ipv6_gateway_ip" = "fd00:99::1"`) {
		t.Fatalf("upsert with a gateway outside the IPv6 subnet: %v", err)
	}
	if cfg, err := s.Get(wctx, "default", "a", "uid-a"); err != nil || cfg.Gateway6.String() != "fd00:10:0:1::1" {
		t.Fatalf("after the refused upsert: %+v, %v", cfg, err)
	}
	// A config that differs in its IPv6 address alone is another config.
	other := *cfg
	other.IP6 = &net.IPNet{IP: net.ParseIP("fd00:10:0:1::6"), Mask: cfg.IP6.Mask}
	if !sameConfig(cfg, cfg) || sameConfig(cfg, &other) {
		t.Fatal("sameConfig ignores the IPv6 address")
	}
	other.IP6, other.Gateway6 = cfg.IP6, nil
	if sameConfig(cfg, &other) {
		t.Fatal("sameConfig ignores the IPv6 gateway")
	}
}

func TestHelloRefused(t *testing.T) {
	_, addr := start(t)
	if _, err := Dial(context.Background(), addr, "node-2", time.Second); err == nil || !strings.Contains(err.Error(), `"node" = "node-2"`) {
		t.Fatalf("hello for another node: %v", err)
	}
}

func TestDecodeErrorsNameTheField(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`{"type":"upsert","seq":1}`, `field "config" is required`},
		{`{"type":"snapshot"}`, `field "seq" is required`},
		{`{"type":"nope"}`, `field "type" = "nope"`},
		{`{"seq":1}`, `field "type" is required`},
		{`{"type":"hello"}`, `field "versions" is required`},
		{`{"type":"delete","seq":"1"}`, `field "seq"`},
		{`{"type":"ack","extra":1}`, `unknown field "extra"`},
		{`{"type":"ack"} {"type":"ack"}`, "more than one JSON value"},
	} {
		if _, err := Decode([]byte(tc.in)); !errors.Is(err, ErrFrame) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want ErrFrame naming %s", tc.in, err, tc.want)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"type":"hello","versions":[1],"node":"n"}`))
	f.Add([]byte(`{"type":"snapshot","seq":1,"configs":[{"node":"n","pod":{"namespace":"d","name":"a","uid":"u"},"config":{"version":1}}]}`))
	f.Add([]byte(`{"type":"status","pod":{"namespace":"d","name":"a","uid":"u"},"state":"attached"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Decode(b)
		if err != nil {
			return
		}
		// Whatever decodes re-encodes, and validating its configs never panics.
		var buf strings.Builder
		if err := WriteMessage(&buf, m); err != nil {
			t.Fatal(err)
		}
		for i := range m.Configs {
			_, _ = m.Configs[i].Validate("n", "configs")
		}
		if m.Config != nil {
			_, _ = m.Config.Validate("n", "config")
		}
	})
}
