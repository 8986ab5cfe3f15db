package ebpf

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
)

// svcVal is a frontend's service entry, either family.
type svcVal struct {
	Id          uint32 // named as the maps' field
	Count       uint16
	Flags       uint16
	AffinitySec uint32
	SNAT        netip.Addr // invalid: external clients keep their source
}

// family is one address family's maps, and the conversions between the
// backend's family-neutral values and the maps' layouts (nsx_svc.c: the
// IPv4 maps keep the layout older versions pinned, IPv6 has its own).
// Not safe for concurrent use; the Backend's Sync is its only writer.
type family struct {
	v6                                                       bool
	services, backends, conntrack, affinity, members, ranges *ebpf.Map
}

func (o *Objects) family(v6 bool) *family {
	if v6 {
		return &family{true, o.NsxServices6, o.NsxBackends6, o.NsxConntrack6, o.NsxAffinity6, o.NsxMembers6, o.NsxRanges6}
	}
	return &family{false, o.NsxServices, o.NsxBackends, o.NsxConntrack, o.NsxAffinity, o.NsxMembers, o.NsxRanges}
}

func (f *family) name() string {
	if f.v6 {
		return "IPv6"
	}
	return "IPv4"
}

// has says whether a is of this family (an IPv4-mapped IPv6 address is
// IPv6 here, as in the packets).
func (f *family) has(a netip.Addr) bool { return a.IsValid() && a.Is6() == f.v6 }

func be128(a netip.Addr) [16]byte { return a.As16() }

func (f *family) svcKey(k dataplane.FrontendKey) any {
	if f.v6 {
		return nsxSvc6Key{Vip: be128(k.IP), Port: be16(k.Port), Proto: k.Protocol.Number()}
	}
	return nsxSvcKey{Vip: be32(k.IP), Port: be16(k.Port), Proto: k.Protocol.Number()}
}

func (f *family) svcVal(v svcVal) any {
	if f.v6 {
		out := nsxSvc6Val{Id: v.Id, Count: v.Count, Flags: v.Flags, AffinitySec: v.AffinitySec}
		if f.has(v.SNAT) {
			out.SnatIp = be128(v.SNAT)
		}
		return out
	}
	out := nsxSvcVal{Id: v.Id, Count: v.Count, Flags: v.Flags, AffinitySec: v.AffinitySec}
	if f.has(v.SNAT) {
		out.SnatIp = be32(v.SNAT)
	}
	return out
}

func (f *family) putService(k dataplane.FrontendKey, v svcVal) error {
	if err := f.services.Put(f.svcKey(k), f.svcVal(v)); err != nil {
		return fmt.Errorf("%s services map: %w", f.name(), err)
	}
	return nil
}

func (f *family) deleteService(k dataplane.FrontendKey) error {
	if err := f.services.Delete(f.svcKey(k)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("%s services map: %w", f.name(), err)
	}
	return nil
}

// iterate calls fn with every entry of m, read as K and V.
func iterate[K, V any](m *ebpf.Map, fn func(*K, *V)) error {
	var k K
	var v V
	it := m.Iterate()
	for it.Next(&k, &v) {
		fn(&k, &v)
	}
	return it.Err()
}

// The maps' address bytes back as values.
func ap4(ip [4]byte, port [2]byte) netip.AddrPort {
	return netip.AddrPortFrom(addrOf(ip), portOf(port))
}
func ap6(ip [16]byte, port [2]byte) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom16(ip), portOf(port))
}

func svcValOf4(v *nsxSvcVal) svcVal {
	sv := svcVal{Id: v.Id, Count: v.Count, Flags: v.Flags, AffinitySec: v.AffinitySec}
	if v.SnatIp != [4]byte{} {
		sv.SNAT = addrOf(v.SnatIp)
	}
	return sv
}

func svcValOf6(v *nsxSvc6Val) svcVal {
	sv := svcVal{Id: v.Id, Count: v.Count, Flags: v.Flags, AffinitySec: v.AffinitySec}
	if v.SnatIp != [16]byte{} {
		sv.SNAT = netip.AddrFrom16(v.SnatIp)
	}
	return sv
}

// eachService calls fn with every service entry; ok is false for one this
// version does not write (an unknown protocol).
func (f *family) eachService(fn func(k dataplane.FrontendKey, v svcVal, ok bool)) error {
	key := func(vip netip.Addr, port [2]byte, proto uint8) (dataplane.FrontendKey, bool) {
		p, ok := dataplane.ProtocolOf(proto)
		return dataplane.FrontendKey{IP: vip, Port: portOf(port), Protocol: p}, ok
	}
	var err error
	if f.v6 {
		err = iterate(f.services, func(k *nsxSvc6Key, v *nsxSvc6Val) {
			fk, ok := key(netip.AddrFrom16(k.Vip), k.Port, k.Proto)
			fn(fk, svcValOf6(v), ok)
		})
	} else {
		err = iterate(f.services, func(k *nsxSvcKey, v *nsxSvcVal) {
			fk, ok := key(addrOf(k.Vip), k.Port, k.Proto)
			fn(fk, svcValOf4(v), ok)
		})
	}
	if err != nil {
		return fmt.Errorf("read %s services map: %w", f.name(), err)
	}
	return nil
}

// putBackends writes slots[i] = eps[i] of service id: one batch when the
// kernel takes it, else one by one. It returns how many it wrote.
func (f *family) putBackends(id uint32, slots []uint32, eps []netip.AddrPort) (int, error) {
	if len(slots) == 0 {
		return 0, nil
	}
	keys := make([]nsxBeKey, len(slots))
	for i, s := range slots {
		keys[i] = nsxBeKey{SvcId: id, Slot: s}
	}
	var vals any
	var put func(i int) error
	if f.v6 {
		vs := make([]nsxBe6Val, len(eps))
		for i, e := range eps {
			vs[i] = nsxBe6Val{Ip: be128(e.Addr()), Port: be16(e.Port())}
		}
		vals, put = vs, func(i int) error { return f.backends.Put(keys[i], vs[i]) }
	} else {
		vs := make([]nsxBeVal, len(eps))
		for i, e := range eps {
			vs[i] = nsxBeVal{Ip: be32(e.Addr()), Port: be16(e.Port())}
		}
		vals, put = vs, func(i int) error { return f.backends.Put(keys[i], vs[i]) }
	}
	if len(keys) > 1 {
		if n, err := f.backends.BatchUpdate(keys, vals, nil); err == nil {
			return n, nil
		}
	}
	for i := range keys {
		if err := put(i); err != nil {
			return i, fmt.Errorf("%s backends map: %w", f.name(), err)
		}
	}
	return len(keys), nil
}

func (f *family) deleteBackend(id, slot uint32) error {
	if err := f.backends.Delete(nsxBeKey{SvcId: id, Slot: slot}); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("%s backends map: %w", f.name(), err)
	}
	return nil
}

func (f *family) lookupBackend(id, slot uint32) (netip.AddrPort, error) {
	k := nsxBeKey{SvcId: id, Slot: slot}
	if f.v6 {
		var v nsxBe6Val
		if err := f.backends.Lookup(k, &v); err != nil {
			return netip.AddrPort{}, err
		}
		return ap6(v.Ip, v.Port), nil
	}
	var v nsxBeVal
	if err := f.backends.Lookup(k, &v); err != nil {
		return netip.AddrPort{}, err
	}
	return ap4(v.Ip, v.Port), nil
}

// rangeKey is the LPM key of a source range of service id: 32 bits of id,
// then the prefix.
func (f *family) rangeKey(id uint32, p netip.Prefix) any {
	if f.v6 {
		return nsxRange6Key{Prefixlen: 32 + uint32(p.Bits()), SvcId: id, Ip: be128(p.Masked().Addr())}
	}
	return nsxRangeKey{Prefixlen: 32 + uint32(p.Bits()), SvcId: id, Ip: be32(p.Masked().Addr())}
}

func (f *family) putRange(id uint32, p netip.Prefix) error {
	if err := f.ranges.Put(f.rangeKey(id, p), uint8(1)); err != nil {
		return fmt.Errorf("%s source ranges map: %w", f.name(), err)
	}
	return nil
}

func (f *family) deleteRange(id uint32, p netip.Prefix) error {
	if err := f.ranges.Delete(f.rangeKey(id, p)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("%s source ranges map: %w", f.name(), err)
	}
	return nil
}

func (f *family) eachRange(fn func(id uint32, p netip.Prefix)) error {
	var err error
	if f.v6 {
		err = iterate(f.ranges, func(k *nsxRange6Key, _ *uint8) {
			fn(k.SvcId, netip.PrefixFrom(netip.AddrFrom16(k.Ip), int(k.Prefixlen)-32))
		})
	} else {
		err = iterate(f.ranges, func(k *nsxRangeKey, _ *uint8) {
			fn(k.SvcId, netip.PrefixFrom(addrOf(k.Ip), int(k.Prefixlen)-32))
		})
	}
	if err != nil {
		return fmt.Errorf("read %s source ranges map: %w", f.name(), err)
	}
	return nil
}

func (f *family) memberKey(id uint32, e netip.AddrPort) any {
	if f.v6 {
		return nsxMember6Key{SvcId: id, Ip: be128(e.Addr()), Port: be16(e.Port())}
	}
	return nsxMemberKey{SvcId: id, Ip: be32(e.Addr()), Port: be16(e.Port())}
}

func (f *family) putMember(id uint32, e netip.AddrPort) error {
	if err := f.members.Put(f.memberKey(id, e), uint8(1)); err != nil {
		return fmt.Errorf("%s affinity members map: %w", f.name(), err)
	}
	return nil
}

func (f *family) deleteMember(id uint32, e netip.AddrPort) error {
	if err := f.members.Delete(f.memberKey(id, e)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("%s affinity members map: %w", f.name(), err)
	}
	return nil
}

func (f *family) eachMember(fn func(id uint32, e netip.AddrPort)) error {
	var err error
	if f.v6 {
		err = iterate(f.members, func(k *nsxMember6Key, _ *uint8) { fn(k.SvcId, ap6(k.Ip, k.Port)) })
	} else {
		err = iterate(f.members, func(k *nsxMemberKey, _ *uint8) { fn(k.SvcId, ap4(k.Ip, k.Port)) })
	}
	if err != nil {
		return fmt.Errorf("read %s affinity members map: %w", f.name(), err)
	}
	return nil
}

// flushUDP deletes the UDP conntrack entries of service id whose backend
// is in gone (forward entries by their value, the others by their
// source). It returns how many it deleted.
func (f *family) flushUDP(id uint32, gone map[netip.AddrPort]bool) int {
	var stale []any
	_ = f.eachConn(func(c ctEntry) { // a failed read leaves the rest to the LRU
		if c.proto != dataplane.ProtoUDP || c.svcID != id {
			return
		}
		if (c.dir == ctDirFwd && gone[c.ip]) || (c.dir != ctDirFwd && gone[c.src]) {
			stale = append(stale, c.rawKey)
		}
	})
	n := 0
	for _, k := range stale {
		if f.conntrack.Delete(k) == nil {
			n++
		}
	}
	return n
}

// ctKey is the conntrack key of a packet src -> dst in direction dir.
func (f *family) ctKey(src, dst netip.AddrPort, proto, dir uint8) any {
	if f.v6 {
		return nsxCt6Key{Src: be128(src.Addr()), Dst: be128(dst.Addr()), Sport: be16(src.Port()), Dport: be16(dst.Port()), Proto: proto, Dir: dir}
	}
	return nsxCtKey{Src: be32(src.Addr()), Dst: be32(dst.Addr()), Sport: be16(src.Port()), Dport: be16(dst.Port()), Proto: proto, Dir: dir}
}

// hasConn says whether the conntrack map holds the entry.
func (f *family) hasConn(src, dst netip.AddrPort, proto, dir uint8) bool {
	var raw []byte
	return f.conntrack.Lookup(f.ctKey(src, dst, proto, dir), &raw) == nil
}

func (f *family) deleteConn(src, dst netip.AddrPort, proto, dir uint8) error {
	if err := f.conntrack.Delete(f.ctKey(src, dst, proto, dir)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("%s conntrack map: %w", f.name(), err)
	}
	return nil
}

// lookupService reads a frontend's service entry.
func (f *family) lookupService(k dataplane.FrontendKey) (svcVal, bool) {
	if f.v6 {
		var v nsxSvc6Val
		if f.services.Lookup(f.svcKey(k), &v) != nil {
			return svcVal{}, false
		}
		return svcValOf6(&v), true
	}
	var v nsxSvcVal
	if f.services.Lookup(f.svcKey(k), &v) != nil {
		return svcVal{}, false
	}
	return svcValOf4(&v), true
}

func (f *family) affKey(client netip.Addr, id uint32) any {
	if f.v6 {
		return nsxAff6Key{Client: be128(client), SvcId: id}
	}
	return nsxAffKey{Client: be32(client), SvcId: id}
}

// lookupAffinity is the backend a client is affined to for service id.
func (f *family) lookupAffinity(client netip.Addr, id uint32) (netip.AddrPort, bool) {
	if f.v6 {
		var v nsxAff6Val
		if f.affinity.Lookup(f.affKey(client, id), &v) != nil {
			return netip.AddrPort{}, false
		}
		return ap6(v.Ip, v.Port), true
	}
	var v nsxAffVal
	if f.affinity.Lookup(f.affKey(client, id), &v) != nil {
		return netip.AddrPort{}, false
	}
	return ap4(v.Ip, v.Port), true
}

func (f *family) deleteAffinity(client netip.Addr, id uint32) error {
	if err := f.affinity.Delete(f.affKey(client, id)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("%s affinity map: %w", f.name(), err)
	}
	return nil
}

// ctVal is a plain conntrack value: the address a packet is NATed to (the
// backend of a forward entry, the frontend of a reverse one) and the
// service id.
func (f *family) ctVal(to netip.AddrPort, id uint32) any {
	if f.v6 {
		return nsxCt6Val{Ip: be128(to.Addr()), Port: be16(to.Port()), SvcId: id}
	}
	return nsxCtVal{Ip: be32(to.Addr()), Port: be16(to.Port()), SvcId: id}
}
