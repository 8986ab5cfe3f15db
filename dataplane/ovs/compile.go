// Package ovs is the OpenFlow dataplane of nsx-kube-proxy: it compiles the
// desired Service model into conntrack NAT flows and select groups on the
// integration bridge and keeps the bridge equal to it.
//
// Pipeline (tables are named in OVSDB, so `ovs-ofctl dump-flows --names`
// reads like a table of contents). Table 0 is shared with the bridge's
// NORMAL flow; only packets that can belong to a Service leave it:
//
//	0   Classifier   dst = VIP:port          -> ct(zone=SvcZone, nat) -> SvcLB
//	                 dst = hairpin address   -> ct(zone=HairpinZone, nat) -> SvcHairpinReply
//	                 any other IP            -> ct(zone=SvcZone, nat) -> SvcReply (un-DNAT of replies, from
//	                                            any port; replies of connections to endpoints that have
//	                                            since been removed too, so no per-endpoint flow decides it)
//	70  SvcLB        +new: group, or SvcAffinity then SvcDNAT; reject or drop; +est/+rel: SvcHairpin
//	71  SvcAffinity  learned client->endpoint flows (idle_timeout) load the endpoint registers
//	72  SvcDNAT      reg3/reg2 (endpoint) -> ct(commit, nat(dst=endpoint)) -> SvcHairpin;
//	                 affinity frontends without a learned endpoint -> their group
//	73  SvcHairpin   src == dst == local endpoint -> ct(commit, zone=HairpinZone, nat(src=hairpin address))
//	74  SvcHairpinOut   swap MACs, back out of the ingress port
//	75  SvcHairpinReply +rpl: ct(zone=SvcZone, nat) -> SvcHairpinReplyOut
//	76  SvcHairpinReplyOut swap MACs, back out of the ingress port
//	77  SvcReply     NORMAL
//	78  SvcAffinityLearn  learn client->endpoint for the frontend, then SvcDNAT (OVS runs bucket
//	                 actions as an action set, which drops learn: it cannot sit in the bucket)
//
// After DNAT a packet keeps the gateway's MAC and leaves by NORMAL through
// the uplink: in NSX mode the fabric routes it, the node bridge never
// shortcuts pod-to-pod traffic. Only a pod reaching itself (hairpin) is
// turned around locally, with its source rewritten so it does not see its
// own address.
package ovs

import (
	"fmt"
	"hash/fnv"
	"net/netip"
	"strings"

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
)

var tableNames = map[int]string{
	tLB: "SvcLB", tAffinity: "SvcAffinity", tDNAT: "SvcDNAT", tHairpin: "SvcHairpin", tHairpinOut: "SvcHairpinOut",
	tHairpinReply: "SvcHairpinReply", tHairpinReplyOut: "SvcHairpinReplyOut", tReply: "SvcReply",
	tAffinityLearn: "SvcAffinityLearn",
}

// Conntrack zones of our own.
const (
	SvcZone     = 65520
	HairpinZone = 65521
)

// DefaultHairpinIP is the source a pod sees when it reaches itself through
// a Service (link-local: never routed off the node).
var DefaultHairpinIP = netip.MustParseAddr("169.254.169.253")

// Cookies: the top byte says which component owns a flow (0x5a: our
// compiled flows, 0x5b: affinity flows learned at run time), the next 24
// bits which frontend (its group number; 0 for shared flows), the low 32
// bits hash the flow's text. A flow is identified by its cookie: a changed
// flow gets a new cookie, so diffing installed against desired is a set
// difference of cookies, and a restart adopts by dumping them.
const (
	compCompiled = 0x5a
	compLearned  = 0x5b
	groupBase    = 0x5a000000
	maxOwner     = 1<<24 - 1
)

func makeCookie(comp byte, owner uint32, text string) uint64 {
	h := fnv.New32a()
	h.Write([]byte(text))
	return uint64(comp)<<56 | uint64(owner&maxOwner)<<32 | uint64(h.Sum32())
}

func cookieOwner(c uint64) uint32 { return uint32(c>>32) & maxOwner }

// Flow is one OpenFlow flow in ovs-ofctl syntax.
type Flow struct {
	Table    int
	Priority int
	Match    string // without table and priority
	Actions  string
	Owner    uint32
}

func (f Flow) text() string {
	m := f.Match
	if m != "" {
		m += ","
	}
	return fmt.Sprintf("table=%d,priority=%d,%sactions=%s", f.Table, f.Priority, m, f.Actions)
}

// Cookie identifies the flow (see makeCookie).
func (f Flow) Cookie() uint64 { return makeCookie(compCompiled, f.Owner, f.text()) }

// Group is one select group.
type Group struct {
	ID      uint32
	Fields  string   // hash fields: the connection's 5-tuple
	Buckets []string // bucket actions
}

func (g Group) text() string {
	var b strings.Builder
	// Hash in ovs-vswitchd over the 5-tuple: the datapath's dp_hash leaves
	// UDP ports out of its symmetric hash, which would pin every UDP
	// client to one endpoint; and only a bucket chosen during translation
	// runs its learn action (session affinity).
	fmt.Fprintf(&b, "group_id=%d,type=select,selection_method=hash,fields(%s)", g.ID, g.Fields)
	for i, a := range g.Buckets {
		fmt.Fprintf(&b, ",bucket=bucket_id:%d,weight:100,actions=%s", i, a)
	}
	return b.String()
}

// signature is what a group's dump must show to equal g: the bucket
// actions' endpoint loads and learn timeout, in bucket order.
func (g Group) signature() string { return groupSignature(g.text()) }

// compileOptions are the node-wide inputs of compilation.
type compileOptions struct {
	NodeName  string
	HairpinIP netip.Addr
}

// compiled is everything one frontend contributes.
type compiled struct {
	src    *dataplane.Frontend
	id     uint32
	flows  []Flow // owned by the frontend
	shared []Flow // endpoint flows, shared by every frontend using the endpoint
	group  *Group
}

func protoName(p dataplane.Protocol, v6 bool) string {
	s := strings.ToLower(string(p))
	if v6 {
		s += "6"
	}
	return s
}

func ipField(v6 bool, dir string) string {
	if v6 {
		return "ipv6_" + dir
	}
	return "nw_" + dir
}

// regLoads puts an endpoint into registers: reg3 (IPv4) or xxreg1 (IPv6)
// and reg2[0..15] (port).
func regLoads(ep netip.AddrPort) string {
	if ep.Addr().Is4() {
		return fmt.Sprintf("load:0x%x->NXM_NX_REG3[],load:0x%x->NXM_NX_REG2[0..15]", v4int(ep.Addr()), ep.Port())
	}
	return fmt.Sprintf("load:0x%x->NXM_NX_XXREG1[],load:0x%x->NXM_NX_REG2[0..15]", ep.Addr().As16(), ep.Port())
}

func regMatch(ep netip.AddrPort) string {
	if ep.Addr().Is4() {
		return fmt.Sprintf("reg3=0x%x,reg2=0x%x/0xffff", v4int(ep.Addr()), ep.Port())
	}
	return fmt.Sprintf("xxreg1=0x%x,reg2=0x%x/0xffff", ep.Addr().As16(), ep.Port())
}

func v4int(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func natAddr(ep netip.AddrPort) string {
	if ep.Addr().Is4() {
		return ep.String()
	}
	return fmt.Sprintf("[%s]:%d", ep.Addr(), ep.Port())
}

// maxLearnTimeout is the largest idle_timeout OpenFlow can carry (16 bits).
const maxLearnTimeout = 65535

func affinitySeconds(f *dataplane.Frontend) int {
	s := int(f.AffinityTimeout.Seconds())
	if s > maxLearnTimeout {
		s = maxLearnTimeout
	}
	return s
}

// compileFrontend compiles one frontend with group number id.
func compileFrontend(f *dataplane.Frontend, id uint32, o compileOptions) *compiled {
	k := f.Key
	v6 := k.IP.Is6()
	proto := protoName(k.Protocol, v6)
	vip := fmt.Sprintf("%s,%s=%s,tp_dst=%d", proto, ipField(v6, "dst"), k.IP, k.Port)
	gid := groupBase | id
	c := &compiled{src: f, id: id}
	c.flows = append(c.flows, Flow{Table: tClassifier, Priority: 200, Match: vip,
		Actions: fmt.Sprintf("ct(table=%d,zone=%d,nat)", tLB, SvcZone), Owner: id})

	affinity := f.AffinityTimeout > 0 && len(f.Endpoints) > 0
	var lb string
	switch {
	case len(f.Endpoints) == 0 && f.IfEmpty == dataplane.Drop:
		lb = "drop"
	case len(f.Endpoints) == 0:
		lb = "controller" // the reject responder answers with RST / ICMP unreachable
	case affinity:
		// A learned flow in SvcAffinity loads the endpoint registers and
		// SvcDNAT uses them; without one, SvcDNAT's frontend flow picks
		// through the group, whose bucket learns and comes back.
		lb = fmt.Sprintf("resubmit(,%d),resubmit(,%d)", tAffinity, tDNAT)
		c.flows = append(c.flows,
			Flow{Table: tDNAT, Priority: 50, Match: vip, Actions: fmt.Sprintf("group:%d", gid), Owner: id},
			Flow{Table: tAffinityLearn, Priority: 100, Match: vip, Actions: learnAction(f, id, v6) + fmt.Sprintf(",resubmit(,%d)", tDNAT), Owner: id})
	default:
		lb = fmt.Sprintf("group:%d", gid)
	}
	c.flows = append(c.flows, Flow{Table: tLB, Priority: 100, Match: "ct_state=+new+trk," + vip, Actions: lb, Owner: id})

	g := &Group{ID: gid, Fields: hashFields(k.Protocol, v6)}
	for _, ep := range f.Endpoints {
		ap := ep.AddrPort()
		next := tDNAT
		if affinity {
			next = tAffinityLearn
		}
		g.Buckets = append(g.Buckets, fmt.Sprintf("%s,resubmit(,%d)", regLoads(ap), next))
		c.shared = append(c.shared, endpointFlows(k.Protocol, ap, ep.NodeName == o.NodeName && o.NodeName != "", o)...)
	}
	c.group = g
	return c
}

func hashFields(p dataplane.Protocol, v6 bool) string {
	l4 := strings.ToLower(string(p))
	ip := "ip"
	if v6 {
		ip = "ipv6"
	}
	return fmt.Sprintf("%s_src,%s_dst,%s_src,%s_dst", ip, ip, l4, l4)
}

// learnAction records client -> endpoint for the frontend's affinity
// timeout (of inactivity: idle_timeout), in the frontend's own cookie space.
func learnAction(f *dataplane.Frontend, id uint32, v6 bool) string {
	k := f.Key
	ethType, src, dst, ep := "0x800", "NXM_OF_IP_SRC[]", "NXM_OF_IP_DST[]", "load:NXM_NX_REG3[]->NXM_NX_REG3[]"
	if v6 {
		ethType, src, dst, ep = "0x86dd", "NXM_NX_IPV6_SRC[]", "NXM_NX_IPV6_DST[]", "load:NXM_NX_XXREG1[]->NXM_NX_XXREG1[]"
	}
	var nwProto int
	var tpDst string
	switch k.Protocol {
	case dataplane.TCP:
		nwProto, tpDst = 6, "NXM_OF_TCP_DST[]"
	case dataplane.UDP:
		nwProto, tpDst = 17, "NXM_OF_UDP_DST[]"
	case dataplane.SCTP:
		nwProto, tpDst = 132, "OXM_OF_SCTP_DST[]"
	}
	return fmt.Sprintf("learn(table=%d,idle_timeout=%d,priority=200,cookie=0x%x,eth_type=%s,nw_proto=%d,%s,%s,%s,%s,load:NXM_NX_REG2[0..15]->NXM_NX_REG2[0..15])",
		tAffinity, affinitySeconds(f), uint64(compLearned)<<56|uint64(id)<<32, ethType, nwProto, src, dst, tpDst, ep)
}

// endpointFlows are the flows every frontend with this endpoint shares:
// DNAT, and (local endpoints) hairpin.
func endpointFlows(p dataplane.Protocol, ep netip.AddrPort, local bool, o compileOptions) []Flow {
	v6 := ep.Addr().Is6()
	proto := protoName(p, v6)
	out := []Flow{
		{Table: tDNAT, Priority: 100, Match: proto + "," + regMatch(ep),
			Actions: fmt.Sprintf("ct(commit,table=%d,zone=%d,nat(dst=%s))", tHairpin, SvcZone, natAddr(ep))},
	}
	if local && !v6 && o.HairpinIP.IsValid() {
		out = append(out, Flow{Table: tHairpin, Priority: 100, Match: fmt.Sprintf("ip,nw_src=%s,nw_dst=%s", ep.Addr(), ep.Addr()),
			Actions: fmt.Sprintf("ct(commit,table=%d,zone=%d,nat(src=%s))", tHairpinOut, HairpinZone, o.HairpinIP)})
	}
	return out
}

const swapMACs = "push:NXM_OF_ETH_SRC[],push:NXM_OF_ETH_DST[],pop:NXM_OF_ETH_SRC[],pop:NXM_OF_ETH_DST[]"

// staticFlows are installed once, whatever the model.
func staticFlows(o compileOptions) []Flow {
	fl := []Flow{
		{Table: tLB, Priority: 200, Match: "ct_state=+est+trk", Actions: fmt.Sprintf("resubmit(,%d)", tHairpin)},
		{Table: tLB, Priority: 200, Match: "ct_state=+rel+trk", Actions: fmt.Sprintf("resubmit(,%d)", tHairpin)},
		{Table: tLB, Priority: 0, Actions: "NORMAL"},
		{Table: tClassifier, Priority: 190, Match: "ip", Actions: fmt.Sprintf("ct(table=%d,zone=%d,nat)", tReply, SvcZone)},
		{Table: tClassifier, Priority: 190, Match: "ipv6", Actions: fmt.Sprintf("ct(table=%d,zone=%d,nat)", tReply, SvcZone)},
		{Table: tAffinity, Priority: 0, Actions: "drop"},
		{Table: tAffinityLearn, Priority: 0, Actions: "drop"},
		{Table: tDNAT, Priority: 0, Actions: "drop"},
		{Table: tHairpin, Priority: 0, Actions: "NORMAL"},
		{Table: tHairpinOut, Priority: 0, Actions: swapMACs + ",IN_PORT"},
		{Table: tHairpinReply, Priority: 100, Match: "ct_state=+rpl+trk,ip", Actions: fmt.Sprintf("ct(table=%d,zone=%d,nat)", tHairpinReplyOut, SvcZone)},
		{Table: tHairpinReply, Priority: 0, Actions: "drop"},
		{Table: tHairpinReplyOut, Priority: 0, Actions: swapMACs + ",IN_PORT"},
		{Table: tReply, Priority: 0, Actions: "NORMAL"},
	}
	if o.HairpinIP.IsValid() {
		fl = append(fl, Flow{Table: tClassifier, Priority: 210, Match: "ip,nw_dst=" + o.HairpinIP.String(),
			Actions: fmt.Sprintf("ct(table=%d,zone=%d,nat)", tHairpinReply, HairpinZone)})
	}
	return fl
}
