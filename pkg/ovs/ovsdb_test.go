package ovs_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nsx-ujo/nsx-ujo/pkg/ovs"
	"github.com/nsx-ujo/nsx-ujo/tests/harness"
)

func TestDecoders(t *testing.T) {
	if got := ovs.DecodeMap([]any{"map", []any{[]any{"a", "1"}, []any{"b", "2"}}}); got["a"] != "1" || got["b"] != "2" {
		t.Fatalf("DecodeMap %v", got)
	}
	if got := ovs.DecodeUUIDSet([]any{"uuid", "x"}); len(got) != 1 || got[0] != "x" {
		t.Fatalf("single uuid %v", got)
	}
	if got := ovs.DecodeUUIDSet([]any{"set", []any{[]any{"uuid", "x"}, []any{"uuid", "y"}}}); len(got) != 2 {
		t.Fatalf("uuid set %v", got)
	}
	if _, ok := ovs.DecodeInt([]any{"set", []any{}}); ok {
		t.Fatal("empty optional int decoded as a value")
	}
}

func TestPortLifecycleAndErrors(t *testing.T) {
	o := harness.StartOVS(t, harness.OVSOptions{Bridges: []string{"br-int"}})
	db, err := ovs.Dial(o.DBSock, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()

	ensure := func(name string, tag int) (*ovs.Port, error) {
		return db.EnsureAccessPort(ctx, "br-int", ovs.PortSpec{Name: name, Tag: tag, ExternalIDs: map[string]string{"k": "v"}})
	}
	// A system port whose device does not exist is committed but refused by
	// vswitchd: the caller gets the port and an error naming it.
	p, err := ensure("nodev0", 10)
	if err == nil || p == nil || p.Name != "nodev0" {
		t.Fatalf("missing device: port %+v, err %v", p, err)
	}
	if err := db.DeletePort(ctx, "br-int", "nodev0"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.GetPort(ctx, "nodev0"); !errors.Is(err, ovs.ErrNotFound) {
		t.Fatalf("GetPort after delete: %v", err)
	}
	if err := db.DeletePort(ctx, "br-int", "nodev0"); err != nil {
		t.Fatalf("second delete: %v", err)
	}

	// A missing bridge is ErrNotFound and commits nothing.
	_, err = db.EnsureAccessPort(ctx, "br-nope", ovs.PortSpec{Name: "x0", Tag: 5})
	if !errors.Is(err, ovs.ErrNotFound) {
		t.Fatalf("missing bridge: %v", err)
	}
	if _, err := db.GetPort(ctx, "x0"); !errors.Is(err, ovs.ErrNotFound) {
		t.Fatalf("a port was committed for a missing bridge: %v", err)
	}

	// OVSDB's own errors surface as *TxError with the details.
	_, err = db.Transact(ctx, ovs.Insert("Port", ovs.Row{"name": "p", "tag": 5000}, ""))
	var te *ovs.TxError
	if !errors.As(err, &te) || te.OpName != "insert" || te.Err == "" {
		t.Fatalf("tag 5000: %v", err)
	}
	if err := db.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	b, err := db.GetBridge(ctx, "br-int")
	if err != nil || b.DatapathType != "netdev" {
		t.Fatalf("bridge %+v, %v", b, err)
	}
}
