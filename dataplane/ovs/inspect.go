package ovs

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"antrea.io/libOpenflow/openflow15"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
)

// Dumper reads a bridge's flows and groups (*openflow.Client).
type Dumper interface {
	DumpFlows(ctx context.Context, table uint8, cookie, cookieMask uint64) ([]*openflow15.FlowDesc, error)
	DumpGroups(ctx context.Context) ([]*openflow15.GroupDesc, error)
}

// Inspect reads what the bridge holds for Services, one Held per frontend,
// sorted by key: it decodes the compiled flows (see the package comment's
// pipeline) and the groups back. Read-only, and it needs no running
// nsx-kube-proxy: the bridge is the dataplane's state.
func Inspect(ctx context.Context, sw Dumper) ([]dataplane.Held, error) {
	flows, err := sw.DumpFlows(ctx, openflow15.OFPTT_ALL, uint64(compCompiled)<<56, 0xff00000000000000)
	if err != nil {
		return nil, fmt.Errorf("ovs dataplane: dump flows: %w", err)
	}
	groupDescs, err := sw.DumpGroups(ctx)
	if err != nil {
		return nil, fmt.Errorf("ovs dataplane: dump groups: %w", err)
	}
	groups := map[uint32]*openflow15.GroupDesc{}
	for _, g := range groupDescs {
		if isOurGroup(g.GroupId) {
			groups[g.GroupId] = g
		}
	}
	type frontend struct {
		held    dataplane.Held
		found   bool   // its SvcLB flow: the frontend is served
		snatTag uint32 // reg1 of its flow from outside the node
	}
	byOwner := map[uint32]*frontend{}
	get := func(owner uint32) *frontend {
		f := byOwner[owner]
		if f == nil {
			f = &frontend{}
			byOwner[owner] = f
		}
		return f
	}
	snatAddrs := map[uint32]netip.Addr{}
	for _, fd := range flows {
		k, ok := decodeKey(fd)
		if !ok {
			continue
		}
		owner := cookieOwner(fd.Cookie)
		acts := flowActions(fd)
		switch {
		case k.Table == tClassifier && k.Priority == 195:
			snatAddrs[snatTag(k.Match.IPDst)] = k.Match.IPDst
		case owner == 0:
		case k.Table == tLB && k.Priority == 100:
			f := get(owner)
			proto, _ := dataplane.ProtocolOf(k.Match.IPProto)
			f.found = true
			f.held.Key = dataplane.FrontendKey{IP: k.Match.IPDst, Port: k.Match.TPDst, Protocol: proto}
			f.held.NewConnections = packetCount(fd)
			f.held.IfEmpty = dataplane.Drop // no actions: drop
			for _, a := range acts {
				if o, ok := a.(*openflow15.ActionOutput); ok && o.Port == openflow15.P_CONTROLLER {
					f.held.IfEmpty = dataplane.Reject // the reject responder answers
				}
			}
		case k.Table == tAffinityLearn && k.Priority == 100:
			for _, a := range acts {
				if l, ok := a.(*openflow15.NXActionLearn); ok {
					get(owner).held.AffinityTimeout = time.Duration(l.IdleTimeout) * time.Second
				}
			}
		case k.Table == tClassifier && (k.Priority == 201 || k.Priority == 203):
			f := get(owner)
			f.held.External = true
			var regs regFile
			for _, a := range acts {
				if sf, ok := a.(*openflow15.ActionSetField); ok {
					regs.add(sf.Field)
				}
			}
			if v, mask := regs.take(1); mask != 0 {
				f.snatTag = v
			}
			if k.Priority == 203 {
				f.held.SourceRanges = append(f.held.SourceRanges, k.Match.SrcPrefix)
			}
		case k.Table == tClassifier && k.Priority == 202:
			f := get(owner)
			f.held.SourceRanges = append(f.held.SourceRanges, k.Match.SrcPrefix)
		}
	}
	var out []dataplane.Held
	for owner, f := range byOwner {
		if !f.found {
			continue // leftovers of a frontend being removed
		}
		if f.snatTag != 0 {
			f.held.SNAT = snatAddrs[f.snatTag]
		}
		eps, err := groupEndpoints(groups, frontendGroupID(owner), 0)
		if err != nil {
			return nil, fmt.Errorf("ovs dataplane: frontend %s: %w", f.held.Key, err)
		}
		f.held.Endpoints = eps
		if !f.held.External {
			f.held.SourceRanges = nil // only external frontends filter sources
		}
		f.held.Normalize()
		out = append(out, f.held)
	}
	slices.SortFunc(out, func(a, b dataplane.Held) int { return a.Key.Compare(b.Key) })
	return out, nil
}

// flowActions are the actions a dumped flow applies.
func flowActions(fd *openflow15.FlowDesc) []openflow15.Action {
	var out []openflow15.Action
	for _, in := range fd.Instructions {
		if ia, ok := in.(*openflow15.InstrActions); ok {
			out = append(out, ia.Actions...)
		}
	}
	return out
}

// packetCount is a dumped flow's packet counter.
func packetCount(fd *openflow15.FlowDesc) uint64 {
	for _, f := range fd.Stats.Fields {
		if c, ok := f.(*openflow15.PBCountStatField); ok && c.Header.Field == openflow15.XST_OFB_PACKET_COUNT {
			return c.Count
		}
	}
	return 0
}

// groupEndpoints reads the endpoints a group's buckets load, following
// sub-groups (one level, as compileFrontend writes them).
func groupEndpoints(groups map[uint32]*openflow15.GroupDesc, id uint32, depth int) ([]netip.AddrPort, error) {
	g := groups[id]
	if g == nil {
		return nil, nil // no endpoints were ever written
	}
	var out []netip.AddrPort
	for _, b := range g.Buckets {
		var regs regFile
		loaded := false
		for _, a := range b.Actions {
			switch a := a.(type) {
			case *openflow15.ActionSetField:
				if !regs.add(a.Field) {
					return nil, fmt.Errorf("group %#x bucket %d: a field this pipeline never sets", id, b.BucketId)
				}
				loaded = true
			case *openflow15.ActionGroup:
				if depth > 0 {
					return nil, fmt.Errorf("group %#x: sub-groups nest deeper than written", id)
				}
				sub, err := groupEndpoints(groups, a.GroupId, depth+1)
				if err != nil {
					return nil, err
				}
				out = append(out, sub...)
			}
		}
		if !loaded {
			continue
		}
		var m Match
		if !regs.endpoint(&m) || !m.EPAddr.IsValid() {
			return nil, fmt.Errorf("group %#x bucket %d: no endpoint in its register loads", id, b.BucketId)
		}
		out = append(out, netip.AddrPortFrom(m.EPAddr, m.EPPort))
	}
	return out, nil
}
