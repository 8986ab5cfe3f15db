package ovs

import (
	"context"
	"errors"
	"fmt"
	"time"
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

// GetBridge reads the bridge called name.
func (c *Client) GetBridge(ctx context.Context, name string) (*Bridge, error) {
	res, err := c.Transact(ctx, Select("Bridge", []Cond{Eq("name", name)}, "_uuid", "name", "datapath_type", "ports"))
	if err != nil {
		return nil, fmt.Errorf("bridge %s: %w", name, err)
	}
	if len(res[0].Rows) == 0 {
		return nil, fmt.Errorf("bridge %s: %w", name, ErrNotFound)
	}
	r := res[0].Rows[0]
	return &Bridge{
		UUID:         DecodeUUID(r["_uuid"]),
		Name:         DecodeString(r["name"]),
		DatapathType: DecodeString(r["datapath_type"]),
		Ports:        DecodeUUIDSet(r["ports"]),
	}, nil
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

// EnsureAccessPort makes bridge hold a port spec.Name with its interface,
// tag and external_ids, in one transaction, and waits until ovs-vswitchd has
// applied it. Idempotent: an existing port of that name on the bridge is
// updated in place. When the port was committed but is not usable (vswitchd
// cannot open the device, or did not confirm in time) it returns the port
// and an error: the caller decides whether to delete it.
func (c *Client) EnsureAccessPort(ctx context.Context, bridge string, spec PortSpec) (*Port, error) {
	tag := Set()
	if spec.Tag != 0 {
		tag = Set(spec.Tag)
	}
	existing, err := c.GetPort(ctx, spec.Name)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return nil, err
	}
	ops := []Op{WaitExists("Bridge", []Cond{Eq("name", bridge)}, "name", bridge)}
	if existing == nil {
		ops = append(ops,
			Insert("Interface", Row{"name": spec.Name, "type": spec.Type, "external_ids": Map(spec.ExternalIDs)}, "iface"),
			Insert("Port", Row{"name": spec.Name, "interfaces": NamedUUID("iface"), "tag": tag, "external_ids": Map(spec.ExternalIDs)}, "port"),
			Mutate("Bridge", []Cond{Eq("name", bridge)}, Mutation{"ports", "insert", Set(NamedUUID("port"))}),
		)
	} else {
		ops = append(ops,
			Update("Port", []Cond{Eq("name", spec.Name)}, Row{"tag": tag, "external_ids": Map(spec.ExternalIDs)}),
			Update("Interface", []Cond{Eq("name", spec.Name)}, Row{"type": spec.Type, "external_ids": Map(spec.ExternalIDs)}),
			// Re-parent it if it sits on another bridge; insert is a no-op
			// when it is already there.
			Mutate("Bridge", []Cond{Eq("name", bridge)}, Mutation{"ports", "insert", Set(UUID(existing.UUID))}),
		)
	}
	ops = append(ops, Comment("nsx-ujo: ensure port "+spec.Name+" on "+bridge))
	if err := c.transactAndWait(ctx, ops...); err != nil {
		var te *TxError
		if errors.As(err, &te) && te.OpName == "wait" {
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
	err = c.transactAndWait(ctx,
		Mutate("Bridge", []Cond{Eq("name", bridge)}, Mutation{"ports", "delete", Set(UUID(p.UUID))}),
		Comment("nsx-ujo: delete port "+name+" from "+bridge))
	if err != nil {
		return fmt.Errorf("delete port %s from %s: %w", name, bridge, err)
	}
	return nil
}

// GetPort reads one port and its interface by name.
func (c *Client) GetPort(ctx context.Context, name string) (*Port, error) {
	ports, err := c.listPorts(ctx, []Cond{Eq("name", name)})
	if err != nil {
		return nil, fmt.Errorf("port %s: %w", name, err)
	}
	if len(ports) == 0 {
		return nil, fmt.Errorf("port %s: %w", name, ErrNotFound)
	}
	return &ports[0], nil
}

// ListPorts reads every port of bridge with its interface.
func (c *Client) ListPorts(ctx context.Context, bridge string) ([]Port, error) {
	b, err := c.GetBridge(ctx, bridge)
	if err != nil {
		return nil, err
	}
	all, err := c.listPorts(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("ports of bridge %s: %w", bridge, err)
	}
	on := make(map[string]bool, len(b.Ports))
	for _, id := range b.Ports {
		on[id] = true
	}
	out := all[:0]
	for _, p := range all {
		if on[p.UUID] {
			out = append(out, p)
		}
	}
	return out, nil
}

func (c *Client) listPorts(ctx context.Context, conds []Cond) ([]Port, error) {
	res, err := c.Transact(ctx,
		Select("Port", conds, "_uuid", "name", "tag", "external_ids"),
		Select("Interface", conds, "name", "type", "ofport", "error"))
	if err != nil {
		return nil, err
	}
	ifaces := make(map[string]Row, len(res[1].Rows))
	for _, r := range res[1].Rows {
		ifaces[DecodeString(r["name"])] = r
	}
	ports := make([]Port, 0, len(res[0].Rows))
	for _, r := range res[0].Rows {
		p := Port{
			UUID:        DecodeUUID(r["_uuid"]),
			Name:        DecodeString(r["name"]),
			ExternalIDs: DecodeMap(r["external_ids"]),
		}
		p.Tag, _ = DecodeInt(r["tag"])
		if ir, ok := ifaces[p.Name]; ok {
			p.Type = DecodeString(ir["type"])
			p.OFPort, _ = DecodeInt(ir["ofport"])
			if e, ok := ir["error"].(string); ok {
				p.Error = e
			}
		}
		ports = append(ports, p)
	}
	return ports, nil
}

// transactAndWait commits ops together with a bump of next_cfg and then
// waits until ovs-vswitchd reports (cur_cfg) that it has applied that
// configuration, as ovs-vsctl does without --no-wait. Without this a CNI ADD
// could return before the pod's port forwards packets.
func (c *Client) transactAndWait(ctx context.Context, ops ...Op) error {
	n := len(ops)
	ops = append(ops,
		Mutate("Open_vSwitch", nil, Mutation{"next_cfg", "+=", 1}),
		Select("Open_vSwitch", nil, "next_cfg"))
	res, err := c.Transact(ctx, ops...)
	if err != nil {
		return err
	}
	if len(res[n+1].Rows) == 0 {
		return errors.New("ovsdb: Open_vSwitch table has no row (run ovs-vsctl init)")
	}
	want, _ := DecodeInt(res[n+1].Rows[0]["next_cfg"])
	return c.waitCurCfg(ctx, want)
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

func (c *Client) waitCurCfg(ctx context.Context, want int) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	delay := 500 * time.Microsecond
	for {
		res, err := c.Transact(ctx, Select("Open_vSwitch", nil, "cur_cfg"))
		if err != nil {
			return &NotAppliedError{NextCfg: want, Err: err}
		}
		if len(res[0].Rows) > 0 {
			if cur, _ := DecodeInt(res[0].Rows[0]["cur_cfg"]); cur >= want {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return &NotAppliedError{NextCfg: want, Err: ctx.Err()}
		case <-time.After(delay):
		}
		if delay < 20*time.Millisecond {
			delay *= 2
		}
	}
}

// SetFlowTableNames names OpenFlow tables of bridge (Flow_Table rows), so
// `ovs-ofctl dump-flows --names` prints them. An empty name removes the
// entry. Idempotent.
func (c *Client) SetFlowTableNames(ctx context.Context, bridge string, names map[int]string) error {
	ops := []Op{WaitExists("Bridge", []Cond{Eq("name", bridge)}, "name", bridge)}
	var del []any
	for id, name := range names {
		del = append(del, id)
		if name == "" {
			continue
		}
		uuidName := fmt.Sprintf("table%d", id)
		ops = append(ops, Insert("Flow_Table", Row{"name": name}, uuidName))
	}
	ops = append(ops, Mutate("Bridge", []Cond{Eq("name", bridge)}, Mutation{"flow_tables", "delete", Set(del...)}))
	var pairs []any
	for id, name := range names {
		if name != "" {
			pairs = append(pairs, []any{id, NamedUUID(fmt.Sprintf("table%d", id))})
		}
	}
	if len(pairs) > 0 {
		ops = append(ops, Mutate("Bridge", []Cond{Eq("name", bridge)}, Mutation{"flow_tables", "insert", []any{"map", pairs}}))
	}
	if _, err := c.Transact(ctx, ops...); err != nil {
		return fmt.Errorf("name flow tables of %s: %w", bridge, err)
	}
	return nil
}
