package nodeif

import (
	"context"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Status is the node's bridge and uplink as seen now, against the journal.
type Status struct {
	Bridge         string   `json:"bridge"`
	BridgeUp       bool     `json:"bridge_up"`
	Uplink         string   `json:"uplink,omitempty"`
	UplinkUp       bool     `json:"uplink_up"`
	UplinkOnBridge bool     `json:"uplink_on_bridge"`
	Migrated       bool     `json:"migrated"` // the journal records a finished migration
	Problems       []string `json:"problems,omitempty"`
}

// OK reports a node whose migration is complete and intact.
func (s *Status) OK() bool { return len(s.Problems) == 0 }

func (s *Status) problem(format string, args ...any) {
	s.Problems = append(s.Problems, fmt.Sprintf(format, args...))
}

// Status checks that the bridge and the uplink are up, the uplink is a
// working port of the bridge, and every journaled address and route is on
// the bridge and none is left on the uplink. Leased addresses are not
// checked: the DHCP client on the bridge may have changed them. It
// changes nothing; Migrate repairs what it reports.
func (m *Migrator) Status(ctx context.Context) *Status {
	s := &Status{Bridge: m.o.Bridge, Uplink: m.o.Uplink}
	h, err := netlink.NewHandle()
	if err != nil {
		s.problem("netlink: %v", err)
		return s
	}
	defer h.Close()

	if _, err := m.o.OVS.GetBridge(ctx, m.o.Bridge); err != nil {
		s.problem("%v", err)
	}
	br, err := linkByName(h, m.o.Bridge, keyBridge)
	if err != nil {
		s.problem("%v", err)
	} else if s.BridgeUp = br.Attrs().Flags&net.FlagUp != 0; !s.BridgeUp {
		s.problem("bridge %s is down", m.o.Bridge)
	}
	if m.o.Uplink == "" {
		return s
	}
	up, err := linkByName(h, m.o.Uplink, keyUplink)
	if err != nil {
		s.problem("%v", err)
	} else if s.UplinkUp = up.Attrs().Flags&net.FlagUp != 0; !s.UplinkUp {
		s.problem("uplink %s is down", m.o.Uplink)
	}
	if p, err := m.o.OVS.GetPort(ctx, m.o.Uplink); err != nil {
		s.problem("%v", err)
	} else if ports, err := m.o.OVS.ListPorts(ctx, m.o.Bridge); err == nil {
		for _, bp := range ports {
			s.UplinkOnBridge = s.UplinkOnBridge || bp.UUID == p.UUID
		}
		switch {
		case !s.UplinkOnBridge:
			s.problem("uplink %s is not a port of bridge %s", m.o.Uplink, m.o.Bridge)
		case p.OFPort <= 0 || p.Error != "":
			s.problem("uplink port %s is not working: ofport %d, error %q", m.o.Uplink, p.OFPort, p.Error)
		}
	}

	j, err := LoadJournal(m.o.StateDir)
	switch {
	case err != nil:
		s.problem("%v", err)
	case j == nil:
		s.problem("not migrated: no journal in %s", m.o.StateDir)
	case j.Phase != PhaseMigrate || j.Step != migrateSteps[len(migrateSteps)-1].name:
		s.problem("%s stopped after step %q", j.Phase, j.Step)
	default:
		s.Migrated = true
	}
	if j == nil || br == nil || up == nil {
		return s
	}
	onBridge, err := prefixes(h, br)
	if err != nil {
		s.problem("%v", err)
	}
	onUplink, err := prefixes(h, up)
	if err != nil {
		s.problem("%v", err)
	}
	for _, a := range j.Addresses {
		if a.ValidLft > 0 && j.DHCP {
			continue
		}
		if !onBridge[a.Prefix.String()] {
			s.problem("address %s is not on %s", a.Prefix, m.o.Bridge)
		}
		if onUplink[a.Prefix.String()] {
			s.problem("address %s is still on %s", a.Prefix, m.o.Uplink)
		}
	}
	routes, err := h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_UNSPEC, LinkIndex: br.Attrs().Index},
		netlink.RT_FILTER_TABLE|netlink.RT_FILTER_OIF)
	if err != nil {
		s.problem("routes: %v", err)
		return s
	}
	for _, r := range j.Routes {
		found := false
		for _, n := range routes {
			found = found || sameRoute(n, r)
		}
		if !found {
			s.problem("route %s is not on %s", r, m.o.Bridge)
		}
	}
	return s
}

func prefixes(h *netlink.Handle, l netlink.Link) (map[string]bool, error) {
	list, err := h.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("addresses of %s: %w", l.Attrs().Name, err)
	}
	out := map[string]bool{}
	for _, a := range list {
		out[toPrefix(a.IPNet).String()] = true
	}
	return out, nil
}
