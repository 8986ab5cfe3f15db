// Package ports owns the pods' OVS ports on the integration bridge: access
// ports tagged with the pod's VLAN whose external_ids are the node's record
// of its pods (read back at start by the agent and by the eBPF dataplane).
package ports

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nsx-ujo/nsx-ujo/pkg/cniwire"
	"github.com/nsx-ujo/nsx-ujo/pkg/ovsdb"
)

// external_ids keys of a pod port. Only ports with OwnerKey = OwnerValue are
// ever touched by the agent's GC and audit.
const (
	OwnerKey        = "nsx-ujo-owner"
	OwnerValue      = "nsx-node-agent"
	KeyContainerID  = "container-id"
	KeyPodNamespace = "pod-namespace"
	KeyPodName      = "pod-name"
	KeyPodUID       = "pod-uid"
	KeyNetns        = "netns"
	KeyIfName       = "ifname"
	KeyAttachedMAC  = "attached-mac"
	KeyIP           = "ip-address"
	KeyGateway      = "gateway-ip"
	// KeyIP6 and KeyGateway6 hold a dual-stack pod's IPv6 address (CIDR)
	// and gateway (the annotation's ipv6_address, ipv6_gateway_ip).
	KeyIP6      = "ipv6-address"
	KeyGateway6 = "ipv6-gateway-ip"
	KeyMTU      = "mtu"
	// KeyHostPorts holds the pod's hostPorts (runtimeConfig.portMappings)
	// as JSON: the agent serves them again from it after a restart.
	KeyHostPorts = "host-ports"
	// KeyAttachedAt is when the ADD that created the port ran (RFC 3339,
	// UTC): a repeated ADD of an intact attachment keeps it.
	KeyAttachedAt = "attached-at"
)

// PodPort is a pod's port as recorded in OVSDB.
type PodPort struct {
	Name         string // the host end of the pod's veth
	VLAN         int
	ContainerID  string
	PodNamespace string
	PodName      string
	PodUID       string
	Netns        string
	IfName       string
	MAC          string
	IP           string // CIDR
	Gateway      string
	IP6          string // CIDR; "" unless dual-stack
	Gateway6     string
	MTU          int
	OFPort       int
	HostPorts    []cniwire.PortMapping
	AttachedAt   time.Time // zero: not recorded (a port of an earlier version)
}

func (p *PodPort) externalIDs() map[string]string {
	m := map[string]string{
		OwnerKey:        OwnerValue,
		KeyContainerID:  p.ContainerID,
		KeyPodNamespace: p.PodNamespace,
		KeyPodName:      p.PodName,
		KeyPodUID:       p.PodUID,
		KeyNetns:        p.Netns,
		KeyIfName:       p.IfName,
		KeyAttachedMAC:  p.MAC,
		KeyIP:           p.IP,
	}
	if p.Gateway != "" {
		m[KeyGateway] = p.Gateway
	}
	if p.IP6 != "" {
		m[KeyIP6] = p.IP6
	}
	if p.Gateway6 != "" {
		m[KeyGateway6] = p.Gateway6
	}
	if p.MTU != 0 {
		m[KeyMTU] = strconv.Itoa(p.MTU)
	}
	if len(p.HostPorts) > 0 {
		b, _ := json.Marshal(p.HostPorts) // plain values: cannot fail
		m[KeyHostPorts] = string(b)
	}
	if !p.AttachedAt.IsZero() {
		m[KeyAttachedAt] = p.AttachedAt.UTC().Format(time.RFC3339)
	}
	return m
}

func fromOVS(p *ovsdb.Port) (*PodPort, bool) {
	ids := p.ExternalIDs
	if ids[OwnerKey] != OwnerValue {
		return nil, false
	}
	mtu, _ := strconv.Atoi(ids[KeyMTU])
	pp := &PodPort{
		Name: p.Name, VLAN: p.Tag, OFPort: p.OFPort,
		ContainerID: ids[KeyContainerID], PodNamespace: ids[KeyPodNamespace], PodName: ids[KeyPodName],
		PodUID: ids[KeyPodUID], Netns: ids[KeyNetns], IfName: ids[KeyIfName],
		MAC: ids[KeyAttachedMAC], IP: ids[KeyIP], Gateway: ids[KeyGateway], IP6: ids[KeyIP6], Gateway6: ids[KeyGateway6], MTU: mtu,
	}
	if t, err := time.Parse(time.RFC3339, ids[KeyAttachedAt]); err == nil {
		pp.AttachedAt = t
	}
	if s := ids[KeyHostPorts]; s != "" {
		// Written by us; a record someone mangled serves nothing (and
		// compares unequal, so a repeated ADD rewrites it).
		if err := json.Unmarshal([]byte(s), &pp.HostPorts); err != nil {
			pp.HostPorts = []cniwire.PortMapping{}
		}
	}
	return pp, true
}

const rollbackTimeout = 5 * time.Second

// Manager adds, reads and removes pod ports on one bridge. Every method is
// idempotent and safe for concurrent use; each write is one OVSDB
// transaction.
type Manager struct {
	db     *ovsdb.Client
	bridge string
}

// New returns a Manager for bridge.
func New(db *ovsdb.Client, bridge string) *Manager { return &Manager{db: db, bridge: bridge} }

// Bridge is the bridge's name.
func (m *Manager) Bridge() string { return m.bridge }

// Ensure creates or updates the pod's port and waits until ovs-vswitchd has
// it. On failure the port is removed again.
func (m *Manager) Ensure(ctx context.Context, p *PodPort) (*PodPort, error) {
	got, err := m.db.EnsureAccessPort(ctx, m.bridge, ovsdb.PortSpec{Name: p.Name, Tag: p.VLAN, ExternalIDs: p.externalIDs()})
	if err != nil {
		if got != nil { // committed, but not usable: take it out again
			// ctx may be spent by now; the rollback gets its own bound.
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
			defer cancel()
			derr := m.db.DeletePort(rctx, m.bridge, p.Name)
			var na *ovsdb.NotAppliedError
			if derr != nil && !errors.As(derr, &na) { // gone from the DB is enough
				err = fmt.Errorf("%w (rollback: %v)", err, derr)
			}
		}
		return nil, err
	}
	pp, _ := fromOVS(got)
	return pp, nil
}

// Delete removes the port called name. A missing port is not an error.
func (m *Manager) Delete(ctx context.Context, name string) error {
	return m.db.DeletePort(ctx, m.bridge, name)
}

// Get returns the pod port called name, or nil when there is no such port
// or it is not a pod port of ours.
func (m *Manager) Get(ctx context.Context, name string) (*PodPort, error) {
	p, err := m.db.GetPort(ctx, name)
	if err != nil {
		if isNotFound(err) {
			return nil, nil
		}
		return nil, err
	}
	pp, ok := fromOVS(p)
	if !ok {
		return nil, nil
	}
	return pp, nil
}

// List returns every pod port of ours on the bridge.
func (m *Manager) List(ctx context.Context) ([]PodPort, error) {
	all, err := m.db.ListPorts(ctx, m.bridge)
	if err != nil {
		return nil, err
	}
	var out []PodPort
	for i := range all {
		if pp, ok := fromOVS(&all[i]); ok {
			out = append(out, *pp)
		}
	}
	return out, nil
}

// BridgeDatapathType returns the bridge's datapath_type ("" is system).
func (m *Manager) BridgeDatapathType(ctx context.Context) (string, error) {
	b, err := m.db.GetBridge(ctx, m.bridge)
	if err != nil {
		return "", err
	}
	return b.DatapathType, nil
}

func isNotFound(err error) bool { return errors.Is(err, ovsdb.ErrNotFound) }

// RemoveAgentPorts deletes from bridge every port the agent made: pods'
// ports and its HyperBus port (owner OwnerValue or OwnerValue/<role>).
// The node cleanup runs it before giving a bridge that existed before
// nsx-ujo back; a missing bridge has nothing to remove. Idempotent; it
// returns the names removed.
func RemoveAgentPorts(ctx context.Context, db *ovsdb.Client, bridge string) ([]string, error) {
	all, err := db.ListPorts(ctx, bridge)
	if errors.Is(err, ovsdb.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var removed []string
	for _, p := range all {
		if o := p.ExternalIDs[OwnerKey]; o != OwnerValue && !strings.HasPrefix(o, OwnerValue+"/") {
			continue
		}
		if err := db.DeletePort(ctx, bridge, p.Name); err != nil {
			return removed, err
		}
		removed = append(removed, p.Name)
	}
	return removed, nil
}
