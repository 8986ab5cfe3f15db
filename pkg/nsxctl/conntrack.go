package nsxctl

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
	"github.com/nsx-ujo/nsx-ujo/dataplane/ebpf"
	"github.com/nsx-ujo/nsx-ujo/dataplane/ovs"
)

// ConntrackFilter selects connections: of one Service (from the API) or
// one frontend; the zero value keeps all.
type ConntrackFilter struct {
	Service  string // namespace/name
	Frontend netip.AddrPort
}

// ConnRow is one Service connection the dataplane tracks.
type ConnRow struct {
	Protocol string   `json:"protocol"`
	Client   string   `json:"client"`
	Frontend string   `json:"frontend"`
	Backend  string   `json:"backend"`
	Service  string   `json:"service,omitempty"`
	State    string   `json:"state,omitempty"`
	Open     bool     `json:"open"`
	Flags    []string `json:"flags,omitempty"`
}

// ConntrackReport is `nsxctl conntrack`.
type ConntrackReport struct {
	Node        string    `json:"node"`
	Dataplane   string    `json:"dataplane"`
	Connections []ConnRow `json:"connections"`
}

// Table prints one row per connection.
func (r *ConntrackReport) Table() ([]string, [][]string) {
	var rows [][]string
	for _, c := range r.Connections {
		rows = append(rows, []string{c.Protocol, c.Client, c.Frontend, c.Backend, c.Service, c.State, strings.Join(c.Flags, ",")})
	}
	return []string{"PROTO", "CLIENT", "FRONTEND", "BACKEND", "SERVICE", "STATE", "FLAGS"}, rows
}

// Conntrack is `nsxctl conntrack`.
func (n *Node) Conntrack(ctx context.Context, dp string, f ConntrackFilter) (*ConntrackReport, error) {
	var entries []dataplane.NATEntry
	var err error
	switch dp {
	case OVS:
		entries, err = ovs.NATEntries(ctx, n.Config.NodeAgent.OVSRunDir)
	case EBPF:
		entries, err = ebpf.NATEntries(n.Config.KubeProxy.BPFPinDir)
	default:
		err = fmt.Errorf("%q: %w", dp, ErrUnknownDataplane)
	}
	if err != nil {
		return nil, err
	}
	var model *dataplane.Model
	if n.Client != nil {
		if model, err = n.Model(ctx); err != nil {
			return nil, err
		}
	}
	r := &ConntrackReport{Node: n.Name, Dataplane: dp, Connections: []ConnRow{}}
	for _, e := range entries {
		if f.Frontend.IsValid() && e.Frontend != f.Frontend {
			continue
		}
		row := ConnRow{Protocol: string(e.Protocol), Client: e.Client.String(), Frontend: e.Frontend.String(),
			Backend: e.Backend.String(), State: e.State, Open: e.Open, Flags: e.Flags}
		if model != nil {
			if fe := model.Frontends[dataplane.FrontendKey{IP: e.Frontend.Addr(), Port: e.Frontend.Port(), Protocol: e.Protocol}]; fe != nil {
				row.Service = fe.Name.String()
			}
		}
		if f.Service != "" && !strings.HasPrefix(row.Service+":", f.Service+":") {
			continue
		}
		r.Connections = append(r.Connections, row)
	}
	slices.SortFunc(r.Connections, func(a, b ConnRow) int {
		return strings.Compare(a.Frontend+" "+a.Client+" "+a.Protocol, b.Frontend+" "+b.Client+" "+b.Protocol)
	})
	return r, nil
}
