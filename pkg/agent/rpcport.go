package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/nsx-ujo/nsx-ujo/pkg/agent/podnet"
	"github.com/nsx-ujo/nsx-ujo/pkg/agent/ports"
	"github.com/nsx-ujo/nsx-ujo/pkg/ovsdb"
)

// RPCPortName is the agent's internal port for HyperBus on the bridge.
const RPCPortName = "nsx-rpc"

// rpcPortOwner marks the port as ours in external_ids, with another value
// than pod ports so that the audit and GC never take it for a pod.
const rpcPortOwner = ports.OwnerValue + "/hyperbus"

// RPCPortOptions place the HyperBus port.
type RPCPortOptions struct {
	Bridge string
	VLAN   int          // nsxrpc_vlan
	Addr   netip.Prefix // nsxrpc_cip: the agent's address on it
	// NetNS is the network namespace path where ovs-vswitchd creates the
	// internal interface (default: this process's).
	NetNS string
	// TxChecksumOff: the bridge is netdev (see podnet.Pod.TxChecksumOff).
	TxChecksumOff bool
}

// EnsureRPCPort makes the bridge hold the agent's internal port on the
// HyperBus VLAN with the agent's address on it, up. Idempotent (it
// survives agent restarts as it is); recorded in external_ids as ours.
func EnsureRPCPort(ctx context.Context, db *ovsdb.Client, o RPCPortOptions) error {
	if _, err := db.EnsureAccessPort(ctx, o.Bridge, ovsdb.PortSpec{Name: RPCPortName, Tag: o.VLAN, Type: "internal",
		ExternalIDs: map[string]string{ports.OwnerKey: rpcPortOwner}}); err != nil {
		return fmt.Errorf("HyperBus port: %w", err)
	}
	set := func(ns.NetNS) error {
		l, err := netlink.LinkByName(RPCPortName)
		if err != nil {
			return fmt.Errorf("HyperBus port %s: %w", RPCPortName, err)
		}
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: o.Addr.Addr().AsSlice(), Mask: net.CIDRMask(o.Addr.Bits(), o.Addr.Addr().BitLen())}}
		if err := netlink.AddrReplace(l, addr); err != nil {
			return fmt.Errorf("HyperBus port %s: address %s: %w", RPCPortName, o.Addr, err)
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return fmt.Errorf("HyperBus port %s: up: %w", RPCPortName, err)
		}
		if o.TxChecksumOff {
			return podnet.DisableTxChecksum(RPCPortName)
		}
		return nil
	}
	if o.NetNS == "" {
		return set(nil)
	}
	return ns.WithNetNSPath(o.NetNS, set)
}

// RemoveRPCPort deletes the HyperBus port if it is ours (enable_hyperbus
// switched off). Idempotent.
func RemoveRPCPort(ctx context.Context, db *ovsdb.Client, bridge string) error {
	p, err := db.GetPort(ctx, RPCPortName)
	if errors.Is(err, ovsdb.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if p.ExternalIDs[ports.OwnerKey] != rpcPortOwner {
		return nil // someone else's port of that name
	}
	return db.DeletePort(ctx, bridge, RPCPortName)
}
