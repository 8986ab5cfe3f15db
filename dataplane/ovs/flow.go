package ovs

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"antrea.io/libOpenflow/openflow15"
	"antrea.io/libOpenflow/util"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
)

// Typed flows: the compiler builds these, the backend encodes them as
// OpenFlow 1.5 messages (libOpenflow), and String prints them in ovs-ofctl
// syntax for logs, tests and docs. Nothing is ever parsed back from text.

// CT states (NXM ct_state bits).
const (
	ctNew  = 0x01
	ctEst  = 0x02
	ctRel  = 0x04
	ctRpl  = 0x08
	ctTrk  = 0x20
	ctDNAT = 0x80
)

// Match is what a flow matches on: only the fields this pipeline uses. It
// is comparable: equal (Table, Priority, Match) is the same OpenFlow flow,
// which is how the backend identifies flows.
type Match struct {
	InPort  uint32     // 0: any
	EthType uint16     // 0: any; 0x0800 or 0x86dd
	IPProto uint8      // 0: any
	IPSrc   netip.Addr // exact; invalid: any
	// SrcPrefix matches the source under a mask; invalid: any. (A flow
	// uses IPSrc or SrcPrefix, not both.)
	SrcPrefix netip.Prefix
	IPDst     netip.Addr
	TPDst     uint16 // 0: any (needs IPProto)
	// CTState/CTMask: ct_state bits that must be set (within the mask).
	CTState, CTMask uint32
	// Endpoint registers (see regLoads): reg3 or xxreg1 = EPAddr and
	// reg2[0..15] = EPPort; invalid EPAddr: any.
	EPAddr netip.Addr
	EPPort uint16
	// Flags/FlagsMask: reg0 bits that must be set (within the mask); see
	// flagExternal.
	Flags, FlagsMask uint32
	// SNATTag: reg1 must equal it (the SNAT address's low 32 bits, see
	// snatTag); 0: any.
	SNATTag uint32
}

const (
	ethIPv4 = 0x0800
	ethIPv6 = 0x86dd
)

func ethTypeOf(a netip.Addr) uint16 {
	if a.Is6() {
		return ethIPv6
	}
	return ethIPv4
}

// String prints the match as ovs-ofctl does (without table and priority).
func (m Match) String() string {
	var parts []string
	if m.InPort != 0 {
		parts = append(parts, fmt.Sprintf("in_port=%d", m.InPort))
	}
	if m.FlagsMask != 0 {
		parts = append(parts, fmt.Sprintf("reg0=0x%x/0x%x", m.Flags, m.FlagsMask))
	}
	if m.SNATTag != 0 {
		parts = append(parts, fmt.Sprintf("reg1=0x%x", m.SNATTag))
	}
	if m.CTMask != 0 {
		parts = append(parts, "ct_state="+ctString(m.CTState, m.CTMask))
	}
	v6 := m.EthType == ethIPv6
	switch {
	case m.IPProto != 0:
		name := map[uint8]string{6: "tcp", 17: "udp", 132: "sctp"}[m.IPProto]
		if name == "" {
			name = fmt.Sprintf("ip,nw_proto=%d", m.IPProto)
		}
		if v6 {
			name += "6"
		}
		parts = append(parts, name)
	case v6:
		parts = append(parts, "ipv6")
	case m.EthType == ethIPv4:
		parts = append(parts, "ip")
	}
	ipf := "nw_"
	if v6 {
		ipf = "ipv6_"
	}
	if m.IPSrc.IsValid() {
		parts = append(parts, ipf+"src="+m.IPSrc.String())
	}
	if m.SrcPrefix.IsValid() {
		parts = append(parts, ipf+"src="+m.SrcPrefix.String())
	}
	if m.IPDst.IsValid() {
		parts = append(parts, ipf+"dst="+m.IPDst.String())
	}
	if m.TPDst != 0 {
		parts = append(parts, fmt.Sprintf("tp_dst=%d", m.TPDst))
	}
	if m.EPAddr.IsValid() {
		if m.EPAddr.Is4() {
			parts = append(parts, fmt.Sprintf("reg3=0x%x", v4int(m.EPAddr)))
		} else {
			parts = append(parts, fmt.Sprintf("xxreg1=0x%x", m.EPAddr.As16()))
		}
		parts = append(parts, fmt.Sprintf("reg2=0x%x/0xffff", m.EPPort))
	}
	return strings.Join(parts, ",")
}

func ctString(state, mask uint32) string {
	var b strings.Builder
	for _, s := range []struct {
		bit  uint32
		name string
	}{{ctNew, "new"}, {ctEst, "est"}, {ctRel, "rel"}, {ctRpl, "rpl"}, {ctTrk, "trk"}, {ctDNAT, "dnat"}} {
		if mask&s.bit == 0 {
			continue
		}
		if state&s.bit != 0 {
			b.WriteString("+" + s.name)
		} else {
			b.WriteString("-" + s.name)
		}
	}
	return b.String()
}

// fields encodes the match in prerequisite order.
func (m Match) fields() []openflow15.MatchField {
	var fs []*openflow15.MatchField
	if m.InPort != 0 {
		fs = append(fs, openflow15.NewInPortField(m.InPort))
	}
	if m.EthType != 0 {
		fs = append(fs, openflow15.NewEthTypeField(m.EthType))
	}
	if m.IPProto != 0 {
		fs = append(fs, openflow15.NewIpProtoField(m.IPProto))
	}
	if m.IPSrc.IsValid() {
		if m.IPSrc.Is4() {
			fs = append(fs, openflow15.NewIpv4SrcField(net.IP(m.IPSrc.AsSlice()), nil))
		} else {
			fs = append(fs, openflow15.NewIpv6SrcField(net.IP(m.IPSrc.AsSlice()), nil))
		}
	}
	if p := m.SrcPrefix; p.IsValid() {
		mask := net.IP(net.CIDRMask(p.Bits(), p.Addr().BitLen()))
		if p.Addr().Is4() {
			fs = append(fs, openflow15.NewIpv4SrcField(net.IP(p.Addr().AsSlice()), &mask))
		} else {
			fs = append(fs, openflow15.NewIpv6SrcField(net.IP(p.Addr().AsSlice()), &mask))
		}
	}
	if m.IPDst.IsValid() {
		if m.IPDst.Is4() {
			fs = append(fs, openflow15.NewIpv4DstField(net.IP(m.IPDst.AsSlice()), nil))
		} else {
			fs = append(fs, openflow15.NewIpv6DstField(net.IP(m.IPDst.AsSlice()), nil))
		}
	}
	if m.TPDst != 0 {
		switch m.IPProto {
		case 6:
			fs = append(fs, openflow15.NewTcpDstField(m.TPDst))
		case 17:
			fs = append(fs, openflow15.NewUdpDstField(m.TPDst))
		case 132:
			fs = append(fs, openflow15.NewSctpDstField(m.TPDst))
		}
	}
	if m.FlagsMask != 0 {
		fs = append(fs, openflow15.NewRegMatchFieldWithMask(0, m.Flags, m.FlagsMask))
	}
	if m.SNATTag != 0 {
		fs = append(fs, openflow15.NewRegMatchField(1, m.SNATTag, nil))
	}
	if m.CTMask != 0 {
		fs = append(fs, openflow15.NewCTStateMatchField(&openflow15.CTStates{Data: m.CTState, Mask: m.CTMask}))
	}
	if m.EPAddr.IsValid() {
		if m.EPAddr.Is4() {
			fs = append(fs, openflow15.NewRegMatchField(3, v4int(m.EPAddr), nil))
		} else {
			f := fieldHeader("NXM_NX_XXREG1", false)
			a := m.EPAddr.As16()
			f.Value = &openflow15.ByteArrayField{Data: a[:], Length: 16}
			fs = append(fs, f)
		}
		fs = append(fs, openflow15.NewRegMatchFieldWithMask(2, uint32(m.EPPort), 0xffff))
	}
	out := make([]openflow15.MatchField, len(fs))
	for i, f := range fs {
		out[i] = *f
	}
	return out
}

func fieldHeader(name string, mask bool) *openflow15.MatchField {
	f, err := openflow15.FindFieldHeaderByName(name, mask)
	if err != nil {
		panic(fmt.Sprintf("libOpenflow has no field %s: %v", name, err)) // a typo here, caught by the unit tests
	}
	return f
}

// Action is one OpenFlow action of a flow or bucket.
type Action interface {
	String() string
	of() []openflow15.Action
}

// NATKind is what a ct action's nat does.
type NATKind uint8

// The nat kinds.
const (
	NATNone  NATKind = iota
	NATPlain         // un-NAT packets of connections NATed before
	NATSrc           // source NAT to Addr
	NATDst           // destination NAT to Addr:Port
)

// NAT of a ct action.
type NAT struct {
	Kind NATKind
	Addr netip.Addr
	Port uint16 // 0: keep the port
	// PortMax > Port makes Port..PortMax the range conntrack picks the
	// port from.
	PortMax uint16
}

// CT sends the packet through conntrack. Comparable: two CT actions are
// equal when they do the same.
type CT struct {
	Commit bool
	Table  uint8
	Zone   uint16
	NAT    NAT
}

func (a CT) String() string {
	var b strings.Builder
	b.WriteString("ct(")
	if a.Commit {
		b.WriteString("commit,")
	}
	fmt.Fprintf(&b, "table=%d,zone=%d", a.Table, a.Zone)
	switch a.NAT.Kind {
	case NATPlain:
		b.WriteString(",nat")
	case NATSrc, NATDst:
		dir := "dst"
		if a.NAT.Kind == NATSrc {
			dir = "src"
		}
		addr := a.NAT.Addr.String()
		if a.NAT.Port != 0 {
			addr = natAddr(netip.AddrPortFrom(a.NAT.Addr, a.NAT.Port))
		}
		if a.NAT.PortMax > a.NAT.Port {
			addr += fmt.Sprintf("-%d", a.NAT.PortMax)
		}
		fmt.Fprintf(&b, ",nat(%s=%s)", dir, addr)
	}
	b.WriteString(")")
	return b.String()
}

func (a CT) of() []openflow15.Action {
	ct := openflow15.NewNXActionConnTrack().Table(a.Table).ZoneImm(a.Zone)
	if a.Commit {
		ct.Commit()
	}
	if a.NAT.Kind != NATNone {
		n := openflow15.NewNXActionCTNAT()
		if a.NAT.Kind != NATPlain {
			if a.NAT.Kind == NATSrc {
				_ = n.SetSNAT()
			} else {
				_ = n.SetDNAT()
			}
			ip := net.IP(a.NAT.Addr.AsSlice())
			if a.NAT.Addr.Is4() {
				n.SetRangeIPv4Min(ip)
				n.SetRangeIPv4Max(ip)
			} else {
				n.SetRangeIPv6Min(ip)
				n.SetRangeIPv6Max(ip)
			}
			if a.NAT.Port != 0 {
				lo, hi := a.NAT.Port, max(a.NAT.Port, a.NAT.PortMax)
				n.SetRangeProtoMin(&lo)
				n.SetRangeProtoMax(&hi)
			}
		}
		ct.AddAction(n)
	}
	return []openflow15.Action{ct}
}

// Resubmit continues in another table.
type Resubmit uint8

func (a Resubmit) String() string { return fmt.Sprintf("resubmit(,%d)", uint8(a)) }
func (a Resubmit) of() []openflow15.Action {
	return []openflow15.Action{openflow15.NewNXActionResubmitTableAction(openflow15.OFPP_IN_PORT, uint8(a))}
}

// ToGroup applies a group.
type ToGroup uint32

func (a ToGroup) String() string { return fmt.Sprintf("group:%d", uint32(a)) }
func (a ToGroup) of() []openflow15.Action {
	return []openflow15.Action{openflow15.NewActionGroup(uint32(a))}
}

// Output to a reserved port.
type Output uint32

// Reserved ports we output to.
const (
	Normal     = Output(openflow15.P_NORMAL)
	InPort     = Output(openflow15.P_IN_PORT)
	Controller = Output(openflow15.P_CONTROLLER)
)

func (a Output) String() string {
	switch a {
	case Normal:
		return "NORMAL"
	case InPort:
		return "IN_PORT"
	case Controller:
		return "controller"
	}
	return fmt.Sprintf("output:%d", uint32(a))
}

func (a Output) of() []openflow15.Action {
	o := openflow15.NewActionOutput(uint32(a))
	if a == Controller {
		o.MaxLen = 0xffff // the whole packet: the reject responder answers it
	}
	return []openflow15.Action{o}
}

// LoadEndpoint puts an endpoint into the endpoint registers: reg3 (IPv4)
// or xxreg1 (IPv6), and reg2[0..15] (port).
type LoadEndpoint netip.AddrPort

func (a LoadEndpoint) String() string { return regLoads(netip.AddrPort(a)) }

// of encodes the loads as OpenFlow 1.5 set_field (OVS takes NXAST_REG_LOAD
// only up to OpenFlow 1.4); reg2 is set under a mask.
func (a LoadEndpoint) of() []openflow15.Action {
	ep := netip.AddrPort(a)
	var out []openflow15.Action
	if ep.Addr().Is4() {
		out = append(out, openflow15.NewActionSetField(*openflow15.NewRegMatchField(3, v4int(ep.Addr()), nil)))
	} else {
		b := ep.Addr().As16()
		xx := fieldHeader("NXM_NX_XXREG1", false)
		xx.Value = &openflow15.ByteArrayField{Data: b[:], Length: 16}
		out = append(out, openflow15.NewActionSetField(*xx))
	}
	return append(out, openflow15.NewActionSetField(*openflow15.NewRegMatchFieldWithMask(2, uint32(ep.Port()), 0xffff)))
}

// LoadFlags sets reg0 (flags) and, when SNATTag is not 0, reg1: what an
// external frontend's classifier flow tells the tables after it.
type LoadFlags struct {
	Flags   uint32
	SNATTag uint32
}

func (a LoadFlags) String() string {
	s := fmt.Sprintf("load:0x%x->NXM_NX_REG0[]", a.Flags)
	if a.SNATTag != 0 {
		s += fmt.Sprintf(",load:0x%x->NXM_NX_REG1[]", a.SNATTag)
	}
	return s
}

func (a LoadFlags) of() []openflow15.Action {
	out := []openflow15.Action{openflow15.NewActionSetField(*openflow15.NewRegMatchField(0, a.Flags, nil))}
	if a.SNATTag != 0 {
		out = append(out, openflow15.NewActionSetField(*openflow15.NewRegMatchField(1, a.SNATTag, nil)))
	}
	return out
}

// SwapMACs swaps the Ethernet source and destination (through the
// metadata field: the packet is about to leave, nothing reads it after).
type SwapMACs struct{}

func (SwapMACs) String() string {
	return "move:NXM_OF_ETH_SRC[]->OXM_OF_METADATA[0..47],move:NXM_OF_ETH_DST[]->NXM_OF_ETH_SRC[],move:OXM_OF_METADATA[0..47]->NXM_OF_ETH_DST[]"
}

// of encodes the moves as OpenFlow 1.5 copy_field (OVS takes
// NXAST_REG_MOVE only up to OpenFlow 1.4).
func (SwapMACs) of() []openflow15.Action {
	src, dst, md := oxmID("NXM_OF_ETH_SRC"), oxmID("NXM_OF_ETH_DST"), oxmID("OXM_OF_METADATA")
	move := func(from, to openflow15.OxmId) openflow15.Action {
		a := openflow15.NewActionCopyField(48, 0, 0, from, to)
		a.Length = a.Len() // NewActionCopyField sizes it before the ids are set
		return a
	}
	return []openflow15.Action{move(src, md), move(dst, src), move(md, dst)}
}

func oxmID(name string) openflow15.OxmId {
	id, err := openflow15.FindOxmIdByName(name, false)
	if err != nil {
		panic(fmt.Sprintf("libOpenflow has no field %s: %v", name, err))
	}
	return *id
}

// LearnAffinity records client -> endpoint for a frontend in SvcAffinity
// for IdleTimeout seconds of inactivity, in the frontend's learned cookie.
type LearnAffinity struct {
	Proto       dataplane.Protocol
	V6          bool
	IdleTimeout uint16
	Cookie      uint64
}

func (a LearnAffinity) names() (ethType uint16, src, dst, tpDst, epReg string, epBits uint16) {
	tp := map[dataplane.Protocol]string{dataplane.TCP: "NXM_OF_TCP_DST", dataplane.UDP: "NXM_OF_UDP_DST", dataplane.SCTP: "OXM_OF_SCTP_DST"}[a.Proto]
	if a.V6 {
		return ethIPv6, "NXM_NX_IPV6_SRC", "NXM_NX_IPV6_DST", tp, "NXM_NX_XXREG1", 128
	}
	return ethIPv4, "NXM_OF_IP_SRC", "NXM_OF_IP_DST", tp, "NXM_NX_REG3", 32
}

func (a LearnAffinity) String() string {
	eth, src, dst, tp, reg, _ := a.names()
	return fmt.Sprintf("learn(table=%d,idle_timeout=%d,priority=200,cookie=0x%x,eth_type=0x%x,nw_proto=%d,%s[],%s[],%s[],load:%s[]->%s[],load:NXM_NX_REG2[0..15]->NXM_NX_REG2[0..15])",
		tAffinity, a.IdleTimeout, a.Cookie, eth, a.Proto.Number(), src, dst, tp, reg, reg)
}

func (a LearnAffinity) of() []openflow15.Action {
	eth, src, dst, tp, reg, epBits := a.names()
	l := openflow15.NewNXActionLearn()
	l.IdleTimeout, l.Priority, l.Cookie, l.TableID = a.IdleTimeout, 200, a.Cookie, tAffinity
	value := func(name string, nbits uint16, v uint64) *openflow15.NXLearnSpec {
		b := make([]byte, 8)
		binary.BigEndian.PutUint64(b, v)
		n := int(2 * ((nbits + 15) / 16))
		return &openflow15.NXLearnSpec{Header: openflow15.NewLearnHeaderMatchFromValue(nbits),
			SrcValue: b[8-n:], DstField: &openflow15.NXLearnSpecField{Field: fieldHeader(name, false)}}
	}
	match := func(name string, nbits uint16) *openflow15.NXLearnSpec {
		f := &openflow15.NXLearnSpecField{Field: fieldHeader(name, false)}
		return &openflow15.NXLearnSpec{Header: openflow15.NewLearnHeaderMatchFromField(nbits), SrcField: f, DstField: f}
	}
	load := func(name string, nbits uint16) *openflow15.NXLearnSpec {
		f := &openflow15.NXLearnSpecField{Field: fieldHeader(name, false)}
		return &openflow15.NXLearnSpec{Header: openflow15.NewLearnHeaderLoadFromField(nbits), SrcField: f, DstField: f}
	}
	ipBits := uint16(32)
	if a.V6 {
		ipBits = 128
	}
	l.LearnSpecs = []*openflow15.NXLearnSpec{
		value("NXM_OF_ETH_TYPE", 16, uint64(eth)),
		value("NXM_OF_IP_PROTO", 8, uint64(a.Proto.Number())),
		match(src, ipBits), match(dst, ipBits), match(tp, 16),
		load(reg, epBits), load("NXM_NX_REG2", 16),
	}
	return []openflow15.Action{l}
}

func actionsString(as []Action) string {
	if len(as) == 0 {
		return "drop"
	}
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ",")
}

func ofActions(as []Action) []openflow15.Action {
	var out []openflow15.Action
	for _, a := range as {
		out = append(out, a.of()...)
	}
	return out
}

// Flow is one OpenFlow flow.
type Flow struct {
	Table    uint8
	Priority uint16
	Match    Match
	Actions  []Action // none: drop
	Owner    uint32   // frontend id; 0: shared or static
}

// flowKey is what OpenFlow identifies a flow by.
type flowKey struct {
	Table    uint8
	Priority uint16
	Match    Match
}

func (f Flow) key() flowKey { return flowKey{f.Table, f.Priority, f.Match} }

func (f Flow) text() string {
	m := f.Match.String()
	if m != "" {
		m += ","
	}
	return fmt.Sprintf("table=%d,priority=%d,%sactions=%s", f.Table, f.Priority, m, actionsString(f.Actions))
}

func (f Flow) String() string { return f.text() }

// flowMod encodes f as an add (which replaces a flow of the same key)
// with cookie.
func (f Flow) flowMod(cookie uint64) *openflow15.FlowMod {
	fm := openflow15.NewFlowMod()
	fm.Command = openflow15.FC_ADD
	fm.TableId, fm.Priority, fm.Cookie = f.Table, f.Priority, cookie
	for _, mf := range f.Match.fields() {
		fm.Match.AddField(mf) // AddField keeps the match length right
	}
	if acts := ofActions(f.Actions); len(acts) > 0 {
		in := openflow15.NewInstrApplyActions()
		for _, a := range acts {
			_ = in.AddAction(a, false)
		}
		fm.AddInstruction(in)
	}
	return fm
}

// deleteFlow encodes a strict delete of the flow with key k, restricted to
// the cookie we installed it with, so a flow someone else put there with
// the same match is left alone.
func deleteFlow(k flowKey, cookie uint64) *openflow15.FlowMod {
	fm := openflow15.NewFlowMod()
	fm.Command = openflow15.FC_DELETE_STRICT
	fm.TableId, fm.Priority, fm.Cookie, fm.CookieMask = k.Table, k.Priority, cookie, ^uint64(0)
	for _, mf := range k.Match.fields() {
		fm.Match.AddField(mf)
	}
	return fm
}

// deleteByCookie deletes every flow whose cookie matches under mask.
func deleteByCookie(cookie, mask uint64) *openflow15.FlowMod {
	fm := openflow15.NewFlowMod()
	fm.Command = openflow15.FC_DELETE
	fm.TableId = openflow15.OFPTT_ALL
	fm.Cookie, fm.CookieMask = cookie, mask
	return fm
}

// Bucket is one bucket of a select group.
type Bucket struct {
	Weight  uint16
	Actions []Action
}

// Group is one select group, hashing the connection's 5-tuple.
type Group struct {
	ID      uint32
	Proto   dataplane.Protocol
	V6      bool
	Basis   uint64 // selection_method_param: differs per level so levels pick independently
	Buckets []Bucket
}

func (g Group) hashFieldNames() string {
	l4 := strings.ToLower(string(g.Proto))
	ip := "ip"
	if g.V6 {
		ip = "ipv6"
	}
	return fmt.Sprintf("%s_src,%s_dst,%s_src,%s_dst", ip, ip, l4, l4)
}

func (g Group) text() string {
	var b strings.Builder
	// Hash in ovs-vswitchd over the 5-tuple: the datapath's dp_hash leaves
	// UDP ports out of its symmetric hash, which would pin every UDP
	// client to one endpoint; and only a bucket chosen during translation
	// runs its learn action (session affinity).
	fmt.Fprintf(&b, "group_id=%d,type=select,selection_method=hash", g.ID)
	if g.Basis != 0 {
		fmt.Fprintf(&b, ",selection_method_param=%d", g.Basis)
	}
	fmt.Fprintf(&b, ",fields(%s)", g.hashFieldNames())
	for i, bk := range g.Buckets {
		fmt.Fprintf(&b, ",bucket=bucket_id:%d,weight:%d,actions=%s", i, bk.Weight, actionsString(bk.Actions))
	}
	return b.String()
}

// hashFields are the NTR selection method's fields: OVS reads each
// field's value as the mask of what it hashes, so all ones.
func (g Group) hashFields() []openflow15.MatchField {
	var fs []*openflow15.MatchField
	if g.V6 {
		ones := net.IP(bytes16(0xff))
		fs = append(fs, openflow15.NewIpv6SrcField(ones, nil), openflow15.NewIpv6DstField(ones, nil))
	} else {
		ones := net.IPv4(255, 255, 255, 255).To4()
		fs = append(fs, openflow15.NewIpv4SrcField(ones, nil), openflow15.NewIpv4DstField(ones, nil))
	}
	switch g.Proto {
	case dataplane.TCP:
		fs = append(fs, openflow15.NewTcpSrcField(0xffff), openflow15.NewTcpDstField(0xffff))
	case dataplane.UDP:
		fs = append(fs, openflow15.NewUdpSrcField(0xffff), openflow15.NewUdpDstField(0xffff))
	case dataplane.SCTP:
		fs = append(fs, openflow15.NewSctpSrcField(0xffff), openflow15.NewSctpDstField(0xffff))
	}
	out := make([]openflow15.MatchField, len(fs))
	for i, f := range fs {
		out[i] = *f
	}
	return out
}

func bytes16(v byte) []byte {
	b := make([]byte, 16)
	for i := range b {
		b[i] = v
	}
	return b
}

// groupMod encodes g with command (OFPGC_ADD or OFPGC_MODIFY).
func (g Group) groupMod(command uint16) *openflow15.GroupMod {
	gm := openflow15.NewGroupMod()
	gm.Command, gm.Type, gm.GroupId = command, openflow15.GT_SELECT, g.ID
	for i, bk := range g.Buckets {
		b := openflow15.NewBucket(uint32(i))
		b.AddProperty(openflow15.NewGroupBucketPropWeight(bk.Weight))
		for _, a := range ofActions(bk.Actions) {
			b.AddAction(a)
		}
		gm.AddBucket(*b)
	}
	gm.Properties = append(gm.Properties, openflow15.NewNTRSelectionMethod(openflow15.NTR_HASH, g.Basis, g.hashFields()...))
	return gm
}

func deleteGroup(id uint32) *openflow15.GroupMod {
	gm := openflow15.NewGroupMod()
	gm.Command, gm.Type, gm.GroupId = openflow15.OFPGC_DELETE, openflow15.GT_SELECT, id
	return gm
}

var _ util.Message = (*openflow15.FlowMod)(nil)
