package ovsdb

import (
	"context"
	"errors"
	"fmt"

	"github.com/ovn-org/libovsdb/model"
	libovsdb "github.com/ovn-org/libovsdb/ovsdb"
)

// This file holds what nsx-ovs needs to administer the switch itself:
// the root row, bridges and the uplink. The agent and the proxy only read
// bridges and manage pod ports (bridge.go).

// InitDB makes sure the Open_vSwitch table has its single row, as
// `ovs-vsctl init` does; ovs-vswitchd does nothing until it exists.
// Idempotent. Not safe against a concurrent InitDB on an empty database
// (libovsdb cannot express OVSDB's "wait until no rows", an empty rows
// array): its one caller runs it on the ovsdb-server it has just started.
func (c *Client) InitDB(ctx context.Context) error {
	if _, err := c.root(); err == nil {
		return nil
	}
	// Written by hand: libovsdb's Create leaves out default values, and
	// OVSDB refuses an insert without a row.
	insert := libovsdb.Operation{Op: libovsdb.OperationInsert, Table: DBName, Row: libovsdb.Row{"next_cfg": 0}}
	if _, err := c.Transact(ctx, insert, comment("nsx-ujo: init")); err != nil {
		return fmt.Errorf("init Open_vSwitch row: %w", err)
	}
	// Later calls read the root row from the cache.
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	return c.waitFor(ctx, func() bool { _, err := c.root(); return err == nil })
}

// SetSwitchOtherConfig sets (value non-nil) or removes (nil) one key of
// Open_vSwitch other_config, without waiting for ovs-vswitchd: it is used
// before ovs-vswitchd runs (flow-restore-wait). Idempotent.
func (c *Client) SetSwitchOtherConfig(ctx context.Context, key string, value *string) error {
	root, err := c.root()
	if err != nil {
		return err
	}
	r := &OpenvSwitch{UUID: root.UUID}
	var t txn
	t.add(c.db.Where(r).Mutate(r, model.Mutation{Field: &r.OtherConfig, Mutator: libovsdb.MutateOperationDelete, Value: []string{key}}))
	if value != nil {
		t.add(c.db.Where(r).Mutate(r, model.Mutation{Field: &r.OtherConfig, Mutator: libovsdb.MutateOperationInsert, Value: map[string]string{key: *value}}))
	}
	if t.err == nil {
		_, t.err = c.Transact(ctx, t.ops...)
	}
	if t.err != nil {
		return fmt.Errorf("Open_vSwitch other_config:%s: %w", key, t.err)
	}
	return nil
}

// ListBridges returns the names of all bridges (from the cache).
func (c *Client) ListBridges(ctx context.Context) ([]string, error) {
	var rows []BridgeRow
	if err := c.db.List(ctx, &rows); err != nil {
		return nil, fmt.Errorf("list bridges: %w", err)
	}
	names := make([]string, 0, len(rows))
	for _, r := range rows {
		names = append(names, r.Name)
	}
	return names, nil
}

// BridgeSpec is what EnsureBridge makes true of a bridge.
type BridgeSpec struct {
	Name         string
	DatapathType string // "system" or "netdev"
	// HWAddr pins the MAC of the bridge's local interface (other_config:hwaddr);
	// "" removes the pin and lets OVS choose.
	HWAddr string
	// MTU of the local interface (Interface mtu_request); 0 leaves it to OVS.
	MTU int
}

// EnsureBridge makes the bridge exist as spec says, with its local port
// (an internal interface of the same name), and waits until ovs-vswitchd
// has applied it, so the bridge's network device exists on return. As
// `ovs-vsctl --may-exist add-br` it is idempotent: an existing bridge keeps
// its ports and flows and only has the spec's columns updated.
func (c *Client) EnsureBridge(ctx context.Context, spec BridgeSpec) error {
	_, err := c.GetBridge(ctx, spec.Name)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	var t txn
	if errors.Is(err, ErrNotFound) {
		root, err := c.root()
		if err != nil {
			return err
		}
		other := map[string]string{}
		if spec.HWAddr != "" {
			other["hwaddr"] = spec.HWAddr
		}
		iface := &InterfaceRow{UUID: "iface", Name: spec.Name, Type: "internal", MTURequest: optInt(spec.MTU)}
		port := &PortRow{UUID: "port", Name: spec.Name, Interfaces: []string{iface.UUID}}
		br := &BridgeRow{UUID: "bridge", Name: spec.Name, DatapathType: spec.DatapathType, Ports: []string{port.UUID}, OtherConfig: other}
		t.add(c.db.Create(iface, port, br))
		r := &OpenvSwitch{UUID: root.UUID}
		t.add(c.db.Where(r).Mutate(r, model.Mutation{Field: &r.Bridges, Mutator: libovsdb.MutateOperationInsert, Value: []string{br.UUID}}))
	} else {
		br := &BridgeRow{Name: spec.Name, DatapathType: spec.DatapathType}
		t.add(c.db.Where(br).Update(br, &br.DatapathType))
		// A map insert never overwrites a key: delete it first.
		t.add(c.db.Where(br).Mutate(br, model.Mutation{Field: &br.OtherConfig, Mutator: libovsdb.MutateOperationDelete, Value: []string{"hwaddr"}}))
		if spec.HWAddr != "" {
			t.add(c.db.Where(br).Mutate(br, model.Mutation{Field: &br.OtherConfig, Mutator: libovsdb.MutateOperationInsert, Value: map[string]string{"hwaddr": spec.HWAddr}}))
		}
		iface := &InterfaceRow{Name: spec.Name, MTURequest: optInt(spec.MTU)}
		t.add(c.db.Where(iface).Update(iface, &iface.MTURequest))
	}
	t.ops = append(t.ops, comment("nsx-ujo: ensure bridge "+spec.Name))
	if err := c.transactAndWait(ctx, &t); err != nil {
		return fmt.Errorf("bridge %s: %w", spec.Name, err)
	}
	return nil
}

// BridgeHWAddr returns the bridge's other_config:hwaddr ("" when unset).
func (c *Client) BridgeHWAddr(ctx context.Context, name string) (string, error) {
	b, err := c.bridgeRow(ctx, name)
	if err != nil {
		return "", err
	}
	return b.OtherConfig["hwaddr"], nil
}

// DeleteBridge removes the bridge and, with it, its ports (OVSDB
// garbage-collects the unreferenced rows) and waits for ovs-vswitchd.
// Idempotent: a missing bridge is not an error.
func (c *Client) DeleteBridge(ctx context.Context, name string) error {
	b, err := c.GetBridge(ctx, name)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	root, err := c.root()
	if err != nil {
		return err
	}
	var t txn
	r := &OpenvSwitch{UUID: root.UUID}
	t.add(c.db.Where(r).Mutate(r, model.Mutation{Field: &r.Bridges, Mutator: libovsdb.MutateOperationDelete, Value: []string{b.UUID}}))
	t.ops = append(t.ops, comment("nsx-ujo: delete bridge "+name))
	if err := c.transactAndWait(ctx, &t); err != nil {
		return fmt.Errorf("delete bridge %s: %w", name, err)
	}
	return nil
}

// EnsureTrunkPort makes bridge hold the port name untagged, i.e. trunking
// every VLAN (the uplink to the NSX hypervisor carries the pods' tags).
// Idempotent; see EnsureAccessPort for the error contract.
func (c *Client) EnsureTrunkPort(ctx context.Context, bridge, name string, externalIDs map[string]string) (*Port, error) {
	return c.EnsureAccessPort(ctx, bridge, PortSpec{Name: name, ExternalIDs: externalIDs})
}

// FlowRestoreWait says whether other_config:flow-restore-wait is true,
// read from the server rather than the cache: a cache may predate a
// restart of ovsdb-server, and the flag is set by the nsx-ovs that
// restarted it. An error when the server does not answer.
func (c *Client) FlowRestoreWait(ctx context.Context) (bool, error) {
	op := libovsdb.Operation{Op: libovsdb.OperationSelect, Table: "Open_vSwitch", Columns: []string{"_uuid"},
		Where: []libovsdb.Condition{{Column: "other_config", Function: libovsdb.ConditionIncludes,
			Value: libovsdb.OvsMap{GoMap: map[interface{}]interface{}{"flow-restore-wait": "true"}}}}}
	res, err := c.Transact(ctx, op)
	if err != nil {
		return false, fmt.Errorf("Open_vSwitch other_config:flow-restore-wait: %w", err)
	}
	return len(res) > 0 && len(res[0].Rows) > 0, nil
}
