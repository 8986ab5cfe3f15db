package dataplane

import (
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// Held is what a dataplane holds for one frontend, read back from the
// dataplane itself (OVS flows and groups, or eBPF maps), not from the
// process that wrote it: what an operator inspects (nsxctl services), in
// the same terms for both dataplanes, and compares with the model.
type Held struct {
	Key FrontendKey
	// External: also served to clients outside the node (NodePort,
	// external and load-balancer IPs).
	External bool
	// SNAT is the address outside clients are source-NATed to; invalid
	// when they keep their source.
	SNAT            netip.Addr
	AffinityTimeout time.Duration
	SourceRanges    []netip.Prefix   // sorted
	Endpoints       []netip.AddrPort // sorted
	// IfEmpty is what a new connection meets when Endpoints is empty.
	IfEmpty NoEndpointsAction
	// NewConnections counts the connections the frontend has started
	// (NATed, rejected or dropped) since the dataplane installed it: OVS
	// counts the packets its new-connection flow matched (a retransmitted
	// SYN counts again), eBPF the connections its program NATed.
	NewConnections uint64
}

// Want is the Held a dataplane that applied f holds: what Diff compares
// the dataplane with.
func Want(f *Frontend) Held {
	h := Held{Key: f.Key, External: f.Kind.External(), AffinityTimeout: f.AffinityTimeout, IfEmpty: f.IfEmpty}
	if h.External {
		h.SNAT = f.SNAT
		for _, p := range f.SourceRanges {
			if p.Addr().Is6() == f.Key.IP.Is6() {
				h.SourceRanges = append(h.SourceRanges, p.Masked())
			}
		}
	}
	if len(f.Endpoints) > 0 {
		h.IfEmpty = Reject // not reachable: endpoints answer
	}
	for _, e := range f.Endpoints {
		h.Endpoints = append(h.Endpoints, e.AddrPort())
	}
	h.Normalize()
	return h
}

// Normalize sorts the lists (and drops duplicates), so two Helds compare
// by content.
func (h *Held) Normalize() {
	slices.SortFunc(h.Endpoints, func(a, b netip.AddrPort) int { return a.Compare(b) })
	h.Endpoints = slices.Compact(h.Endpoints)
	slices.SortFunc(h.SourceRanges, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	h.SourceRanges = slices.Compact(h.SourceRanges)
	if len(h.Endpoints) > 0 {
		h.IfEmpty = Reject
	}
}

// Diff says how held differs from want, one phrase per difference (none:
// the dataplane holds what the model says). Counters are not compared.
func Diff(want, held Held) []string {
	var out []string
	if want.External != held.External {
		out = append(out, fmt.Sprintf("external: want %t, holds %t", want.External, held.External))
	}
	if want.SNAT != held.SNAT {
		out = append(out, fmt.Sprintf("snat: want %s, holds %s", addrOrNone(want.SNAT), addrOrNone(held.SNAT)))
	}
	if want.AffinityTimeout != held.AffinityTimeout {
		out = append(out, fmt.Sprintf("affinity: want %s, holds %s", want.AffinityTimeout, held.AffinityTimeout))
	}
	if !slices.Equal(want.SourceRanges, held.SourceRanges) {
		out = append(out, fmt.Sprintf("source ranges: want %v, holds %v", want.SourceRanges, held.SourceRanges))
	}
	if len(want.Endpoints) == 0 && len(held.Endpoints) == 0 && want.IfEmpty != held.IfEmpty {
		out = append(out, fmt.Sprintf("without endpoints: want %s, holds %s", want.IfEmpty, held.IfEmpty))
	}
	missing, extra := 0, 0
	for _, e := range want.Endpoints {
		if _, ok := slices.BinarySearchFunc(held.Endpoints, e, func(a, b netip.AddrPort) int { return a.Compare(b) }); !ok {
			missing++
		}
	}
	for _, e := range held.Endpoints {
		if _, ok := slices.BinarySearchFunc(want.Endpoints, e, func(a, b netip.AddrPort) int { return a.Compare(b) }); !ok {
			extra++
		}
	}
	if missing > 0 {
		out = append(out, endpoints(missing)+" missing")
	}
	if extra > 0 {
		out = append(out, endpoints(extra)+" not in the model")
	}
	return out
}

func endpoints(n int) string {
	if n == 1 {
		return "1 endpoint"
	}
	return fmt.Sprintf("%d endpoints", n)
}

func addrOrNone(a netip.Addr) string {
	if !a.IsValid() {
		return "none"
	}
	return a.String()
}

// NATEntry is a dataplane's conntrack entry of a connection to a frontend.
type NATEntry struct {
	Protocol Protocol
	Client   netip.AddrPort // the source as the client sent it
	Frontend netip.AddrPort
	Backend  netip.AddrPort
	// Open: TCP established or in its handshake (where the dataplane
	// tracks TCP states), UDP always.
	Open bool
	// SNATed: the connection came from outside the node and was
	// source-NATed to it (the backend answers the node).
	SNATed bool
	State  string   // the TCP state, where the dataplane tracks it (OVS)
	Flags  []string // what else the dataplane records (eBPF: hairpin, external)
	Raw    string   // the dataplane's own line
}
