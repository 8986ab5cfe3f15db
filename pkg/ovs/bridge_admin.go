package ovs

import (
	"context"
	"errors"
	"fmt"
)

// This file holds what nsx-ovs needs to administer the switch itself:
// the root row, bridges and the uplink. The agent and the proxy only read
// bridges and manage pod ports (bridge.go).

// InitDB makes sure the Open_vSwitch table has its single row, as
// `ovs-vsctl init` does; ovs-vswitchd does nothing until it exists.
// Idempotent and safe against a concurrent InitDB: the insert is guarded by
// a wait for "no row" in the same transaction.
func (c *Client) InitDB(ctx context.Context) error {
	_, err := c.Transact(ctx,
		Op{"op": "wait", "table": "Open_vSwitch", "where": []Cond{}, "columns": []string{"_uuid"},
			"until": "==", "rows": []Row{}, "timeout": 0},
		Insert("Open_vSwitch", Row{}, ""),
		Comment("nsx-ujo: init"))
	var te *TxError
	if errors.As(err, &te) && te.OpName == "wait" {
		return nil // the row exists
	}
	if err != nil {
		return fmt.Errorf("init Open_vSwitch row: %w", err)
	}
	return nil
}

// SetSwitchOtherConfig sets (value non-nil) or removes (nil) one key of
// Open_vSwitch other_config, without waiting for ovs-vswitchd: it is used
// before ovs-vswitchd runs (flow-restore-wait). Idempotent.
func (c *Client) SetSwitchOtherConfig(ctx context.Context, key string, value *string) error {
	ops := []Op{Mutate("Open_vSwitch", nil, Mutation{"other_config", "delete", Set(key)})}
	if value != nil {
		ops = append(ops, Mutate("Open_vSwitch", nil, Mutation{"other_config", "insert", Map(map[string]string{key: *value})}))
	}
	if _, err := c.Transact(ctx, ops...); err != nil {
		return fmt.Errorf("Open_vSwitch other_config:%s: %w", key, err)
	}
	return nil
}

// ListBridges returns the names of all bridges.
func (c *Client) ListBridges(ctx context.Context) ([]string, error) {
	res, err := c.Transact(ctx, Select("Bridge", nil, "name"))
	if err != nil {
		return nil, fmt.Errorf("list bridges: %w", err)
	}
	names := make([]string, 0, len(res[0].Rows))
	for _, r := range res[0].Rows {
		names = append(names, DecodeString(r["name"]))
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
	hw := Mutation{"other_config", "delete", Set("hwaddr")}
	mtu := Set()
	if spec.MTU > 0 {
		mtu = Set(spec.MTU)
	}
	_, err := c.GetBridge(ctx, spec.Name)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	var ops []Op
	if errors.Is(err, ErrNotFound) {
		other := map[string]string{}
		if spec.HWAddr != "" {
			other["hwaddr"] = spec.HWAddr
		}
		ops = []Op{
			Insert("Interface", Row{"name": spec.Name, "type": "internal", "mtu_request": mtu}, "iface"),
			Insert("Port", Row{"name": spec.Name, "interfaces": NamedUUID("iface")}, "port"),
			Insert("Bridge", Row{"name": spec.Name, "datapath_type": spec.DatapathType,
				"ports": NamedUUID("port"), "other_config": Map(other)}, "bridge"),
			Mutate("Open_vSwitch", nil, Mutation{"bridges", "insert", Set(NamedUUID("bridge"))}),
		}
	} else {
		ops = []Op{
			Update("Bridge", []Cond{Eq("name", spec.Name)}, Row{"datapath_type": spec.DatapathType}),
			// A map insert never overwrites a key: delete it first.
			Mutate("Bridge", []Cond{Eq("name", spec.Name)}, hw),
			Update("Interface", []Cond{Eq("name", spec.Name)}, Row{"mtu_request": mtu}),
		}
		if spec.HWAddr != "" {
			ops = append(ops, Mutate("Bridge", []Cond{Eq("name", spec.Name)},
				Mutation{"other_config", "insert", Map(map[string]string{"hwaddr": spec.HWAddr})}))
		}
	}
	ops = append(ops, Comment("nsx-ujo: ensure bridge "+spec.Name))
	if err := c.transactAndWait(ctx, ops...); err != nil {
		return fmt.Errorf("bridge %s: %w", spec.Name, err)
	}
	return nil
}

// BridgeHWAddr returns the bridge's other_config:hwaddr ("" when unset).
func (c *Client) BridgeHWAddr(ctx context.Context, name string) (string, error) {
	res, err := c.Transact(ctx, Select("Bridge", []Cond{Eq("name", name)}, "other_config"))
	if err != nil {
		return "", fmt.Errorf("bridge %s: %w", name, err)
	}
	if len(res[0].Rows) == 0 {
		return "", fmt.Errorf("bridge %s: %w", name, ErrNotFound)
	}
	return DecodeMap(res[0].Rows[0]["other_config"])["hwaddr"], nil
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
	err = c.transactAndWait(ctx,
		Mutate("Open_vSwitch", nil, Mutation{"bridges", "delete", Set(UUID(b.UUID))}),
		Comment("nsx-ujo: delete bridge "+name))
	if err != nil {
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
