package ovsdb_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/ovn-org/libovsdb/model"
	libovsdb "github.com/ovn-org/libovsdb/ovsdb"

	"github.com/nsx-ujo/nsx-ujo/pkg/ovsdb"
	"github.com/nsx-ujo/nsx-ujo/tests/harness"
)

// startDB is an OVS with br-int and a client of its database.
func startDB(t *testing.T, timeout time.Duration) (*harness.OVS, *ovsdb.Client) {
	o := harness.StartOVS(t, harness.OVSOptions{Bridges: []string{"br-int"}})
	db, err := ovsdb.Dial(o.DBSock, ovsdb.Options{Timeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return o, db
}

func TestPortLifecycleAndErrors(t *testing.T) {
	o, db := startDB(t, 5*time.Second)
	ctx := context.Background()

	ensure := func(name string, tag int) (*ovsdb.Port, error) {
		return db.EnsureAccessPort(ctx, "br-int", ovsdb.PortSpec{Name: name, Tag: tag, ExternalIDs: map[string]string{"k": "v"}})
	}
	// A system port whose device does not exist is committed but refused by
	// vswitchd: the caller gets the port and an error naming it.
	p, err := ensure("nodev0", 10)
	if err == nil || p == nil || p.Name != "nodev0" || p.Error == "" {
		t.Fatalf("missing device: port %+v, err %v", p, err)
	}
	// An internal port works, carries its tag and external_ids, and an
	// ensure of the same name updates it in place.
	p, err = db.EnsureAccessPort(ctx, "br-int", ovsdb.PortSpec{Name: "int0", Tag: 7, Type: "internal", ExternalIDs: map[string]string{"k": "v"}})
	if err != nil || p.OFPort <= 0 || p.Tag != 7 || p.ExternalIDs["k"] != "v" {
		t.Fatalf("internal port: %+v, %v", p, err)
	}
	if got := o.Vsctl(t, "get", "Port", "int0", "tag"); got != "7\n" {
		t.Fatalf("tag in OVSDB %q", got)
	}
	p2, err := db.EnsureAccessPort(ctx, "br-int", ovsdb.PortSpec{Name: "int0", Type: "internal", ExternalIDs: map[string]string{"k": "w"}})
	if err != nil || p2.UUID != p.UUID || p2.Tag != 0 || p2.ExternalIDs["k"] != "w" || p2.OFPort != p.OFPort {
		t.Fatalf("update in place: %+v, %v (was %+v)", p2, err, p)
	}
	ports, err := db.ListPorts(ctx, "br-int")
	if err != nil || len(ports) != 3 || ports[0].Name != "br-int" || ports[1].Name != "int0" || ports[2].Name != "nodev0" {
		t.Fatalf("ListPorts: %+v, %v", ports, err)
	}
	for _, name := range []string{"nodev0", "int0"} {
		if err := db.DeletePort(ctx, "br-int", name); err != nil {
			t.Fatal(err)
		}
		if _, err := db.GetPort(ctx, name); !errors.Is(err, ovsdb.ErrNotFound) {
			t.Fatalf("GetPort after delete: %v", err)
		}
		if err := db.DeletePort(ctx, "br-int", name); err != nil {
			t.Fatalf("second delete: %v", err)
		}
	}
	if got := o.Vsctl(t, "list-ports", "br-int"); got != "" {
		t.Fatalf("ports left in OVSDB: %q", got)
	}

	// A missing bridge is ErrNotFound and commits nothing.
	_, err = db.EnsureAccessPort(ctx, "br-nope", ovsdb.PortSpec{Name: "x0", Tag: 5})
	if !errors.Is(err, ovsdb.ErrNotFound) {
		t.Fatalf("missing bridge: %v", err)
	}
	if _, err := db.GetPort(ctx, "x0"); !errors.Is(err, ovsdb.ErrNotFound) {
		t.Fatalf("a port was committed for a missing bridge: %v", err)
	}

	// OVSDB's own refusals surface as *TxError with the details: two
	// bridges with one name break the Bridge table's index at commit.
	ops, err := db.API().Create(&ovsdb.BridgeRow{UUID: "a", Name: "dup"}, &ovsdb.BridgeRow{UUID: "b", Name: "dup"})
	if err != nil {
		t.Fatal(err)
	}
	root := &ovsdb.OpenvSwitch{}
	ref, err := db.API().WhereCache(func(*ovsdb.OpenvSwitch) bool { return true }).Mutate(root,
		model.Mutation{Field: &root.Bridges, Mutator: libovsdb.MutateOperationInsert, Value: []string{"a", "b"}})
	if err != nil {
		t.Fatal(err)
	}
	ops = append(ops, ref...)
	_, err = db.Transact(ctx, ops...)
	var te *ovsdb.TxError
	if !errors.As(err, &te) || te.OpName != "commit" || te.Err != "constraint violation" {
		t.Fatalf("duplicate bridge name: %v", err)
	}
	if err := db.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	b, err := db.GetBridge(ctx, "br-int")
	if err != nil || b.DatapathType != "netdev" {
		t.Fatalf("bridge %+v, %v", b, err)
	}
}

// The client outlives an ovsdb-server restart: it reconnects, refills its
// cache, and the next write works.
func TestReconnectAfterServerRestart(t *testing.T) {
	o, db := startDB(t, 10*time.Second)
	ctx := context.Background()
	o.RestartDB(t)
	p, err := db.EnsureAccessPort(ctx, "br-int", ovsdb.PortSpec{Name: "after0", Type: "internal"})
	if err != nil || p.OFPort <= 0 {
		t.Fatalf("port after restart: %+v, %v", p, err)
	}
	if _, err := db.GetPort(ctx, "after0"); err != nil {
		t.Fatal(err)
	}
}

// TestFlowRestoreWait reads the flag from the server, whoever set it.
func TestFlowRestoreWait(t *testing.T) {
	o, db := startDB(t, 5*time.Second)
	ctx := context.Background()
	for _, tc := range []struct {
		set  []string
		want bool
	}{
		{[]string{"remove", "Open_vSwitch", ".", "other_config", "flow-restore-wait"}, false},
		{[]string{"set", "Open_vSwitch", ".", "other_config:flow-restore-wait=true"}, true},
		{[]string{"set", "Open_vSwitch", ".", "other_config:flow-restore-wait=false"}, false},
	} {
		o.Vsctl(t, tc.set...)
		if got, err := db.FlowRestoreWait(ctx); err != nil || got != tc.want {
			t.Errorf("after ovs-vsctl %v: %v, %v; want %v", tc.set, got, err, tc.want)
		}
	}
}
