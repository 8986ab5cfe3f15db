// Package ovs is the OpenFlow dataplane of nsx-kube-proxy: it compiles the
// desired Service model into conntrack NAT flows and select groups on the
// integration bridge and keeps the bridge equal to it.
//
// Pipeline (tables are named in OVSDB, so `ovs-ofctl dump-flows --names`
// reads like a table of contents). Table 0 is shared with the bridge's
// NORMAL flow; only packets that can belong to a Service leave it:
//
//	0   Classifier   dst = VIP:port          -> ct(zone=SvcZone, nat) -> SvcLB
//	                 in_port = uplink, dst = external frontend (NodePort, external IP, LB IP): the
//	                                            same, after loading reg0 = external (+SNAT), reg1 = SNAT tag
//	                 (LB source ranges: the two flows above drop; one pair per range, above them, serves)
//	                 dst = SNAT address      -> ct(zone=SNATZone, nat) -> SvcSNATReply
//	                 dst = hairpin address   -> ct(zone=HairpinZone, nat) -> SvcHairpinReply
//	                 any other IP            -> ct(zone=SvcZone, nat) -> SvcReply (un-DNAT of replies, from
//	                                            any port; replies of connections to endpoints that have
//	                                            since been removed too, so no per-endpoint flow decides it)
//	70  SvcLB        +new: group, or SvcAffinity then SvcAffinityCheck; reject or drop; -new (est, rel) or +dnat
//	                 (a SYN sent again before any reply, NATed as committed): SvcHairpin
//	71  SvcAffinity  learned client->endpoint flows (idle_timeout) load the endpoint registers
//	72  SvcDNAT      reg3/reg2 (endpoint) -> ct(commit, nat(dst=endpoint)) -> SvcHairpin
//	73  SvcHairpin   src == dst == local endpoint -> ct(commit, zone=HairpinZone, nat(src=hairpin address))
//	                 external + SNAT: ct(commit, zone=SNATZone, nat(src=node address)) -> SvcExternalOut
//	                 external: SvcExternalOut
//	74  SvcHairpinOut   swap MACs, back out of the ingress port
//	75  SvcHairpinReply +rpl: ct(zone=SvcZone, nat) -> SvcHairpinReplyOut
//	76  SvcHairpinReplyOut swap MACs, back out of the ingress port
//	77  SvcReply     NORMAL
//	78  SvcAffinityLearn  learn client->endpoint for the frontend, then SvcDNAT (OVS runs bucket
//	                 actions as an action set, which drops learn: it cannot sit in the bucket)
//	79  SvcExternalOut    swap MACs, back out of the ingress port (to the router that sent it)
//	80  SvcSNATReply +rpl: ct(zone=SvcZone, nat) -> SvcSNATReplyOut; else ct(zone=SvcZone, nat) -> SvcReply
//	81  SvcSNATReplyOut   from the uplink: SvcExternalOut; from a local endpoint: NORMAL (to its gateway)
//	82  SvcAffinityCheck  frontend + a learned endpoint that is still one of its endpoints -> SvcDNAT;
//	                 otherwise (none learned, or one since removed) -> the frontend's group
//
// Registers (what `ovs-ofctl dump-flows` shows as reg0..reg7):
//
//	reg0         flags of a packet from outside the node to an external frontend:
//	             0x1 external (back out to the router after NAT), 0x2 SNAT it to the node
//	reg1         with 0x2: which node address (its low 32 bits, snatTag)
//	reg2[0..15]  the chosen endpoint's port
//	reg3         the chosen endpoint's IPv4 address (xxreg1, i.e. reg4..reg7, for IPv6)
//
// Cookies: the top byte says whose a flow is (0x5a compiled, 0x5b learned
// affinity), the next 24 bits the frontend's id, which also names its
// group (0x5a000000|id; sub-groups 0x40000000|id<<8|k). nsxctl reads the
// frontends back from these (Inspect).
//
// After DNAT a packet keeps the gateway's MAC and leaves by NORMAL through
// the uplink: in NSX mode the fabric routes it, the node bridge never
// shortcuts pod-to-pod traffic. Only a pod reaching itself (hairpin) is
// turned around locally, with its source rewritten so it does not see its
// own address.
//
// External frontends are reached from outside the node through the
// uplink: the router sends the packet to the node (the node's address
// lives on the bridge's internal interface; an external IP is routed to
// it). After DNAT such a packet goes back to that router (MACs swapped,
// out of the uplink), which routes it to the endpoint. Under externalTrafficPolicy Cluster it
// is also source-NATed to the node (SNATZone), so the endpoint's replies
// come back here to be un-NATed in both zones and sent back the same way.
// Pods and the node itself reach the same frontends through the first
// flow: their packets are addressed to their gateway, and the replies pass
// through this node anyway, so they keep their source.
package ovs

import (
	"fmt"
	"net/netip"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
)

// Table ids and their OVSDB names.
const (
	tClassifier      = 0
	tLB              = 70
	tAffinity        = 71
	tDNAT            = 72
	tHairpin         = 73
	tHairpinOut      = 74
	tHairpinReply    = 75
	tHairpinReplyOut = 76
	tReply           = 77
	tAffinityLearn   = 78
	tExternalOut     = 79
	tSNATReply       = 80
	tSNATReplyOut    = 81
	tAffinityCheck   = 82
)

var tableNames = map[int]string{
	tLB: "SvcLB", tAffinity: "SvcAffinity", tDNAT: "SvcDNAT", tHairpin: "SvcHairpin", tHairpinOut: "SvcHairpinOut",
	tHairpinReply: "SvcHairpinReply", tHairpinReplyOut: "SvcHairpinReplyOut", tReply: "SvcReply",
	tAffinityLearn: "SvcAffinityLearn", tExternalOut: "SvcExternalOut", tSNATReply: "SvcSNATReply",
	tSNATReplyOut: "SvcSNATReplyOut", tAffinityCheck: "SvcAffinityCheck",
}

// Conntrack zones of our own.
const (
	SvcZone     = 65520
	HairpinZone = 65521
	SNATZone    = 65522
)

// reg0 flags an external frontend's classifier flow sets.
const (
	flagExternal = 1 << 0 // arrived from outside the node: back out to the router after NAT
	flagSNAT     = 1 << 1 // and source-NAT it to the node (reg1: which address)
)

// SNAT source ports: above Linux's ephemeral range's start and the
// default NodePort range, so a reply to a SNATed connection never matches a
// NodePort frontend (the classifier sees the NodePort flows first).
const (
	snatPortMin = 32768
	snatPortMax = 65535
)

// snatTag names a SNAT address in reg1: its low 32 bits (a node's
// addresses differ there).
func snatTag(a netip.Addr) uint32 {
	b := a.As16()
	t := uint32(b[12])<<24 | uint32(b[13])<<16 | uint32(b[14])<<8 | uint32(b[15])
	if t == 0 {
		t = 1 // 0 means "no tag" in a Match; such an address is never a node's
	}
	return t
}

// Cookies: the top byte says which component owns a flow (0x5a: our
// compiled flows, 0x5b: affinity flows learned at run time), the next 24
// bits which frontend (its id; 0 for shared and static flows), the low 32
// bits a serial number the backend gives each flow it writes. A flow's
// identity is what OpenFlow identifies it by (table, priority, match: see
// flowKey), never its cookie; the cookie says whose it is and which write
// put it there, so a full sync sees a flow someone replaced or removed.
const (
	compCompiled = 0x5a
	compLearned  = 0x5b
	maxOwner     = 1<<20 - 1 // frontend ids: 20 bits, so sub-group ids fit in 32
)

func makeCookie(comp byte, owner, serial uint32) uint64 {
	return uint64(comp)<<56 | uint64(owner&(1<<24-1))<<32 | uint64(serial)
}

func cookieOwner(c uint64) uint32 { return uint32(c>>32) & (1<<24 - 1) }

// Group ids. A frontend's group is groupBase|id. A frontend with more than
// maxBuckets endpoints has its endpoints in sub-groups of at most
// maxBuckets buckets (subGroupID(id, k)), and its group has one bucket per
// sub-group, weighted by the sub-group's size: OpenFlow messages are at
// most 64 KiB, which holds about 700 buckets, and a frontend of any size
// must fit. The two levels hash with different bases so the choice in the
// sub-group does not repeat the choice above it.
const (
	groupBase    = 0x5a000000
	subGroupBase = 0x40000000
	maxBuckets   = 256
	maxSubGroups = 256
)

func frontendGroupID(id uint32) uint32 { return groupBase | id }

func subGroupID(id uint32, k int) uint32 { return subGroupBase | id<<8 | uint32(k) }

// isOurGroup says whether a group id is in one of our ranges.
func isOurGroup(id uint32) bool {
	return id&0xff000000 == groupBase || id&0xf0000000 == subGroupBase
}

// compileOptions are the node-wide inputs of compilation.
type compileOptions struct {
	NodeName string
	// HairpinIP and HairpinIP6 are the sources a pod reaching itself
	// through an IPv4 or IPv6 Service sees; invalid: no hairpin in that
	// family.
	HairpinIP, HairpinIP6 netip.Addr
	// Uplink is the uplink's OpenFlow port: packets from it to an external
	// frontend come from outside the node. 0: not known (yet); external
	// frontends then serve pods and the node only.
	Uplink uint32
}

// compiled is everything one frontend contributes.
type compiled struct {
	src    *dataplane.Frontend
	id     uint32
	flows  []Flow  // owned by the frontend
	shared []Flow  // endpoint flows, shared by every frontend using the endpoint
	groups []Group // the frontend's group first, then its sub-groups
}

func natAddr(ep netip.AddrPort) string {
	if ep.Addr().Is4() {
		return ep.String()
	}
	return fmt.Sprintf("[%s]:%d", ep.Addr(), ep.Port())
}

// regLoads prints LoadEndpoint as ovs-ofctl does.
func regLoads(ep netip.AddrPort) string {
	if ep.Addr().Is4() {
		return fmt.Sprintf("load:0x%x->NXM_NX_REG3[],load:0x%x->NXM_NX_REG2[0..15]", v4int(ep.Addr()), ep.Port())
	}
	return fmt.Sprintf("load:0x%x->NXM_NX_XXREG1[],load:0x%x->NXM_NX_REG2[0..15]", ep.Addr().As16(), ep.Port())
}

func v4int(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

// maxLearnTimeout is the largest idle_timeout OpenFlow can carry (16 bits).
const maxLearnTimeout = 65535

func affinitySeconds(f *dataplane.Frontend) uint16 {
	s := int(f.AffinityTimeout.Seconds())
	if s > maxLearnTimeout {
		s = maxLearnTimeout
	}
	return uint16(s)
}

// vipMatch matches packets to the frontend.
func vipMatch(k dataplane.FrontendKey) Match {
	return Match{EthType: ethTypeOf(k.IP), IPProto: k.Protocol.Number(), IPDst: k.IP, TPDst: k.Port}
}

// compileFrontend compiles one frontend with id (1..maxOwner).
func compileFrontend(f *dataplane.Frontend, id uint32, o compileOptions) *compiled {
	k := f.Key
	v6 := k.IP.Is6()
	vip := vipMatch(k)
	gid := frontendGroupID(id)
	c := &compiled{src: f, id: id}
	c.flows = append(c.flows, classifierFlows(f, id, o)...)
	if f.Kind.External() && f.SNAT.IsValid() && o.Uplink != 0 {
		c.shared = append(c.shared, snatFlows(f.SNAT)...)
	}

	affinity := f.AffinityTimeout > 0 && len(f.Endpoints) > 0
	var lb []Action
	switch {
	case len(f.Endpoints) == 0 && f.IfEmpty == dataplane.Drop:
		lb = nil // drop
	case len(f.Endpoints) == 0:
		lb = []Action{Controller} // the reject responder answers with RST / ICMP unreachable
	case affinity:
		// A learned flow in SvcAffinity loads the endpoint registers and
		// SvcDNAT uses them; without one, SvcDNAT's frontend flow picks
		// through the group, whose bucket learns and comes back.
		lb = []Action{Resubmit(tAffinity), Resubmit(tAffinityCheck)}
		learn := LearnAffinity{Proto: k.Protocol, V6: v6, IdleTimeout: affinitySeconds(f), Cookie: makeCookie(compLearned, id, 0)}
		c.flows = append(c.flows,
			Flow{Table: tAffinityCheck, Priority: 50, Match: vip, Actions: []Action{ToGroup(gid)}, Owner: id},
			Flow{Table: tAffinityLearn, Priority: 100, Match: vip, Actions: []Action{learn, Resubmit(tDNAT)}, Owner: id})
		// A learned client -> endpoint flow is followed only while the
		// endpoint is still one of this frontend's: the DNAT flows are
		// shared by endpoint, and a removed endpoint another frontend
		// still uses would otherwise keep getting this one's clients.
		for _, ep := range f.Endpoints {
			m := vip
			m.EPAddr, m.EPPort = ep.IP, ep.Port
			c.flows = append(c.flows, Flow{Table: tAffinityCheck, Priority: 100, Match: m, Actions: []Action{Resubmit(tDNAT)}, Owner: id})
		}
	default:
		lb = []Action{ToGroup(gid)}
	}
	lbMatch := vip
	lbMatch.CTState, lbMatch.CTMask = ctNew|ctTrk, ctNew|ctTrk
	c.flows = append(c.flows, Flow{Table: tLB, Priority: 100, Match: lbMatch, Actions: lb, Owner: id})

	next := Resubmit(tDNAT)
	if affinity {
		next = tAffinityLearn
	}
	var buckets []Bucket
	for _, ep := range f.Endpoints {
		ap := ep.AddrPort()
		buckets = append(buckets, Bucket{Weight: 100, Actions: []Action{LoadEndpoint(ap), next}})
		c.shared = append(c.shared, endpointFlows(k.Protocol, ap, ep.NodeName == o.NodeName && o.NodeName != "", o)...)
	}
	top := Group{ID: gid, Proto: k.Protocol, V6: v6}
	if len(buckets) <= maxBuckets {
		top.Buckets = buckets
		c.groups = []Group{top}
		return c
	}
	// Split: chunk sizes differ by at most one, weights follow sizes.
	n := (len(buckets) + maxBuckets - 1) / maxBuckets
	if n > maxSubGroups {
		n = maxSubGroups // beyond 65,536 endpoints, buckets grow past maxBuckets (still under the limit up to ~700)
	}
	c.groups = []Group{top}
	for i := 0; i < n; i++ {
		lo, hi := i*len(buckets)/n, (i+1)*len(buckets)/n
		sub := Group{ID: subGroupID(id, i), Proto: k.Protocol, V6: v6, Basis: 1, Buckets: buckets[lo:hi]}
		c.groups = append(c.groups, sub)
		c.groups[0].Buckets = append(c.groups[0].Buckets, Bucket{Weight: uint16(hi - lo), Actions: []Action{ToGroup(sub.ID)}})
	}
	return c
}

// classifierFlows send the frontend's packets to conntrack and SvcLB: one
// flow for every source; for an external frontend, one more for packets
// from outside the node (flags); with source ranges, the flows above serve
// only those sources and the catch-alls drop.
func classifierFlows(f *dataplane.Frontend, id uint32, o compileOptions) []Flow {
	vip := vipMatch(f.Key)
	ct := CT{Table: tLB, Zone: SvcZone, NAT: NAT{Kind: NATPlain}}
	serve := []Action{ct}
	external := f.Kind.External() && o.Uplink != 0
	var fromOutside []Action
	if external {
		lf := LoadFlags{Flags: flagExternal}
		if f.SNAT.IsValid() {
			lf = LoadFlags{Flags: flagExternal | flagSNAT, SNATTag: snatTag(f.SNAT)}
		}
		fromOutside = []Action{lf, ct}
	}
	ranged := f.Kind.External() && len(f.SourceRanges) > 0
	flow := func(prio uint16, m Match, acts []Action) Flow {
		return Flow{Table: tClassifier, Priority: prio, Match: m, Actions: acts, Owner: id}
	}
	outside := vip
	outside.InPort = o.Uplink
	var out []Flow
	if ranged {
		out = append(out, flow(200, vip, nil))
		if external {
			out = append(out, flow(201, outside, nil))
		}
		for _, p := range f.SourceRanges {
			if p.Addr().Is6() != f.Key.IP.Is6() {
				continue
			}
			in, inOutside := vip, outside
			in.SrcPrefix, inOutside.SrcPrefix = p, p
			out = append(out, flow(202, in, serve))
			if external {
				out = append(out, flow(203, inOutside, fromOutside))
			}
		}
		return out
	}
	out = append(out, flow(200, vip, serve))
	if external {
		out = append(out, flow(201, outside, fromOutside))
	}
	return out
}

// snatFlows are the flows of one SNAT address, shared by the frontends
// using it: the SNAT of new connections from outside, and the un-SNAT of
// their replies.
func snatFlows(a netip.Addr) []Flow {
	eth := ethTypeOf(a)
	return []Flow{
		{Table: tHairpin, Priority: 150,
			Match: Match{EthType: eth, Flags: flagSNAT, FlagsMask: flagSNAT, SNATTag: snatTag(a), CTState: ctNew | ctTrk, CTMask: ctNew | ctTrk},
			Actions: []Action{CT{Commit: true, Table: tExternalOut, Zone: SNATZone,
				NAT: NAT{Kind: NATSrc, Addr: a, Port: snatPortMin, PortMax: snatPortMax}}}},
		{Table: tClassifier, Priority: 195, Match: Match{EthType: eth, IPDst: a},
			Actions: []Action{CT{Table: tSNATReply, Zone: SNATZone, NAT: NAT{Kind: NATPlain}}}},
	}
}

// hairpin is the hairpin source of a's family (invalid: none).
func (o compileOptions) hairpin(a netip.Addr) netip.Addr {
	if a.Is6() {
		return o.HairpinIP6
	}
	return o.HairpinIP
}

// endpointFlows are the flows every frontend with this endpoint shares:
// DNAT, and (local endpoints) hairpin.
func endpointFlows(p dataplane.Protocol, ep netip.AddrPort, local bool, o compileOptions) []Flow {
	a := ep.Addr()
	out := []Flow{{Table: tDNAT, Priority: 100,
		Match:   Match{EthType: ethTypeOf(a), IPProto: p.Number(), EPAddr: a, EPPort: ep.Port()},
		Actions: []Action{CT{Commit: true, Table: tHairpin, Zone: SvcZone, NAT: NAT{Kind: NATDst, Addr: a, Port: ep.Port()}}}}}
	if h := o.hairpin(a); local && h.IsValid() {
		out = append(out, Flow{Table: tHairpin, Priority: 100, Match: Match{EthType: ethTypeOf(a), IPSrc: a, IPDst: a},
			Actions: []Action{CT{Commit: true, Table: tHairpinOut, Zone: HairpinZone, NAT: NAT{Kind: NATSrc, Addr: h}}}})
	}
	return out
}

// staticFlows are installed once, whatever the model.
func staticFlows(o compileOptions) []Flow {
	// Every packet of a connection conntrack already holds, NATed as
	// committed: established and related ones (-new), and a SYN sent again
	// before any reply (its first copy was lost after the commit), which
	// conntrack still calls new but has DNATed (+dnat): it no longer
	// matches its frontend's flow.
	known := Match{CTState: ctTrk, CTMask: ctNew | ctTrk}
	renat := Match{CTState: ctDNAT | ctTrk, CTMask: ctDNAT | ctTrk}
	fl := []Flow{
		{Table: tLB, Priority: 200, Match: known, Actions: []Action{Resubmit(tHairpin)}},
		{Table: tLB, Priority: 200, Match: renat, Actions: []Action{Resubmit(tHairpin)}},
		{Table: tLB, Priority: 0, Actions: []Action{Normal}},
		{Table: tClassifier, Priority: 190, Match: Match{EthType: ethIPv4}, Actions: []Action{CT{Table: tReply, Zone: SvcZone, NAT: NAT{Kind: NATPlain}}}},
		{Table: tClassifier, Priority: 190, Match: Match{EthType: ethIPv6}, Actions: []Action{CT{Table: tReply, Zone: SvcZone, NAT: NAT{Kind: NATPlain}}}},
		{Table: tAffinity, Priority: 0},
		{Table: tAffinityLearn, Priority: 0},
		{Table: tAffinityCheck, Priority: 0},
		{Table: tDNAT, Priority: 0},
		{Table: tHairpin, Priority: 0, Actions: []Action{Normal}},
		{Table: tHairpinOut, Priority: 0, Actions: []Action{SwapMACs{}, InPort}},
		{Table: tHairpinReply, Priority: 0},
		{Table: tHairpinReplyOut, Priority: 0, Actions: []Action{SwapMACs{}, InPort}},
		{Table: tReply, Priority: 0, Actions: []Action{Normal}},
		{Table: tExternalOut, Priority: 0, Actions: []Action{SwapMACs{}, InPort}},
		{Table: tSNATReplyOut, Priority: 0, Actions: []Action{Normal}},
	}
	if o.Uplink != 0 {
		fl = append(fl, Flow{Table: tSNATReplyOut, Priority: 100, Match: Match{InPort: o.Uplink}, Actions: []Action{Resubmit(tExternalOut)}})
	}
	for _, eth := range []uint16{ethIPv4, ethIPv6} {
		fl = append(fl,
			// A hairpin connection's replies (un-SNATed from the hairpin
			// address already): un-DNAT, then back to the pod.
			Flow{Table: tHairpinReply, Priority: 100, Match: Match{EthType: eth, CTState: ctRpl | ctTrk, CTMask: ctRpl | ctTrk},
				Actions: []Action{CT{Table: tHairpinReplyOut, Zone: SvcZone, NAT: NAT{Kind: NATPlain}}}},
			// Later packets of a SNATed connection from outside: SNAT as committed.
			Flow{Table: tHairpin, Priority: 150, Match: Match{EthType: eth, Flags: flagSNAT, FlagsMask: flagSNAT, CTState: ctTrk, CTMask: ctNew | ctTrk},
				Actions: []Action{CT{Table: tExternalOut, Zone: SNATZone, NAT: NAT{Kind: NATPlain}}}},
			Flow{Table: tHairpin, Priority: 140, Match: Match{EthType: eth, Flags: flagExternal, FlagsMask: flagExternal},
				Actions: []Action{Resubmit(tExternalOut)}},
			// Replies to the SNAT address: un-DNAT, then back to the router
			// (SNATed connections) or on as any other packet.
			Flow{Table: tSNATReply, Priority: 100, Match: Match{EthType: eth, CTState: ctRpl | ctTrk, CTMask: ctRpl | ctTrk},
				Actions: []Action{CT{Table: tSNATReplyOut, Zone: SvcZone, NAT: NAT{Kind: NATPlain}}}},
			Flow{Table: tSNATReply, Priority: 0, Match: Match{EthType: eth},
				Actions: []Action{CT{Table: tReply, Zone: SvcZone, NAT: NAT{Kind: NATPlain}}}},
		)
	}
	for _, h := range []netip.Addr{o.HairpinIP, o.HairpinIP6} {
		if h.IsValid() {
			fl = append(fl, Flow{Table: tClassifier, Priority: 210, Match: Match{EthType: ethTypeOf(h), IPDst: h},
				Actions: []Action{CT{Table: tHairpinReply, Zone: HairpinZone, NAT: NAT{Kind: NATPlain}}}})
		}
	}
	return fl
}
