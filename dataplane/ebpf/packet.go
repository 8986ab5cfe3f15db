package ebpf

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
	"net/netip"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
)

// The test packets trace runs through the live program (and the unit tests
// through a loaded one): Ethernet, IPv4 or IPv6 (by the addresses), then
// TCP, UDP or SCTP, checksums right.

// TCP flags of a built packet.
const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpACK = 0x10
)

// buildPacket builds eth + IPv4 (IPv6) + TCP (with the options a real SYN has) or
// UDP (a small payload).
func buildPacket(proto uint8, src, dst netip.Addr, sport, dport uint16, tcpFlags uint8) []byte {
	var l4 []byte
	if proto == protoTCP {
		l4 = make([]byte, 32) // 20 + 12 bytes of options
		binary.BigEndian.PutUint16(l4[0:], sport)
		binary.BigEndian.PutUint16(l4[2:], dport)
		binary.BigEndian.PutUint32(l4[4:], 1000)
		if tcpFlags&tcpACK != 0 {
			binary.BigEndian.PutUint32(l4[8:], 1)
		}
		l4[12] = 8 << 4
		l4[13] = tcpFlags
		binary.BigEndian.PutUint16(l4[14:], 64240)
		copy(l4[20:], []byte{2, 4, 5, 0xb4, 1, 1, 4, 2, 1, 3, 3, 7})
	} else if proto == dataplane.ProtoSCTP {
		// The common header (ports, verification tag, CRC32c), no chunk.
		l4 = make([]byte, 12)
		binary.BigEndian.PutUint16(l4[0:], sport)
		binary.BigEndian.PutUint16(l4[2:], dport)
		binary.BigEndian.PutUint32(l4[4:], 0x1234abcd)
	} else {
		l4 = make([]byte, 12)
		binary.BigEndian.PutUint16(l4[0:], sport)
		binary.BigEndian.PutUint16(l4[2:], dport)
		binary.BigEndian.PutUint16(l4[4:], uint16(len(l4)))
		copy(l4[8:], "ping")
	}
	var ip []byte
	ethType := byte(0x00)
	if src.Is6() {
		ip = make([]byte, 40)
		ip[0], ip[6], ip[7] = 0x60, proto, 64
		binary.BigEndian.PutUint16(ip[4:], uint16(len(l4)))
		s16, d16 := src.As16(), dst.As16()
		copy(ip[8:], s16[:])
		copy(ip[24:], d16[:])
		ethType = 0xdd
	} else {
		ip = make([]byte, 20)
		ip[0], ip[8], ip[9] = 0x45, 64, proto
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(l4)))
		s4, d4 := src.As4(), dst.As4()
		copy(ip[12:], s4[:])
		copy(ip[16:], d4[:])
		binary.BigEndian.PutUint16(ip[10:], dataplane.Checksum(ip, 0))
	}
	switch proto {
	case protoTCP:
		binary.BigEndian.PutUint16(l4[16:], l4csum(ip, l4))
	case dataplane.ProtoSCTP:
		binary.LittleEndian.PutUint32(l4[8:], sctpCRC(l4))
	default:
		binary.BigEndian.PutUint16(l4[6:], l4csum(ip, l4))
	}
	eth := []byte{2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 8, 0}
	if src.Is6() {
		eth[12], eth[13] = 0x86, ethType
	}
	return append(append(eth, ip...), l4...)
}

// sctpCRC is the CRC32c of an SCTP packet (RFC 9260 appendix A) with its
// checksum field taken as zero, to be stored little-endian as the kernel
// does.
func sctpCRC(l4 []byte) uint32 {
	c := crc32.Update(0, castagnoli, l4[:8])
	c = crc32.Update(c, castagnoli, []byte{0, 0, 0, 0})
	return crc32.Update(c, castagnoli, l4[12:])
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// l4csum is the checksum of l4 under the pseudo-header of ip (IPv4 or
// IPv6, no extension headers).
func l4csum(ip, l4 []byte) uint16 {
	if ip[0]>>4 == 6 {
		return dataplane.Checksum(l4, dataplane.PseudoHeaderSum(ip[8:24], ip[24:40], ip[6], len(l4)))
	}
	return dataplane.Checksum(l4, dataplane.PseudoHeaderSum(ip[12:16], ip[16:20], ip[9], len(l4)))
}

// packetInfo is a packet read back.
type packetInfo struct {
	src, dst     netip.Addr
	sport, dport uint16
	proto        uint8
	tcpFlags     uint8
	ack          uint32
	icmpType     uint8
	ipOK, l4OK   bool // checksums
	l4           []byte
}

func parsePacket(b []byte) (packetInfo, error) {
	if len(b) >= 14+40 && b[12] == 0x86 && b[13] == 0xdd {
		ip := b[14:]
		total := 40 + int(binary.BigEndian.Uint16(ip[4:]))
		if ip[0]>>4 != 6 || total > len(ip) {
			return packetInfo{}, errors.New("malformed IPv6 header")
		}
		p := packetInfo{src: netip.AddrFrom16([16]byte(ip[8:24])), dst: netip.AddrFrom16([16]byte(ip[24:40])), proto: ip[6],
			l4: ip[40:total], ipOK: true}
		return parseL4(p, ip[:40])
	}
	if len(b) < 14+20 {
		return packetInfo{}, errors.New("packet shorter than Ethernet and IPv4 headers")
	}
	ip := b[14:]
	ihl := int(ip[0]&15) * 4
	total := int(binary.BigEndian.Uint16(ip[2:]))
	if ihl < 20 || total < ihl || total > len(ip) {
		return packetInfo{}, errors.New("malformed IPv4 header")
	}
	l4 := ip[ihl:total]
	p := packetInfo{src: netip.AddrFrom4([4]byte(ip[12:16])), dst: netip.AddrFrom4([4]byte(ip[16:20])), proto: ip[9], l4: l4}
	p.ipOK = dataplane.Checksum(ip[:ihl], 0) == 0
	return parseL4(p, ip[:ihl])
}

// parseL4 reads p.l4 (of the IP header ip).
func parseL4(p packetInfo, ip []byte) (packetInfo, error) {
	l4 := p.l4
	switch p.proto {
	case protoTCP, protoUDP:
		if len(l4) < 8 {
			return packetInfo{}, errors.New("truncated L4 header")
		}
		p.sport, p.dport = binary.BigEndian.Uint16(l4[0:]), binary.BigEndian.Uint16(l4[2:])
		p.l4OK = l4csum(ip, l4) == 0
		if p.proto == protoTCP {
			if len(l4) < 20 {
				return packetInfo{}, errors.New("truncated TCP header")
			}
			p.tcpFlags = l4[13]
			p.ack = binary.BigEndian.Uint32(l4[8:])
		}
	case dataplane.ProtoSCTP:
		if len(l4) < 12 {
			return packetInfo{}, errors.New("truncated SCTP header")
		}
		p.sport, p.dport = binary.BigEndian.Uint16(l4[0:]), binary.BigEndian.Uint16(l4[2:])
		p.l4OK = binary.LittleEndian.Uint32(l4[8:]) == sctpCRC(l4)
	case protoICMP:
		if len(l4) < 8 {
			return packetInfo{}, errors.New("truncated ICMP header")
		}
		p.icmpType = l4[0]
		p.l4OK = dataplane.Checksum(l4, 0) == 0
	case protoICMPv6:
		if len(l4) < 8 {
			return packetInfo{}, errors.New("truncated ICMPv6 header")
		}
		p.icmpType = l4[0]
		p.l4OK = l4csum(ip, l4) == 0
	}
	return p, nil
}
