package ovs

import (
	"encoding/binary"
	"net"
	"net/netip"

	"antrea.io/libOpenflow/openflow15"
)

// decodeKey reads a dumped flow's identity back into the typed key it was
// written from. ok is false for a flow with a field this pipeline never
// writes (someone else's flow under our cookie): the caller deletes it.
func decodeKey(fd *openflow15.FlowDesc) (flowKey, bool) {
	k := flowKey{Table: fd.TableId, Priority: fd.Priority}
	m := &k.Match
	var regs regFile
	for _, f := range fd.Match.Fields {
		switch {
		case f.Class == openflow15.OXM_CLASS_OPENFLOW_BASIC:
			if f.HasMask && f.Field != openflow15.OXM_FIELD_ETH_TYPE {
				p, ok := srcPrefix(f)
				if !ok {
					return k, false
				}
				m.SrcPrefix = p
				continue
			}
			switch v := f.Value.(type) {
			case *openflow15.InPortField:
				m.InPort = v.InPort
			case *openflow15.EthTypeField:
				m.EthType = v.EthType
			case *openflow15.IpProtoField:
				m.IPProto = v.Protocol
			case *openflow15.Ipv4SrcField:
				m.IPSrc = addrOf(v.Ipv4Src)
			case *openflow15.Ipv4DstField:
				m.IPDst = addrOf(v.Ipv4Dst)
			case *openflow15.Ipv6SrcField:
				m.IPSrc = addrOf(v.Ipv6Src)
			case *openflow15.Ipv6DstField:
				m.IPDst = addrOf(v.Ipv6Dst)
			case *openflow15.PortField:
				switch f.Field {
				case openflow15.OXM_FIELD_TCP_DST, openflow15.OXM_FIELD_UDP_DST, openflow15.OXM_FIELD_SCTP_DST:
					m.TPDst = v.Port
				default:
					return k, false
				}
			default:
				return k, false
			}
		case f.Class == openflow15.OXM_CLASS_NXM_1 && f.Field == openflow15.NXM_NX_CT_STATE:
			v, ok := f.Value.(*openflow15.Uint32Message)
			if !ok {
				return k, false
			}
			m.CTState, m.CTMask = v.Data, 0xffffffff
			if mk, ok := f.Mask.(*openflow15.Uint32Message); ok && f.HasMask {
				m.CTMask = mk.Data
			}
		default:
			if !regs.add(f) {
				return k, false
			}
		}
	}
	m.Flags, m.FlagsMask = regs.take(0)
	if v, mask := regs.take(1); mask == 0xffffffff {
		m.SNATTag = v
	} else if mask != 0 {
		return k, false
	}
	return k, regs.endpoint(m)
}

// srcPrefix reads a masked IPv4 or IPv6 source match as a prefix; false
// for any other masked field or a mask that is not a prefix.
func srcPrefix(f openflow15.MatchField) (netip.Prefix, bool) {
	var ip, mask net.IP
	switch v := f.Value.(type) {
	case *openflow15.Ipv4SrcField:
		mk, ok := f.Mask.(*openflow15.Ipv4SrcField)
		if !ok {
			return netip.Prefix{}, false
		}
		ip, mask = v.Ipv4Src, mk.Ipv4Src
	case *openflow15.Ipv6SrcField:
		mk, ok := f.Mask.(*openflow15.Ipv6SrcField)
		if !ok {
			return netip.Prefix{}, false
		}
		ip, mask = v.Ipv6Src, mk.Ipv6Src
	default:
		return netip.Prefix{}, false
	}
	a := addrOf(ip)
	if len(mask) == 16 && a.Is4() {
		mask = mask[12:]
	}
	ones, bits := net.IPMask(mask).Size()
	if bits == 0 || !a.IsValid() {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a, ones), true
}

// oxmClassPacketRegs is OFPXMC_PACKET_REGS: OpenFlow 1.5's 64-bit registers.
const oxmClassPacketRegs = 0x8001

// regFile collects register matches, whichever encoding the switch used.
type regFile struct {
	val, mask [8]uint32
}

// add reads one register field (a match, or a set_field's value), in
// whichever encoding the switch used; false for any other field.
func (r *regFile) add(f openflow15.MatchField) bool {
	switch {
	case f.Class == openflow15.OXM_CLASS_NXM_1 && f.Field <= openflow15.NXM_NX_REG7:
		v, ok := f.Value.(*openflow15.Uint32Message)
		if !ok {
			return false
		}
		mask := uint32(0xffffffff)
		if mk, ok := f.Mask.(*openflow15.Uint32Message); ok && f.HasMask {
			mask = mk.Data
		}
		r.set(int(f.Field), v.Data, mask)
		return true
	case f.Class == openflow15.OXM_CLASS_NXM_1 && f.Field >= openflow15.NXM_NX_XXREG0 && f.Field <= openflow15.NXM_NX_XXREG1:
		return r.setBytes(4*int(f.Field-openflow15.NXM_NX_XXREG0), f)
	case f.Class == oxmClassPacketRegs && f.Field < 8:
		// OVS reports registers as 64-bit packet registers: xregN
		// holds reg(2N) in its high half and reg(2N+1) in the low.
		return r.setBytes(2*int(f.Field), f)
	}
	return false
}

func (r *regFile) set(i int, v, m uint32) {
	if i < len(r.val) {
		r.val[i], r.mask[i] = v&m, m
	}
}

// setBytes sets consecutive registers from i on from a field of whole
// 32-bit words (value, and mask when it has one).
func (r *regFile) setBytes(i int, f openflow15.MatchField) bool {
	v, ok := f.Value.(*openflow15.ByteArrayField)
	if !ok || len(v.Data)%4 != 0 || i+len(v.Data)/4 > len(r.val) {
		return false
	}
	var mask []byte
	if f.HasMask {
		mk, ok := f.Mask.(*openflow15.ByteArrayField)
		if !ok || len(mk.Data) != len(v.Data) {
			return false
		}
		mask = mk.Data
	}
	for w := 0; w < len(v.Data)/4; w++ {
		m := uint32(0xffffffff)
		if mask != nil {
			m = binary.BigEndian.Uint32(mask[4*w:])
		}
		if m != 0 {
			r.set(i+w, binary.BigEndian.Uint32(v.Data[4*w:]), m)
		}
	}
	return true
}

// take returns register i's match and forgets it.
func (r *regFile) take(i int) (val, mask uint32) {
	val, mask = r.val[i], r.mask[i]
	r.val[i], r.mask[i] = 0, 0
	return val, mask
}

// endpoint reads the endpoint registers back (reg3 or reg4..7, reg2's low
// 16 bits) into m; false for any other register match.
func (r *regFile) endpoint(m *Match) bool {
	used := map[int]uint32{}
	for i, mk := range r.mask {
		if mk != 0 {
			used[i] = mk
		}
	}
	if len(used) == 0 {
		return true
	}
	if used[2] != 0xffff {
		return false
	}
	m.EPPort = uint16(r.val[2])
	switch {
	case len(used) == 2 && used[3] == 0xffffffff:
		m.EPAddr = netip.AddrFrom4([4]byte{byte(r.val[3] >> 24), byte(r.val[3] >> 16), byte(r.val[3] >> 8), byte(r.val[3])})
	case len(used) == 5 && used[4] == 0xffffffff && used[5] == 0xffffffff && used[6] == 0xffffffff && used[7] == 0xffffffff:
		var a [16]byte
		for w := 0; w < 4; w++ {
			binary.BigEndian.PutUint32(a[4*w:], r.val[4+w])
		}
		m.EPAddr = netip.AddrFrom16(a)
	default:
		return false
	}
	return true
}

func addrOf(ip net.IP) netip.Addr {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.Addr{}
	}
	return a.Unmap()
}
