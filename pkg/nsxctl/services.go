package nsxctl

import (
	"slices"
	"strings"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
)

// ServiceRow is one frontend: what the dataplane holds, named and checked
// against the model built from the API.
type ServiceRow struct {
	Frontend string `json:"frontend"` // 10.96.0.10:80/TCP
	// From the API (empty without it, or for a frontend the API does not
	// have).
	Service       string `json:"service,omitempty"` // namespace/name:port
	Kind          string `json:"kind,omitempty"`
	TrafficPolicy string `json:"trafficPolicy,omitempty"` // Cluster or Local
	// From the dataplane.
	Endpoints      []string `json:"endpoints"`
	Affinity       string   `json:"affinity,omitempty"`    // ClientIP timeout
	NoEndpoints    string   `json:"noEndpoints,omitempty"` // reject or drop, when it has none
	External       bool     `json:"external,omitempty"`
	SNAT           string   `json:"snat,omitempty"`
	SourceRanges   []string `json:"sourceRanges,omitempty"`
	NewConnections uint64   `json:"newConnections"`
	// Drift: how the dataplane differs from the API's model; empty when it
	// holds what the model says (or without the API).
	Drift []string `json:"drift,omitempty"`
	// Refused: why neither dataplane serves the model's frontend
	// (dataplane.Unservable); such a row is not drift: the dataplane
	// keeps what it had, or nothing.
	Refused string `json:"refused,omitempty"`
}

// ServicesReport is `nsxctl services`.
type ServicesReport struct {
	Node      string `json:"node"`
	Dataplane string `json:"dataplane"`
	// APIChecked: the rows were compared with the API's model.
	APIChecked bool         `json:"apiChecked"`
	Services   []ServiceRow `json:"services"`
}

// Drifted says whether any row differs from the model.
func (r *ServicesReport) Drifted() bool {
	return slices.ContainsFunc(r.Services, func(s ServiceRow) bool { return len(s.Drift) > 0 })
}

// Drift phrases of a frontend only one side has.
const (
	NotInDataplane = "not in the dataplane"
	NotInAPI       = "not in the API's model"
)

// BuildServices joins what a dataplane holds with the model (nil: no API)
// into rows sorted by frontend. filter, when not empty, keeps the rows of
// one Service ("namespace/name") or of one namespace ("namespace/").
func BuildServices(held []dataplane.Held, model *dataplane.Model, filter string) []ServiceRow {
	keys := map[dataplane.FrontendKey]bool{}
	byKey := map[dataplane.FrontendKey]dataplane.Held{}
	for _, h := range held {
		byKey[h.Key] = h
		keys[h.Key] = true
	}
	if model != nil {
		for k := range model.Frontends {
			keys[k] = true
		}
	}
	sorted := make([]dataplane.FrontendKey, 0, len(keys))
	for k := range keys {
		sorted = append(sorted, k)
	}
	slices.SortFunc(sorted, dataplane.FrontendKey.Compare)
	rows := []ServiceRow{}
	for _, k := range sorted {
		h, inDP := byKey[k]
		var f *dataplane.Frontend
		if model != nil {
			f = model.Frontends[k]
		}
		if filter != "" && (f == nil || !matches(f.Name, filter)) {
			continue
		}
		row := ServiceRow{Frontend: k.String()}
		if f != nil {
			row.Service = f.Name.String()
			row.Kind = f.Kind.String()
			row.TrafficPolicy = "Cluster"
			if f.Local {
				row.TrafficPolicy = "Local"
			}
		}
		if inDP {
			fill(&row, h)
		} else {
			row.Endpoints = []string{}
		}
		var unservable error
		if f != nil {
			unservable = dataplane.Unservable(f)
		}
		switch {
		case model == nil:
		case unservable != nil:
			row.Refused = unservable.Error()
		case f == nil:
			row.Drift = []string{NotInAPI}
		case !inDP:
			row.Drift = []string{NotInDataplane}
		default:
			row.Drift = dataplane.Diff(dataplane.Want(f), h)
		}
		rows = append(rows, row)
	}
	return rows
}

func fill(row *ServiceRow, h dataplane.Held) {
	row.Endpoints = make([]string, 0, len(h.Endpoints))
	for _, e := range h.Endpoints {
		row.Endpoints = append(row.Endpoints, e.String())
	}
	if h.AffinityTimeout > 0 {
		row.Affinity = h.AffinityTimeout.String()
	}
	if len(h.Endpoints) == 0 {
		row.NoEndpoints = h.IfEmpty.String()
	}
	row.External = h.External
	if h.SNAT.IsValid() {
		row.SNAT = h.SNAT.String()
	}
	for _, p := range h.SourceRanges {
		row.SourceRanges = append(row.SourceRanges, p.String())
	}
	row.NewConnections = h.NewConnections
}

func matches(n dataplane.ServicePortName, filter string) bool {
	if ns, ok := strings.CutSuffix(filter, "/"); ok {
		return n.Namespace == ns
	}
	return n.Namespace+"/"+n.Name == filter
}
