package ovsdb

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/ovn-org/libovsdb/client"
	"github.com/ovn-org/libovsdb/model"
	libovsdb "github.com/ovn-org/libovsdb/ovsdb"
)

// ErrNotFound is returned (wrapped) when a named bridge, port or interface
// does not exist.
var ErrNotFound = errors.New("not found")

// Bridge is the part of a Bridge row nsx-ujo reads.
type Bridge struct {
	UUID         string
	Name         string
	DatapathType string // "" means system
	Ports        []string
}

// GetBridge reads the bridge called name (from the cache).
func (c *Client) GetBridge(ctx context.Context, name string) (*Bridge, error) {
	b, err := c.bridgeRow(ctx, name)
	if err != nil {
		return nil, err
	}
	return &Bridge{UUID: b.UUID, Name: b.Name, DatapathType: b.DatapathType, Ports: b.Ports}, nil
}

func (c *Client) bridgeRow(ctx context.Context, name string) (*BridgeRow, error) {
	b := &BridgeRow{Name: name}
	if err := c.get(ctx, b, "bridge", name); err != nil {
		return nil, err
	}
	return b, nil
}

// get fills m, a row with its index column set, from the cache; a row that
// is not there is ErrNotFound.
func (c *Client) get(ctx context.Context, m model.Model, what, name string) error {
	if err := c.db.Get(ctx, m); err != nil {
		if errors.Is(err, client.ErrNotFound) {
			return fmt.Errorf("%s %s: %w", what, name, ErrNotFound)
		}
		return fmt.Errorf("%s %s: %w", what, name, err)
	}
	return nil
}

// Port is a Port row joined with its (single) Interface.
type Port struct {
	UUID        string
	Name        string
	Tag         int // 0: untagged (trunk)
	ExternalIDs map[string]string
	// From the Interface of the same name.
	Type   string
	OFPort int    // -1 when vswitchd could not add it, 0 before it tried
	Error  string // Interface.error
}

// PortSpec describes an access port (one interface, one VLAN tag).
type PortSpec struct {
	Name        string
	Tag         int    // 1..4094, 0 for none
	Type        string // Interface type: "" (a system interface) or "internal" (ovs-vswitchd creates it)
	ExternalIDs map[string]string
}

func optInt(v int) *int {
	if v == 0 {
		return nil
	}
	return &v
}

// bridgeExists is a wait operation that aborts the transaction unless the
// bridge exists when it commits: the cache may be a moment behind.
func (c *Client) bridgeExists(t *txn, name string) {
	br := &BridgeRow{Name: name}
	zero := 0
	t.add(c.db.Where(br).Wait(libovsdb.WaitConditionEqual, &zero, br, &br.Name))
}

// EnsureAccessPort makes bridge hold a port spec.Name with its interface,
// tag and external_ids, in one transaction, and waits until ovs-vswitchd has
// applied it. Idempotent: an existing port of that name on the bridge is
// updated in place. When the port was committed but is not usable (vswitchd
// cannot open the device, or did not confirm in time) it returns the port
// and an error: the caller decides whether to delete it.
func (c *Client) EnsureAccessPort(ctx context.Context, bridge string, spec PortSpec) (*Port, error) {
	existing, err := c.GetPort(ctx, spec.Name)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return nil, err
	}
	ids := spec.ExternalIDs
	if ids == nil {
		ids = map[string]string{}
	}
	var t txn
	c.bridgeExists(&t, bridge)
	br := &BridgeRow{Name: bridge}
	if existing == nil {
		iface := &InterfaceRow{UUID: "iface", Name: spec.Name, Type: spec.Type, ExternalIDs: ids}
		port := &PortRow{UUID: "port", Name: spec.Name, Interfaces: []string{iface.UUID}, Tag: optInt(spec.Tag), ExternalIDs: ids}
		t.add(c.db.Create(iface, port))
		t.add(c.db.Where(br).Mutate(br, model.Mutation{Field: &br.Ports, Mutator: libovsdb.MutateOperationInsert, Value: []string{port.UUID}}))
	} else {
		port := &PortRow{Name: spec.Name, Tag: optInt(spec.Tag), ExternalIDs: ids}
		t.add(c.db.Where(port).Update(port, &port.Tag, &port.ExternalIDs))
		iface := &InterfaceRow{Name: spec.Name, Type: spec.Type, ExternalIDs: ids}
		t.add(c.db.Where(iface).Update(iface, &iface.Type, &iface.ExternalIDs))
		// Re-parent it if it sits on another bridge; insert is a no-op
		// when it is already there.
		t.add(c.db.Where(br).Mutate(br, model.Mutation{Field: &br.Ports, Mutator: libovsdb.MutateOperationInsert, Value: []string{existing.UUID}}))
	}
	t.ops = append(t.ops, comment("nsx-ujo: ensure port "+spec.Name+" on "+bridge))
	if err := c.transactAndWait(ctx, &t); err != nil {
		var te *TxError
		if errors.As(err, &te) && te.OpName == libovsdb.OperationWait {
			return nil, fmt.Errorf("port %s: bridge %s: %w", spec.Name, bridge, ErrNotFound)
		}
		var na *NotAppliedError
		if errors.As(err, &na) {
			// Committed: hand the caller the port so it can roll back.
			return &Port{Name: spec.Name}, fmt.Errorf("port %s on %s: %w", spec.Name, bridge, err)
		}
		return nil, fmt.Errorf("port %s on %s: %w", spec.Name, bridge, err)
	}
	p, err := c.GetPort(ctx, spec.Name)
	if err != nil {
		return nil, err
	}
	if p.OFPort < 0 || p.Error != "" {
		return p, fmt.Errorf("port %s on %s: ovs-vswitchd could not add it: %s", spec.Name, bridge, p.Error)
	}
	return p, nil
}

// DeletePort removes the port called name from bridge. Idempotent: a port
// that is not there is not an error. The Port and Interface rows go with
// the reference (OVSDB garbage-collects non-root rows).
func (c *Client) DeletePort(ctx context.Context, bridge, name string) error {
	p, err := c.GetPort(ctx, name)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	var t txn
	br := &BridgeRow{Name: bridge}
	t.add(c.db.Where(br).Mutate(br, model.Mutation{Field: &br.Ports, Mutator: libovsdb.MutateOperationDelete, Value: []string{p.UUID}}))
	t.ops = append(t.ops, comment("nsx-ujo: delete port "+name+" from "+bridge))
	if err := c.transactAndWait(ctx, &t); err != nil {
		return fmt.Errorf("delete port %s from %s: %w", name, bridge, err)
	}
	return nil
}

// GetPort reads one port and its interface by name (from the cache).
func (c *Client) GetPort(ctx context.Context, name string) (*Port, error) {
	pr := &PortRow{Name: name}
	if err := c.get(ctx, pr, "port", name); err != nil {
		return nil, err
	}
	p := c.join(pr)
	return &p, nil
}

// join completes a Port row with its Interface of the same name.
func (c *Client) join(pr *PortRow) Port {
	p := Port{UUID: pr.UUID, Name: pr.Name, ExternalIDs: pr.ExternalIDs}
	if pr.Tag != nil {
		p.Tag = *pr.Tag
	}
	ir := &InterfaceRow{Name: pr.Name}
	if err := c.db.Get(context.Background(), ir); err == nil {
		p.Type = ir.Type
		if ir.OFPort != nil {
			p.OFPort = *ir.OFPort
		}
		if ir.Error != nil {
			p.Error = *ir.Error
		}
	}
	return p
}

// ListPorts reads every port of bridge with its interface (from the
// cache), sorted by name.
func (c *Client) ListPorts(ctx context.Context, bridge string) ([]Port, error) {
	b, err := c.bridgeRow(ctx, bridge)
	if err != nil {
		return nil, err
	}
	on := make(map[string]bool, len(b.Ports))
	for _, id := range b.Ports {
		on[id] = true
	}
	var rows []PortRow
	if err := c.db.WhereCache(func(p *PortRow) bool { return on[p.UUID] }).List(ctx, &rows); err != nil {
		return nil, fmt.Errorf("ports of bridge %s: %w", bridge, err)
	}
	out := make([]Port, 0, len(rows))
	for i := range rows {
		out = append(out, c.join(&rows[i]))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// transactAndWait commits t together with a bump of next_cfg and then
// waits until the cache shows ovs-vswitchd has applied that configuration
// (cur_cfg), as ovs-vsctl does without --no-wait. Without this a CNI ADD
// could return before the pod's port forwards packets.
func (c *Client) transactAndWait(ctx context.Context, t *txn) error {
	if t.err != nil {
		return fmt.Errorf("ovsdb: build transaction: %w", t.err)
	}
	root, err := c.root()
	if err != nil {
		return err
	}
	r := &OpenvSwitch{UUID: root.UUID}
	n := len(t.ops)
	t.add(c.db.Where(r).Mutate(r, model.Mutation{Field: &r.NextCfg, Mutator: libovsdb.MutateOperationAdd, Value: 1}))
	if t.err != nil {
		return fmt.Errorf("ovsdb: build transaction: %w", t.err)
	}
	next := n + 1
	t.ops = append(t.ops, libovsdb.Operation{Op: libovsdb.OperationSelect, Table: DBName,
		Where:   []libovsdb.Condition{libovsdb.NewCondition("_uuid", libovsdb.ConditionEqual, libovsdb.UUID{GoUUID: root.UUID})},
		Columns: []string{"next_cfg"}})
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	res, err := c.Transact(ctx, t.ops...)
	if err != nil {
		return err
	}
	if len(res) <= next || len(res[next].Rows) == 0 {
		return errors.New("ovsdb: Open_vSwitch row vanished during the transaction")
	}
	f, ok := res[next].Rows[0]["next_cfg"].(float64)
	if !ok {
		return fmt.Errorf("ovsdb: next_cfg is %T, not a number", res[next].Rows[0]["next_cfg"])
	}
	want := int(f)
	err = c.waitFor(ctx, func() bool {
		r, err := c.root()
		return err == nil && r.CurCfg >= want
	})
	if err != nil {
		return &NotAppliedError{NextCfg: want, Err: err}
	}
	return nil
}

// NotAppliedError says a transaction was committed to OVSDB but
// ovs-vswitchd did not confirm it in time (vswitchd down or overloaded).
// The database already holds the change.
type NotAppliedError struct {
	NextCfg int
	Err     error
}

func (e *NotAppliedError) Error() string {
	return fmt.Sprintf("ovs-vswitchd did not apply the configuration (next_cfg %d) in time: is it running? %v", e.NextCfg, e.Err)
}

func (e *NotAppliedError) Unwrap() error { return e.Err }

// SetFlowTableNames names OpenFlow tables of bridge (Flow_Table rows), so
// `ovs-ofctl dump-flows --names` prints them. An empty name removes the
// entry. Idempotent.
func (c *Client) SetFlowTableNames(ctx context.Context, bridge string, names map[int]string) error {
	var t txn
	c.bridgeExists(&t, bridge)
	br := &BridgeRow{Name: bridge}
	ids := make([]int, 0, len(names))
	for id := range names {
		ids = append(ids, id)
	}
	sort.Ints(ids)
	set := map[int]string{}
	for _, id := range ids {
		if names[id] == "" {
			continue
		}
		name := names[id]
		row := &FlowTableRow{UUID: fmt.Sprintf("table%d", id), Name: &name}
		t.add(c.db.Create(row))
		set[id] = row.UUID
	}
	// A map insert never overwrites a key: delete the keys first.
	t.add(c.db.Where(br).Mutate(br, model.Mutation{Field: &br.FlowTables, Mutator: libovsdb.MutateOperationDelete, Value: ids}))
	if len(set) > 0 {
		t.add(c.db.Where(br).Mutate(br, model.Mutation{Field: &br.FlowTables, Mutator: libovsdb.MutateOperationInsert, Value: set}))
	}
	if t.err != nil {
		return fmt.Errorf("name flow tables of %s: %w", bridge, t.err)
	}
	if _, err := c.Transact(ctx, t.ops...); err != nil {
		return fmt.Errorf("name flow tables of %s: %w", bridge, err)
	}
	return nil
}
