package nsxctl

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
	"github.com/nsx-ujo/nsx-ujo/dataplane/ebpf"
	"github.com/nsx-ujo/nsx-ujo/dataplane/ovs"
	"github.com/nsx-ujo/nsx-ujo/pkg/agent/ports"
)

// TraceRequest is `nsxctl trace`.
type TraceRequest struct {
	PodNamespace, PodName string
	To                    netip.AddrPort
	Protocol              dataplane.Protocol
	// SrcPort 0 picks one in 61000-61999: above Linux's usual ephemeral
	// range's busiest part, so the traced connection is unlikely to share
	// its ports with a real one.
	SrcPort uint16
	Raw     bool // keep the dataplane's own account
}

// TraceReport is the decision for one packet, the same on both
// dataplanes.
type TraceReport struct {
	Node        string `json:"node"`
	Dataplane   string `json:"dataplane"`
	Pod         string `json:"pod"`
	Port        string `json:"port"` // the pod's OVS port (host interface)
	Source      string `json:"source"`
	Destination string `json:"destination"`
	Protocol    string `json:"protocol"`
	// Frontend is set when the destination is a frontend the dataplane
	// holds; Service names it (from the API).
	Frontend string `json:"frontend,omitempty"`
	Service  string `json:"service,omitempty"`
	// Verdict: forward, reject, drop, or pass (not a Service packet).
	Verdict     string   `json:"verdict"`
	Backend     string   `json:"backend,omitempty"`
	Reason      string   `json:"reason"`
	Established bool     `json:"established"`
	Affinity    string   `json:"affinity,omitempty"` // used or created
	NAT         []string `json:"nat,omitempty"`
	Raw         string   `json:"raw,omitempty"`
}

// Table prints the report as field/value rows, then the raw account.
func (r *TraceReport) Table() ([]string, [][]string) {
	rows := [][]string{
		{"pod", r.Pod + " (port " + r.Port + ")"},
		{"packet", fmt.Sprintf("%s %s -> %s", r.Protocol, r.Source, r.Destination)},
		{"frontend", r.Frontend},
		{"service", r.Service},
		{"verdict", r.Verdict},
		{"backend", r.Backend},
		{"reason", r.Reason},
		{"affinity", r.Affinity},
		{"nat", strings.Join(r.NAT, "; ")},
	}
	if r.Raw != "" {
		rows = append(rows, []string{"raw", strings.ReplaceAll(strings.TrimSpace(r.Raw), "\n", "\n\t")})
	}
	return []string{"TRACE (" + r.Dataplane + ")", ""}, rows
}

// Trace is `nsxctl trace`: what dataplane dp does with the first packet
// of a connection from the pod to req.To (the next packet, when that
// connection is open).
func (n *Node) Trace(ctx context.Context, dp string, req TraceRequest) (*TraceReport, error) {
	pod, err := n.findPod(ctx, req.PodNamespace, req.PodName)
	if err != nil {
		return nil, err
	}
	// The pod's address of the destination's family (a dual-stack pod has
	// one of each).
	recorded, field := pod.IP, "ip-address"
	if req.To.Addr().Is6() && pod.IP6 != "" {
		recorded, field = pod.IP6, "ipv6-address"
	}
	src, err := netip.ParsePrefix(recorded)
	if err != nil {
		return nil, fmt.Errorf("pod %s/%s: port %s records %s %q: %w", req.PodNamespace, req.PodName, pod.Name, field, recorded, err)
	}
	if src.Addr().Is6() != req.To.Addr().Is6() {
		return nil, fmt.Errorf("pod %s/%s has no address of the family of %s (it has %s)", req.PodNamespace, req.PodName, req.To.Addr(), src.Addr())
	}
	sport := req.SrcPort
	if sport == 0 {
		sport = uint16(61000 + rand.IntN(1000))
	}
	pkt := dataplane.TracePacket{Src: netip.AddrPortFrom(src.Addr(), sport), Dst: req.To, Protocol: req.Protocol}
	held, err := n.Held(ctx, dp)
	if err != nil {
		return nil, err
	}
	var t *dataplane.Trace
	switch dp {
	case OVS:
		na := n.Config.NodeAgent
		t, err = ovs.Trace(ctx, na.OVSRunDir, na.OVSBridge, pod.OFPort, pkt)
	case EBPF:
		t, err = ebpf.Trace(n.Config.KubeProxy.BPFPinDir, pod.Name, pkt)
	default:
		err = fmt.Errorf("%q: %w", dp, ErrUnknownDataplane)
	}
	if err != nil {
		return nil, err
	}
	r := &TraceReport{Node: n.Name, Dataplane: dp, Pod: req.PodNamespace + "/" + req.PodName, Port: pod.Name,
		Source: pkt.Src.String(), Destination: pkt.Dst.String(), Protocol: string(req.Protocol),
		Verdict: string(t.Verdict), Established: t.Established, Affinity: t.Affinity, NAT: t.NAT}
	if req.Raw {
		r.Raw = t.Raw
	}
	if t.Backend.IsValid() {
		r.Backend = t.Backend.String()
	}
	key := dataplane.FrontendKey{IP: req.To.Addr(), Port: req.To.Port(), Protocol: req.Protocol}
	var h *dataplane.Held
	for i := range held {
		if held[i].Key == key {
			h = &held[i]
		}
	}
	var f *dataplane.Frontend
	if h != nil {
		r.Frontend = key.String()
		if n.Client != nil {
			if m, err := n.Model(ctx); err == nil {
				if f = m.Frontends[key]; f != nil {
					r.Service = f.Name.String()
				}
			}
		}
	}
	r.Reason = reason(t, h, f)
	return r, nil
}

// reason explains a verdict from what the dataplane holds for the
// frontend (h, nil: none) and the model (f, nil: unknown).
func reason(t *dataplane.Trace, h *dataplane.Held, f *dataplane.Frontend) string {
	switch t.Verdict {
	case dataplane.VerdictPass:
		return "not a Service frontend of this node's dataplane: the packet goes on untouched"
	case dataplane.VerdictForward:
		switch {
		case t.Established:
			return "an open connection: it follows its conntrack entry to the backend it uses"
		case t.Affinity == "used":
			return "a new connection: ClientIP affinity sends it to the backend this client used before"
		case h != nil && len(h.Endpoints) == 1:
			return "a new connection, to the frontend's one endpoint"
		case h != nil:
			return fmt.Sprintf("a new connection, balanced over the frontend's %d endpoints", len(h.Endpoints))
		}
		return "a new connection, balanced over the frontend's endpoints"
	case dataplane.VerdictReject:
		return "the frontend has no endpoints: rejected at once (TCP RST or ICMP port unreachable), as kube-proxy does"
	case dataplane.VerdictDrop:
		switch {
		case h != nil && len(h.Endpoints) == 0 && h.IfEmpty == dataplane.Drop && f != nil && f.Local:
			return "traffic policy Local and no endpoint on this node: dropped, as kube-proxy does"
		case h != nil && len(h.Endpoints) == 0 && h.IfEmpty == dataplane.Drop:
			return "no usable endpoint under a Local traffic policy: dropped"
		case h != nil && len(h.SourceRanges) > 0:
			return "the source is not in the frontend's loadBalancerSourceRanges: dropped"
		}
		return "dropped"
	}
	return ""
}

// findPod is the pod's attachment on this node.
func (n *Node) findPod(ctx context.Context, ns, name string) (*ports.PodPort, error) {
	db, err := n.ovsdb()
	if err != nil {
		return nil, err
	}
	defer db.Close()
	list, err := ports.New(db, n.Config.NodeAgent.OVSBridge).List(ctx)
	if err != nil {
		return nil, fmt.Errorf("pod ports: %w", err)
	}
	for i := range list {
		if list[i].PodNamespace == ns && list[i].PodName == name && list[i].OFPort > 0 {
			return &list[i], nil
		}
	}
	return nil, fmt.Errorf("pod %s/%s: no attachment on this node's bridge %s (nsxctl pods lists them)", ns, name, n.Config.NodeAgent.OVSBridge)
}
