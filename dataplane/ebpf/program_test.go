package ebpf

import (
	"bytes"
	"net/netip"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
	"github.com/nsx-ujo/nsx-ujo/tests/harness"
)

const (
	svcAffinity = flagAffinity
	svcDrop     = flagDrop
)

var (
	clientIP = netip.MustParseAddr("10.0.1.50")
	vip      = netip.MustParseAddr("10.96.0.10")
	backend1 = netip.MustParseAddr("10.0.2.20")
	backend2 = netip.MustParseAddr("10.0.2.21")
)

// packet builds eth + IPv4 + TCP (SYN, with options) or UDP.
func packet(proto uint8, src, dst netip.Addr, sport, dport uint16, tcpFlags uint8) []byte {
	return buildPacket(proto, src, dst, sport, dport, tcpFlags)
}

type parsed = packetInfo

func parse(t *testing.T, b []byte) parsed {
	t.Helper()
	p, err := parsePacket(b)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func load(t *testing.T) *Objects {
	t.Helper()
	harness.RequireRoot(t) // loading programs needs CAP_BPF
	o, err := Load(LoadOptions{Sizes: MapSizes{Services: 64, Backends: 4096, Conntrack: 1024, Affinity: 64}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.Close() })
	return o
}

func addService(t *testing.T, o *Objects, proto uint8, port uint16, id uint32, flags uint16, backends ...netip.AddrPort) {
	t.Helper()
	for i, b := range backends {
		if err := o.NsxBackends.Put(nsxBeKey{SvcId: id, Slot: uint32(i)}, nsxBeVal{Ip: be32(b.Addr()), Port: be16(b.Port())}); err != nil {
			t.Fatal(err)
		}
		if flags&svcAffinity != 0 {
			if err := o.NsxMembers.Put(nsxMemberKey{SvcId: id, Ip: be32(b.Addr()), Port: be16(b.Port())}, uint8(1)); err != nil {
				t.Fatal(err)
			}
		}
	}
	v := nsxSvcVal{Id: id, Count: uint16(len(backends)), Flags: flags, AffinitySec: 60}
	if err := o.NsxServices.Put(nsxSvcKey{Vip: be32(vip), Port: be16(port), Proto: proto}, v); err != nil {
		t.Fatal(err)
	}
}

func runOut(t *testing.T, prog *ebpf.Program, pkt []byte) (uint32, []byte) {
	t.Helper()
	opts := &ebpf.RunOptions{Data: pkt, DataOut: make([]byte, 1500)}
	ret, err := prog.Run(opts)
	if err != nil {
		t.Fatal(err)
	}
	return ret, opts.DataOut
}

func TestDNATAndReverseNAT(t *testing.T) {
	o := load(t)
	addService(t, o, protoTCP, 80, 1, 0, netip.AddrPortFrom(backend1, 8080))
	syn := packet(protoTCP, clientIP, vip, 40000, 80, 0x02)
	ret, out := runOut(t, o.NsxEgress, syn)
	if ret != tcxPass {
		t.Fatalf("egress SYN: ret %d, want TCX_PASS", int32(ret))
	}
	p := parse(t, out)
	if p.dst != backend1 || p.dport != 8080 || p.src != clientIP || p.sport != 40000 {
		t.Fatalf("DNAT: %s:%d -> %s:%d", p.src, p.sport, p.dst, p.dport)
	}
	if !p.ipOK || !p.l4OK {
		t.Fatalf("checksums after DNAT: ip %v, tcp %v", p.ipOK, p.l4OK)
	}
	// The SYN-ACK from the backend comes back with the VIP as source.
	synack := packet(protoTCP, backend1, clientIP, 8080, 40000, 0x12)
	ret, out = runOut(t, o.NsxIngress, synack)
	p = parse(t, out)
	if ret != tcxPass || p.src != vip || p.sport != 80 || !p.ipOK || !p.l4OK {
		t.Fatalf("reverse NAT: ret %d, %s:%d -> %s:%d, ip %v tcp %v", int32(ret), p.src, p.sport, p.dst, p.dport, p.ipOK, p.l4OK)
	}
	// Established packets follow conntrack even after the service changes.
	addService(t, o, protoTCP, 80, 1, 0, netip.AddrPortFrom(backend2, 8080))
	ret, out = runOut(t, o.NsxEgress, packet(protoTCP, clientIP, vip, 40000, 80, 0x10))
	if p := parse(t, out); ret != tcxPass || p.dst != backend1 {
		t.Fatalf("established packet went to %s, want %s", p.dst, backend1)
	}
}

func TestPortReuseAfterServiceConnection(t *testing.T) {
	o := load(t)
	addService(t, o, protoTCP, 80, 1, 0, netip.AddrPortFrom(backend1, 8080))
	// A connection through the VIP from port 40000 ...
	if ret, _ := runOut(t, o.NsxEgress, packet(protoTCP, clientIP, vip, 40000, 80, 0x02)); ret != tcxPass {
		t.Fatal(ret)
	}
	// ... later a direct one to the backend from the same port: its
	// SYN-ACK must reach the pod as from the backend, not the VIP.
	if ret, _ := runOut(t, o.NsxEgress, packet(protoTCP, clientIP, backend1, 40000, 8080, 0x02)); ret != tcxNext {
		t.Fatalf("direct SYN: ret %d", int32(ret))
	}
	ret, out := runOut(t, o.NsxIngress, packet(protoTCP, backend1, clientIP, 8080, 40000, 0x12))
	if p := parse(t, out); ret != tcxNext || p.src != backend1 {
		t.Fatalf("direct SYN-ACK: ret %d, source %s", int32(ret), p.src)
	}
	// And a new SYN to the VIP from a reused port (a new connection: its
	// own initial sequence number) picks afresh (here the only backend
	// changed).
	addService(t, o, protoTCP, 80, 1, 0, netip.AddrPortFrom(backend2, 8080))
	ret, out = runOut(t, o.NsxEgress, withSeq(packet(protoTCP, clientIP, vip, 40000, 80, 0x02), 7000))
	if p := parse(t, out); ret != tcxPass || p.dst != backend2 {
		t.Fatalf("new SYN with reused port went to %s", p.dst)
	}
}

func TestNotOursIsUntouched(t *testing.T) {
	o := load(t)
	addService(t, o, protoTCP, 80, 1, 0, netip.AddrPortFrom(backend1, 8080))
	for _, pkt := range [][]byte{
		packet(protoTCP, clientIP, backend2, 40000, 80, 0x02), // not a VIP
		packet(protoTCP, clientIP, vip, 40000, 81, 0x02),      // VIP, other port
		packet(protoUDP, clientIP, vip, 40000, 80, 0),         // VIP, other protocol
	} {
		ret, out := runOut(t, o.NsxEgress, pkt)
		if ret != tcxNext || string(out[:len(pkt)]) != string(pkt) {
			t.Fatalf("egress of a non-service packet: ret %d, changed %v", int32(ret), string(out[:len(pkt)]) != string(pkt))
		}
		ret, _ = runOut(t, o.NsxIngress, pkt)
		if ret != tcxNext {
			t.Fatalf("ingress of a non-service packet: ret %d", int32(ret))
		}
	}
}

func TestUDPChecksumAndAffinity(t *testing.T) {
	o := load(t)
	addService(t, o, protoUDP, 53, 2, svcAffinity, netip.AddrPortFrom(backend1, 5353), netip.AddrPortFrom(backend2, 5353))
	first := netip.Addr{}
	for sport := uint16(30000); sport < 30020; sport++ {
		ret, out := runOut(t, o.NsxEgress, packet(protoUDP, clientIP, vip, sport, 53, 0))
		p := parse(t, out)
		if ret != tcxPass || !p.ipOK || !p.l4OK || p.dport != 5353 {
			t.Fatalf("UDP DNAT: ret %d, ip %v udp %v port %d", int32(ret), p.ipOK, p.l4OK, p.dport)
		}
		if !first.IsValid() {
			first = p.dst
		} else if p.dst != first {
			t.Fatalf("affinity broken: %s then %s", first, p.dst)
		}
	}
}

// Affinity sticks to a backend whatever its slot among thousands, and
// lets go of one that left the service.
func TestAffinityWithThousandsOfBackends(t *testing.T) {
	o := load(t)
	var backends []netip.AddrPort
	for i := 0; i < 3000; i++ {
		backends = append(backends, netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 200, byte(i >> 8), byte(i)}), 8080))
	}
	addService(t, o, protoTCP, 80, 9, svcAffinity, backends...)
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	affined := backends[2900]
	ak := nsxAffKey{Client: be32(clientIP), SvcId: 9}
	if err := o.NsxAffinity.Put(ak, nsxAffVal{Ip: be32(affined.Addr()), Port: be16(affined.Port()), LastNs: uint64(ts.Nano())}); err != nil {
		t.Fatal(err)
	}
	for sport := uint16(41000); sport < 41010; sport++ {
		_, out := runOut(t, o.NsxEgress, packet(protoTCP, clientIP, vip, sport, 80, 0x02))
		if p := parse(t, out); p.dst != affined.Addr() {
			t.Fatalf("connection from port %d went to %s, want the affined backend %s (slot 2900)", sport, p.dst, affined.Addr())
		}
	}
	// The backend leaves, as Sync removes one: no longer a member, the
	// last slot moved into its place, the count one less. The next
	// connection picks another and is affined to it.
	if err := o.NsxMembers.Delete(nsxMemberKey{SvcId: 9, Ip: be32(affined.Addr()), Port: be16(affined.Port())}); err != nil {
		t.Fatal(err)
	}
	last := backends[len(backends)-1]
	if err := o.NsxBackends.Put(nsxBeKey{SvcId: 9, Slot: 2900}, nsxBeVal{Ip: be32(last.Addr()), Port: be16(last.Port())}); err != nil {
		t.Fatal(err)
	}
	if err := o.NsxBackends.Delete(nsxBeKey{SvcId: 9, Slot: uint32(len(backends) - 1)}); err != nil {
		t.Fatal(err)
	}
	if err := o.NsxServices.Put(nsxSvcKey{Vip: be32(vip), Port: be16(80), Proto: protoTCP},
		nsxSvcVal{Id: 9, Count: uint16(len(backends) - 1), Flags: svcAffinity, AffinitySec: 60}); err != nil {
		t.Fatal(err)
	}
	_, out := runOut(t, o.NsxEgress, packet(protoTCP, clientIP, vip, 41100, 80, 0x02))
	var av nsxAffVal
	if p := parse(t, out); p.dst == affined.Addr() {
		t.Fatal("a connection went to a backend that left the service")
	} else if err := o.NsxAffinity.Lookup(ak, &av); err != nil || addrOf(av.Ip) != p.dst {
		t.Fatalf("affinity after the backend left: %v, %v; want %s", addrOf(av.Ip), err, p.dst)
	}
}

// During a take-over from OVS, a mid-stream TCP packet without a
// conntrack entry (a connection OVS NATed) passes on untouched; a SYN is
// balanced; once the take-over ends, mid-stream packets are balanced again.
func TestHandoverLeavesOVSConnectionsToOVS(t *testing.T) {
	o := load(t)
	addService(t, o, protoTCP, 80, 10, 0, netip.AddrPortFrom(backend1, 8080))
	b := &Backend{objs: o}
	if err := b.SetHandover(true); err != nil {
		t.Fatal(err)
	}
	if ret, out := runOut(t, o.NsxEgress, packet(protoTCP, clientIP, vip, 42000, 80, 0x10)); ret != tcxNext || parse(t, out).dst != vip {
		t.Fatalf("mid-stream packet during the take-over: ret %d, dst %s; want it passed on to OVS untouched", int32(ret), parse(t, out).dst)
	}
	if ret, out := runOut(t, o.NsxEgress, packet(protoTCP, clientIP, vip, 42001, 80, 0x02)); ret != tcxPass || parse(t, out).dst != backend1 {
		t.Fatalf("SYN during the take-over: ret %d, dst %s; want it NATed", int32(ret), parse(t, out).dst)
	}
	if err := b.SetHandover(false); err != nil {
		t.Fatal(err)
	}
	if ret, out := runOut(t, o.NsxEgress, packet(protoTCP, clientIP, vip, 42002, 80, 0x10)); ret != tcxPass || parse(t, out).dst != backend1 {
		t.Fatalf("mid-stream packet after the take-over: ret %d, dst %s; want it NATed", int32(ret), parse(t, out).dst)
	}
}

// Adoption from OVS carries a pod's connection to a ClusterIP on to its
// backend, and leaves hairpin connections, external frontends' and ports
// eBPF already has a connection on alone.
func TestAdoptConnections(t *testing.T) {
	o := load(t)
	cip := dataplane.FrontendKey{IP: vip, Port: 80, Protocol: dataplane.TCP}
	np := dataplane.FrontendKey{IP: netip.MustParseAddr("10.0.100.2"), Port: 30080, Protocol: dataplane.TCP}
	b := &Backend{objs: o, installed: map[dataplane.FrontendKey]*installedSvc{
		cip: {src: &dataplane.Frontend{Key: cip, Kind: dataplane.ClusterIP}, val: svcVal{Id: 12}},
		np:  {src: &dataplane.Frontend{Key: np, Kind: dataplane.NodePort}, val: svcVal{Id: 13}},
	}}
	be := netip.AddrPortFrom(backend1, 8080)
	taken := dataplane.Conn{Frontend: cip, Client: netip.AddrPortFrom(clientIP, 44002), Backend: netip.AddrPortFrom(backend2, 8080)}
	if _, err := b.AdoptConnections([]dataplane.Conn{taken}); err != nil {
		t.Fatal(err)
	}
	taken.Backend = be // since then: OVS's older view of those ports
	n, err := b.AdoptConnections([]dataplane.Conn{
		{Frontend: cip, Client: netip.AddrPortFrom(clientIP, 44000), Backend: be},
		{Frontend: cip, Client: netip.AddrPortFrom(backend1, 44001), Backend: be}, // hairpin
		{Frontend: np, Client: netip.MustParseAddrPort("192.168.50.2:44003"), Backend: be},
		taken,
	})
	if err != nil || n != 1 {
		t.Fatalf("adopted %d (%v), want only the pod's connection to the ClusterIP", n, err)
	}
	// Its mid-stream packet goes to the adopted backend; the one on ports
	// eBPF already had keeps its own.
	if _, out := runOut(t, o.NsxEgress, packet(protoTCP, clientIP, vip, 44000, 80, 0x10)); parse(t, out).dst != backend1 {
		t.Fatalf("adopted connection went to %s, want %s", parse(t, out).dst, backend1)
	}
	if _, out := runOut(t, o.NsxEgress, packet(protoTCP, clientIP, vip, 44002, 80, 0x10)); parse(t, out).dst != backend2 {
		t.Fatalf("a connection eBPF had went to %s after the adoption, want %s", parse(t, out).dst, backend2)
	}
}

// Draining to OVS (the frontend is gone from the services map): a SYN
// passes on, and the next packets of its connection are not NATed by the
// forward entry a closed connection on the same ports left.
func TestDrainedSYNClearsAStaleEntry(t *testing.T) {
	o := load(t)
	addService(t, o, protoTCP, 80, 11, 0, netip.AddrPortFrom(backend1, 8080))
	runOut(t, o.NsxEgress, packet(protoTCP, clientIP, vip, 43000, 80, 0x02)) // an earlier connection's SYN
	if err := o.NsxServices.Delete(nsxSvcKey{Vip: be32(vip), Port: be16(80), Proto: protoTCP}); err != nil {
		t.Fatal(err)
	}
	if ret, out := runOut(t, o.NsxEgress, withSeq(packet(protoTCP, clientIP, vip, 43000, 80, 0x02), 7000)); ret != tcxNext || parse(t, out).dst != vip {
		t.Fatalf("SYN of a drained frontend: ret %d, dst %s; want it passed on untouched", int32(ret), parse(t, out).dst)
	}
	if ret, out := runOut(t, o.NsxEgress, packet(protoTCP, clientIP, vip, 43000, 80, 0x10)); ret != tcxNext || parse(t, out).dst != vip {
		t.Fatalf("the next packet: ret %d, dst %s; want it passed on untouched, not NATed by the stale entry", int32(ret), parse(t, out).dst)
	}
}

func TestNoBackends(t *testing.T) {
	o := load(t)
	addService(t, o, protoTCP, 80, 3, 0)
	addService(t, o, protoUDP, 53, 4, 0)
	addService(t, o, protoTCP, 443, 5, svcDrop)

	ret, out := runOut(t, o.NsxEgress, packet(protoTCP, clientIP, vip, 40001, 80, 0x02))
	p := parse(t, out)
	if ret != tcRedirect || p.proto != protoTCP || p.tcpFlags != 0x14 || p.src != vip || p.sport != 80 || p.dst != clientIP ||
		p.dport != 40001 || p.ack != 1001 || !p.ipOK || !p.l4OK {
		t.Fatalf("TCP reject: ret %d, %+v", int32(ret), p)
	}
	ret, out = runOut(t, o.NsxEgress, packet(protoUDP, clientIP, vip, 40002, 53, 0))
	p = parse(t, out)
	if ret != tcRedirect || p.proto != 1 || p.l4[0] != 3 || p.l4[1] != 3 || p.src != vip || p.dst != clientIP || !p.ipOK || !p.l4OK {
		t.Fatalf("UDP reject: ret %d, %+v", int32(ret), p)
	}
	if ret, _ := runOut(t, o.NsxEgress, packet(protoTCP, clientIP, vip, 40003, 443, 0x02)); ret != tcActShot {
		t.Fatalf("Local policy without endpoints: ret %d, want drop", int32(ret))
	}
}

// A pod reaching itself through a Service sees the hairpin address as the
// source: the default, or the one the loader is given (as the OVS
// dataplane's option).
func TestHairpin(t *testing.T) {
	for _, hairpin := range []netip.Addr{dataplane.DefaultHairpinIP, netip.MustParseAddr("169.254.7.7")} {
		t.Run(hairpin.String(), func(t *testing.T) {
			harness.RequireRoot(t)
			o, err := Load(LoadOptions{Sizes: MapSizes{Services: 64, Backends: 256, Conntrack: 1024, Affinity: 64}, HairpinIP: hairpin})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { o.Close() })
			addService(t, o, protoTCP, 80, 6, 0, netip.AddrPortFrom(clientIP, 8080))
			ret, out := runOut(t, o.NsxEgress, packet(protoTCP, clientIP, vip, 40004, 80, 0x02))
			p := parse(t, out)
			if ret != tcRedirect || p.dst != clientIP || p.dport != 8080 || p.src != hairpin || !p.ipOK || !p.l4OK {
				t.Fatalf("hairpin SYN: ret %d, %s:%d -> %s:%d", int32(ret), p.src, p.sport, p.dst, p.dport)
			}
			// The pod, as server, answers the hairpin address.
			ret, out = runOut(t, o.NsxEgress, packet(protoTCP, clientIP, hairpin, 8080, 40004, 0x12))
			p = parse(t, out)
			if ret != tcRedirect || p.src != vip || p.sport != 80 || p.dst != clientIP || p.dport != 40004 || !p.ipOK || !p.l4OK {
				t.Fatalf("hairpin reply: ret %d, %s:%d -> %s:%d", int32(ret), p.src, p.sport, p.dst, p.dport)
			}
		})
	}
}

func BenchmarkEgress(b *testing.B) {
	harness.RequireRoot(b)
	o, err := Load(LoadOptions{Sizes: MapSizes{Services: 64, Backends: 256, Conntrack: 1024, Affinity: 64}})
	if err != nil {
		b.Fatal(err)
	}
	defer o.Close()
	bk := nsxBeKey{SvcId: 1}
	o.NsxBackends.Put(bk, nsxBeVal{Ip: be32(backend1), Port: be16(8080)})
	o.NsxServices.Put(nsxSvcKey{Vip: be32(vip), Port: be16(80), Proto: protoTCP}, nsxSvcVal{Id: 1, Count: 1})
	fam6 := o.family(true)
	if _, err := fam6.putBackends(2, []uint32{0}, []netip.AddrPort{netip.AddrPortFrom(backend6a, 8080)}); err != nil {
		b.Fatal(err)
	}
	if err := fam6.putService(dataplane.FrontendKey{IP: vip6, Port: 80, Protocol: dataplane.TCP}, svcVal{Id: 2, Count: 1}); err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name string
		pkt  []byte
	}{
		{"hit", packet(protoTCP, clientIP, vip, 40000, 80, 0x10)},
		{"miss", packet(protoTCP, clientIP, backend2, 40000, 80, 0x10)},
		{"hit6", packet(protoTCP, client6, vip6, 40000, 80, 0x10)},
		{"miss6", packet(protoTCP, client6, backend6b, 40000, 80, 0x10)},
	} {
		b.Run(c.name, func(b *testing.B) {
			ret, d, err := o.NsxEgress.Benchmark(c.pkt, b.N, nil)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(d.Nanoseconds()), "ns/packet")
			_ = ret
		})
	}
}

// Two clients outside the node using the same source port reach one
// backend through a NodePort: the second gets another SNAT port, and each
// reply goes back to its own client with the NodePort as source.
func TestExternalSNATPortCollision(t *testing.T) {
	o := load(t)
	nodeIP := netip.MustParseAddr("10.0.100.2")
	c1, c2 := netip.MustParseAddr("192.168.50.2"), netip.MustParseAddr("192.168.50.3")
	if err := o.NsxBackends.Put(nsxBeKey{SvcId: 7}, nsxBeVal{Ip: be32(backend1), Port: be16(8080)}); err != nil {
		t.Fatal(err)
	}
	v := nsxSvcVal{Id: 7, Count: 1, Flags: flagExternal | flagRanges, SnatIp: be32(nodeIP)}
	if err := o.NsxServices.Put(nsxSvcKey{Vip: be32(nodeIP), Port: be16(30080), Proto: protoTCP}, v); err != nil {
		t.Fatal(err)
	}
	// Source range 192.168.50.0/30 holds both clients, not .4.
	if err := o.NsxRanges.Put(nsxRangeKey{Prefixlen: 32 + 30, SvcId: 7, Ip: be32(netip.MustParseAddr("192.168.50.0"))}, uint8(1)); err != nil {
		t.Fatal(err)
	}
	snat := map[netip.Addr]uint16{}
	for _, c := range []netip.Addr{c1, c2} {
		ret, out := runOut(t, o.NsxNodeIngress, packet(protoTCP, c, nodeIP, 40000, 30080, 0x02))
		p := parse(t, out)
		if ret != tcRedirect || p.src != nodeIP || p.dst != backend1 || p.dport != 8080 || !p.ipOK || !p.l4OK {
			t.Fatalf("SYN from %s: ret %d, %s:%d -> %s:%d", c, int32(ret), p.src, p.sport, p.dst, p.dport)
		}
		snat[c] = p.sport
	}
	if snat[c1] != 40000 || snat[c2] == 40000 || snat[c2] < 32768 {
		t.Fatalf("SNAT ports %v: the first client keeps its port, the second gets another one >= 32768", snat)
	}
	for _, c := range []netip.Addr{c1, c2} {
		ret, out := runOut(t, o.NsxNodeIngress, packet(protoTCP, backend1, nodeIP, 8080, snat[c], 0x12))
		p := parse(t, out)
		if ret != tcRedirect || p.src != nodeIP || p.sport != 30080 || p.dst != c || p.dport != 40000 || !p.ipOK || !p.l4OK {
			t.Fatalf("reply to %s: ret %d, %s:%d -> %s:%d", c, int32(ret), p.src, p.sport, p.dst, p.dport)
		}
	}
	if ret, _ := runOut(t, o.NsxNodeIngress, packet(protoTCP, netip.MustParseAddr("192.168.50.4"), nodeIP, 40000, 30080, 0x02)); ret != tcActShot {
		t.Fatalf("a source outside the ranges: ret %d, want drop", int32(ret))
	}
	// Pods' ingress program never serves external frontends.
	if ret, _ := runOut(t, o.NsxIngress, packet(protoTCP, c1, nodeIP, 40001, 30080, 0x02)); ret != tcxNext {
		t.Fatalf("pod ingress: ret %d, want TCX_NEXT", int32(ret))
	}
}

// sctpPacket is eth + IPv4 + an SCTP common header with a valid CRC32c,
// and the SCTP part alone.
func sctpPacket(src, dst netip.Addr, sport, dport uint16) ([]byte, []byte) {
	pkt := buildPacket(dataplane.ProtoSCTP, src, dst, sport, dport, 0)
	return pkt, slices.Clone(pkt[14+20:])
}

// TestSCTPKeepsItsCRC: SCTP's CRC32c covers its ports and not the IP
// addresses, so a DNAT to an endpoint on the same port (the only one the
// dataplanes serve, dataplane.Unservable) and its reverse leave the SCTP
// bytes as they were, and an external frontend's SNAT never moves an SCTP
// client to another port: a collision is dropped.
func TestSCTPKeepsItsCRC(t *testing.T) {
	o := load(t)
	const protoSCTP = dataplane.ProtoSCTP
	addService(t, o, protoSCTP, 3868, 1, 0, netip.AddrPortFrom(backend1, 3868))
	in, sctp := sctpPacket(clientIP, vip, 40000, 3868)
	ret, out := runOut(t, o.NsxEgress, in)
	p := parse(t, out)
	if ret != tcxPass || p.dst != backend1 || p.dport != 3868 || !p.ipOK || !p.l4OK {
		t.Fatalf("SCTP DNAT: ret %d, %s:%d -> %s:%d, ip checksum ok %v", int32(ret), p.src, p.sport, p.dst, p.dport, p.ipOK)
	}
	if got := out[14+20 : 14+20+len(sctp)]; !bytes.Equal(got, sctp) {
		t.Fatalf("SCTP bytes changed by the DNAT (the CRC32c no longer holds):\n%x\n%x", sctp, got)
	}
	in, sctp = sctpPacket(backend1, clientIP, 3868, 40000)
	ret, out = runOut(t, o.NsxIngress, in)
	if p := parse(t, out); ret != tcxPass || p.src != vip || p.sport != 3868 || !p.ipOK || !bytes.Equal(out[14+20:14+20+len(sctp)], sctp) {
		t.Fatalf("SCTP reverse NAT: ret %d, %s:%d -> %s:%d", int32(ret), p.src, p.sport, p.dst, p.dport)
	}

	// Two external clients on one port: the first keeps it at the SNAT
	// address, the second is dropped rather than moved (TCP would move).
	nodeIP := netip.MustParseAddr("10.0.100.2")
	if err := o.NsxBackends.Put(nsxBeKey{SvcId: 7}, nsxBeVal{Ip: be32(backend1), Port: be16(3868)}); err != nil {
		t.Fatal(err)
	}
	v := nsxSvcVal{Id: 7, Count: 1, Flags: flagExternal, SnatIp: be32(nodeIP)}
	if err := o.NsxServices.Put(nsxSvcKey{Vip: be32(nodeIP), Port: be16(3868), Proto: protoSCTP}, v); err != nil {
		t.Fatal(err)
	}
	c1, c2 := netip.MustParseAddr("192.168.50.2"), netip.MustParseAddr("192.168.50.3")
	in, sctp = sctpPacket(c1, nodeIP, 40000, 3868)
	ret, out = runOut(t, o.NsxNodeIngress, in)
	if p := parse(t, out); ret != tcRedirect || p.src != nodeIP || p.sport != 40000 || p.dst != backend1 || !bytes.Equal(out[14+20:14+20+len(sctp)], sctp) {
		t.Fatalf("SCTP from %s: ret %d, %s:%d -> %s:%d", c1, int32(ret), p.src, p.sport, p.dst, p.dport)
	}
	in, _ = sctpPacket(c2, nodeIP, 40000, 3868)
	if ret, out := runOut(t, o.NsxNodeIngress, in); ret != tcActShot {
		p := parse(t, out)
		t.Fatalf("SCTP from %s on a port taken at the SNAT address: ret %d (%s:%d -> %s:%d), want a drop", c2, int32(ret), p.src, p.sport, p.dst, p.dport)
	}
}
