package dataplane

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// What both dataplanes need beyond the model: frontend ids, protocol
// numbers, and which endpoints left a frontend.

// IDs hands out the small integer id of each frontend (the OVS dataplane's
// group ids and cookies, the eBPF dataplane's backend-slot keys). An id
// stays with its frontend until released, ids adopted from what an earlier
// process installed are kept, and a released id is reused only after every
// other free one (ids cycle), so a stale reference to it is unlikely to
// meet a new frontend at once. Not safe for concurrent use: each backend
// holds its own under its lock.
type IDs struct {
	max  uint32
	ids  map[FrontendKey]uint32
	used map[uint32]bool
	next uint32
}

// ErrNoIDs is Assign with every id in use.
var ErrNoIDs = errors.New("out of frontend ids")

// NewIDs hands out 1..max.
func NewIDs(max uint32) *IDs {
	return &IDs{max: max, ids: map[FrontendKey]uint32{}, used: map[uint32]bool{}}
}

// Get is k's id, if it has one.
func (a *IDs) Get(k FrontendKey) (uint32, bool) {
	id, ok := a.ids[k]
	return id, ok
}

// Assign is k's id, giving it the next free one if it has none.
func (a *IDs) Assign(k FrontendKey) (uint32, error) {
	if id, ok := a.ids[k]; ok {
		return id, nil
	}
	for range a.max {
		a.next = a.next%a.max + 1
		if !a.used[a.next] {
			a.ids[k], a.used[a.next] = a.next, true
			return a.next, nil
		}
	}
	return 0, fmt.Errorf("frontend %s: %w (%d)", k, ErrNoIDs, a.max)
}

// Adopt gives k the id an earlier process gave it. It refuses (false) an id
// out of range or already taken, and a k that has an id.
func (a *IDs) Adopt(k FrontendKey, id uint32) bool {
	if id == 0 || id > a.max || a.used[id] {
		return false
	}
	if _, ok := a.ids[k]; ok {
		return false
	}
	a.ids[k], a.used[id] = id, true
	if id > a.next {
		a.next = id
	}
	return true
}

// Release frees k's id.
func (a *IDs) Release(k FrontendKey) {
	if id, ok := a.ids[k]; ok {
		delete(a.used, id)
		delete(a.ids, k)
	}
}

// InUse says whether id belongs to a frontend.
func (a *IDs) InUse(id uint32) bool { return a.used[id] }

// Keys are the frontends that hold an id.
func (a *IDs) Keys() []FrontendKey {
	out := make([]FrontendKey, 0, len(a.ids))
	for k := range a.ids {
		out = append(out, k)
	}
	return out
}

// IP protocol numbers.
const (
	ProtoTCP  uint8 = 6
	ProtoUDP  uint8 = 17
	ProtoSCTP uint8 = 132
)

// Number is p's IP protocol number (0 for an unknown protocol).
func (p Protocol) Number() uint8 {
	switch p {
	case TCP:
		return ProtoTCP
	case UDP:
		return ProtoUDP
	case SCTP:
		return ProtoSCTP
	}
	return 0
}

// ProtocolOf is the Protocol of an IP protocol number; false for one no
// Service uses.
func ProtocolOf(n uint8) (Protocol, bool) {
	switch n {
	case ProtoTCP:
		return TCP, true
	case ProtoUDP:
		return UDP, true
	case ProtoSCTP:
		return SCTP, true
	}
	return "", false
}

// GoneEndpoints are the endpoints of old that are not in cur (nil cur:
// the frontend is removed). A UDP frontend's dataplane flushes their
// conntrack entries: UDP has no end of connection, so a client would keep
// sending to an endpoint that left.
func GoneEndpoints(old, cur []netip.AddrPort) []netip.AddrPort {
	keep := make(map[netip.AddrPort]bool, len(cur))
	for _, e := range cur {
		keep[e] = true
	}
	var out []netip.AddrPort
	for _, e := range old {
		if !keep[e] {
			keep[e] = true // once
			out = append(out, e)
		}
	}
	return out
}

// EndpointAddrs are f's endpoints as address:port (nil for a nil f).
func EndpointAddrs(f *Frontend) []netip.AddrPort {
	if f == nil {
		return nil
	}
	out := make([]netip.AddrPort, len(f.Endpoints))
	for i, e := range f.Endpoints {
		out[i] = e.AddrPort()
	}
	return out
}

// Conn is one established Service connection as a dataplane NATed it: the
// client reached Frontend and was sent to Backend. A dataplane taking over
// from the other one adopts these, so they keep their backend.
type Conn struct {
	Frontend FrontendKey
	Client   netip.AddrPort
	Backend  netip.AddrPort
}

// Compare orders frontend keys by address, port, then protocol: the order
// listings and id allocation use.
func (k FrontendKey) Compare(o FrontendKey) int {
	if c := k.IP.Compare(o.IP); c != 0 {
		return c
	}
	if k.Port != o.Port {
		return int(k.Port) - int(o.Port)
	}
	return strings.Compare(string(k.Protocol), string(o.Protocol))
}

// Checksum is the Internet checksum (RFC 1071) of data, starting from
// initial (a pseudo-header's sum, or 0): for the packets nsx-ujo builds
// itself (the OVS reject responder's answers, nsxctl's traced packets).
func Checksum(data []byte, initial uint32) uint16 {
	s := initial
	for i := 0; i+1 < len(data); i += 2 {
		s += uint32(binary.BigEndian.Uint16(data[i:]))
	}
	if len(data)%2 == 1 {
		s += uint32(data[len(data)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

// PseudoHeaderSum is the sum of the TCP/UDP/ICMPv6 pseudo-header of an
// IPv4 or IPv6 packet (addresses src and dst, 4 or 16 bytes each), to
// start Checksum with.
func PseudoHeaderSum(src, dst []byte, proto uint8, length int) uint32 {
	var s uint32
	for _, a := range [][]byte{src, dst} {
		for i := 0; i+1 < len(a); i += 2 {
			s += uint32(binary.BigEndian.Uint16(a[i:]))
		}
	}
	return s + uint32(proto) + uint32(length)
}
