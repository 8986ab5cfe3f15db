package ebpf

import (
	"context"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"go.uber.org/zap"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
)

var (
	client6   = netip.MustParseAddr("fd00:10:0:101::50")
	vip6      = netip.MustParseAddr("fd00:10:96::10")
	backend6a = netip.MustParseAddr("fd00:10:0:102::20")
	backend6b = netip.MustParseAddr("fd00:10:0:102::21")
	node6     = netip.MustParseAddr("fd00:10:0:100::2")
)

// syncModel installs frontends through a Backend over the loaded objects,
// as the proxy does (no pins, nothing adopted).
func syncModel(t *testing.T, o *Objects, fs ...*dataplane.Frontend) *Backend {
	t.Helper()
	b := &Backend{log: zap.NewNop(), objs: o, ids: dataplane.NewIDs(maxID), installed: map[dataplane.FrontendKey]*installedSvc{}, adopted: true}
	resync(t, b, fs...)
	return b
}

func resync(t *testing.T, b *Backend, fs ...*dataplane.Frontend) {
	t.Helper()
	m := &dataplane.Model{Frontends: map[dataplane.FrontendKey]*dataplane.Frontend{}}
	for _, f := range fs {
		m.Frontends[f.Key] = f
	}
	if err := b.Sync(context.Background(), m, dataplane.SyncOptions{}); err != nil {
		t.Fatal(err)
	}
}

func frontend(ip netip.Addr, port uint16, proto dataplane.Protocol, eps ...netip.AddrPort) *dataplane.Frontend {
	f := &dataplane.Frontend{Key: dataplane.FrontendKey{IP: ip, Port: port, Protocol: proto}, Kind: dataplane.ClusterIP}
	for _, e := range eps {
		f.Endpoints = append(f.Endpoints, dataplane.Endpoint{IP: e.Addr(), Port: e.Port(), Ready: true, Serving: true})
	}
	return f
}

// IPv6 frontends are served from the IPv6 maps: DNAT of a new connection
// with its TCP checksum right, reverse NAT of the replies, established
// packets kept on their backend; UDP the same.
func TestIPv6DNATAndReverseNAT(t *testing.T) {
	o := load(t)
	b := syncModel(t, o,
		frontend(vip6, 80, dataplane.TCP, netip.AddrPortFrom(backend6a, 8080)),
		frontend(vip6, 53, dataplane.UDP, netip.AddrPortFrom(backend6a, 5353)),
		frontend(vip, 80, dataplane.TCP, netip.AddrPortFrom(backend1, 8080)))
	ret, out := runOut(t, o.NsxEgress, packet(protoTCP, client6, vip6, 40000, 80, tcpSYN))
	p := parse(t, out)
	if ret != tcxPass || p.src != client6 || p.sport != 40000 || p.dst != backend6a || p.dport != 8080 || !p.l4OK {
		t.Fatalf("IPv6 DNAT: ret %d, %s:%d -> %s:%d, tcp checksum ok %v", int32(ret), p.src, p.sport, p.dst, p.dport, p.l4OK)
	}
	ret, out = runOut(t, o.NsxIngress, packet(protoTCP, backend6a, client6, 8080, 40000, tcpSYN|tcpACK))
	p = parse(t, out)
	if ret != tcxPass || p.src != vip6 || p.sport != 80 || p.dst != client6 || !p.l4OK {
		t.Fatalf("IPv6 reverse NAT: ret %d, %s:%d -> %s:%d, tcp checksum ok %v", int32(ret), p.src, p.sport, p.dst, p.dport, p.l4OK)
	}
	resync(t, b,
		frontend(vip6, 80, dataplane.TCP, netip.AddrPortFrom(backend6b, 8080)),
		frontend(vip6, 53, dataplane.UDP, netip.AddrPortFrom(backend6a, 5353)),
		frontend(vip, 80, dataplane.TCP, netip.AddrPortFrom(backend1, 8080)))
	if ret, out := runOut(t, o.NsxEgress, packet(protoTCP, client6, vip6, 40000, 80, tcpACK)); ret != tcxPass || parse(t, out).dst != backend6a {
		t.Fatalf("established IPv6 packet went to %s, want %s", parse(t, out).dst, backend6a)
	}
	if ret, out := runOut(t, o.NsxEgress, packet(protoTCP, client6, vip6, 40001, 80, tcpSYN)); ret != tcxPass || parse(t, out).dst != backend6b {
		t.Fatalf("new IPv6 connection went to %s, want %s", parse(t, out).dst, backend6b)
	}
	ret, out = runOut(t, o.NsxEgress, packet(protoUDP, client6, vip6, 40002, 53, 0))
	p = parse(t, out)
	if ret != tcxPass || p.dst != backend6a || p.dport != 5353 || !p.l4OK {
		t.Fatalf("IPv6 UDP DNAT: ret %d, -> %s:%d, udp checksum ok %v", int32(ret), p.dst, p.dport, p.l4OK)
	}
	// The IPv4 frontend of the same model is untouched by the IPv6 one.
	if ret, out := runOut(t, o.NsxEgress, packet(protoTCP, clientIP, vip, 40000, 80, tcpSYN)); ret != tcxPass || parse(t, out).dst != backend1 {
		t.Fatalf("IPv4 beside IPv6: -> %s", parse(t, out).dst)
	}
	// An IPv6 packet to the IPv4 VIP's bytes is not a service packet.
	if ret, _ := runOut(t, o.NsxEgress, packet(protoTCP, client6, netip.AddrFrom16(vip.As16()), 40003, 80, tcpSYN)); ret != tcxNext {
		t.Fatalf("IPv4-mapped destination: ret %d, want TCX_NEXT", int32(ret))
	}
}

// An IPv6 frontend without endpoints answers with a TCP RST or an ICMPv6
// port unreachable, checksums right; under the Local policy it drops.
func TestIPv6NoBackends(t *testing.T) {
	o := load(t)
	drop := frontend(vip6, 443, dataplane.TCP)
	drop.IfEmpty = dataplane.Drop
	syncModel(t, o, frontend(vip6, 80, dataplane.TCP), frontend(vip6, 53, dataplane.UDP), drop)
	ret, out := runOut(t, o.NsxEgress, packet(protoTCP, client6, vip6, 40001, 80, tcpSYN))
	p := parse(t, out)
	if ret != tcRedirect || p.proto != protoTCP || p.tcpFlags != tcpRST|tcpACK || p.src != vip6 || p.sport != 80 ||
		p.dst != client6 || p.dport != 40001 || p.ack != 1001 || !p.l4OK {
		t.Fatalf("IPv6 TCP reject: ret %d, %+v", int32(ret), p)
	}
	ret, out = runOut(t, o.NsxEgress, packet(protoUDP, client6, vip6, 40002, 53, 0))
	p = parse(t, out)
	if ret != tcRedirect || p.proto != protoICMPv6 || p.l4[0] != 1 || p.l4[1] != 4 || p.src != vip6 || p.dst != client6 || !p.l4OK {
		t.Fatalf("IPv6 UDP reject: ret %d, %+v", int32(ret), p)
	}
	// The quote is the datagram's IPv6 header and 8 bytes after it.
	if len(p.l4) != 8+48 || netip.AddrFrom16([16]byte(p.l4[8+24:8+40])) != vip6 {
		t.Fatalf("ICMPv6 quote: %d bytes %x", len(p.l4), p.l4)
	}
	if ret, _ := runOut(t, o.NsxEgress, packet(protoTCP, client6, vip6, 40003, 443, tcpSYN)); ret != tcActShot {
		t.Fatalf("Local policy without endpoints: ret %d, want drop", int32(ret))
	}
}

// A pod reaching itself through an IPv6 Service sees the IPv6 hairpin
// address as the source, and its answer goes back as from the VIP.
func TestIPv6Hairpin(t *testing.T) {
	o := load(t)
	syncModel(t, o, frontend(vip6, 80, dataplane.TCP, netip.AddrPortFrom(client6, 8080)))
	hairpin := dataplane.DefaultHairpinIP6
	ret, out := runOut(t, o.NsxEgress, packet(protoTCP, client6, vip6, 40004, 80, tcpSYN))
	p := parse(t, out)
	if ret != tcRedirect || p.dst != client6 || p.dport != 8080 || p.src != hairpin || !p.l4OK {
		t.Fatalf("IPv6 hairpin SYN: ret %d, %s:%d -> %s:%d", int32(ret), p.src, p.sport, p.dst, p.dport)
	}
	ret, out = runOut(t, o.NsxEgress, packet(protoTCP, client6, hairpin, 8080, 40004, tcpSYN|tcpACK))
	p = parse(t, out)
	if ret != tcRedirect || p.src != vip6 || p.sport != 80 || p.dst != client6 || p.dport != 40004 || !p.l4OK {
		t.Fatalf("IPv6 hairpin reply: ret %d, %s:%d -> %s:%d", int32(ret), p.src, p.sport, p.dst, p.dport)
	}
}

// A client outside the node reaches an IPv6 NodePort: DNAT and SNAT to
// the node's IPv6 address at the node's ingress; the reply goes back to
// the client from the NodePort. Source ranges of the other family do not
// admit it.
func TestIPv6ExternalSNAT(t *testing.T) {
	o := load(t)
	ext := netip.MustParseAddr("fd00:192:168:50::2")
	np := frontend(node6, 30080, dataplane.TCP, netip.AddrPortFrom(backend6a, 8080))
	np.Kind, np.SNAT = dataplane.NodePort, node6
	np.SourceRanges = []netip.Prefix{netip.MustParsePrefix("fd00:192:168:50::/64"), netip.MustParsePrefix("192.168.50.0/24")}
	only4 := frontend(node6, 30081, dataplane.TCP, netip.AddrPortFrom(backend6a, 8080))
	only4.Kind, only4.SourceRanges = dataplane.NodePort, []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}
	syncModel(t, o, np, only4)
	ret, out := runOut(t, o.NsxNodeIngress, packet(protoTCP, ext, node6, 40000, 30080, tcpSYN))
	p := parse(t, out)
	if ret != tcRedirect || p.src != node6 || p.sport != 40000 || p.dst != backend6a || p.dport != 8080 || !p.l4OK {
		t.Fatalf("IPv6 NodePort SYN: ret %d, %s:%d -> %s:%d", int32(ret), p.src, p.sport, p.dst, p.dport)
	}
	ret, out = runOut(t, o.NsxNodeIngress, packet(protoTCP, backend6a, node6, 8080, 40000, tcpSYN|tcpACK))
	p = parse(t, out)
	if ret != tcRedirect || p.src != node6 || p.sport != 30080 || p.dst != ext || p.dport != 40000 || !p.l4OK {
		t.Fatalf("IPv6 NodePort reply: ret %d, %s:%d -> %s:%d", int32(ret), p.src, p.sport, p.dst, p.dport)
	}
	if ret, _ := runOut(t, o.NsxNodeIngress, packet(protoTCP, netip.MustParseAddr("fd00:192:168:51::2"), node6, 40000, 30080, tcpSYN)); ret != tcActShot {
		t.Fatalf("a source outside the ranges: ret %d, want drop", int32(ret))
	}
	if ret, _ := runOut(t, o.NsxNodeIngress, packet(protoTCP, ext, node6, 40001, 30081, tcpSYN)); ret != tcActShot {
		t.Fatalf("only IPv4 ranges: ret %d, want drop", int32(ret))
	}
}

// The Backend adopts what an earlier process left in the IPv6 maps
// (nothing rewritten), and removing an IPv6 frontend empties its entries.
func TestIPv6AdoptAndRemove(t *testing.T) {
	o := load(t)
	f := frontend(vip6, 80, dataplane.TCP, netip.AddrPortFrom(backend6a, 8080), netip.AddrPortFrom(backend6b, 8080))
	f.AffinityTimeout = 30 * time.Second
	b := syncModel(t, o, f)
	again := &Backend{log: zap.NewNop(), objs: o}
	if err := again.adopt(); err != nil {
		t.Fatal(err)
	}
	s := again.installed[f.Key]
	if s == nil || len(s.backends) != 2 || len(s.members) != 2 || s.val.AffinitySec != 30 {
		t.Fatalf("adopted %+v", s)
	}
	again.adopted = true
	resync(t, again, f)
	if again.Stats().LastChanges != 0 {
		t.Fatalf("a restart rewrote %d entries of an unchanged IPv6 frontend", again.Stats().LastChanges)
	}
	resync(t, b)
	if n := count6(t, o); n != 0 {
		t.Fatalf("%d entries left in the IPv6 maps after the frontend went", n)
	}
}

// count6 counts the entries of the IPv6 services, backends and members
// maps.
func count6(t *testing.T, o *Objects) int {
	t.Helper()
	n := 0
	for _, m := range []*ebpf.Map{o.NsxServices6, o.NsxBackends6, o.NsxMembers6} {
		var k, v []byte
		it := m.Iterate()
		for it.Next(&k, &v) {
			n++
		}
		if err := it.Err(); err != nil {
			t.Fatal(err)
		}
	}
	return n
}

// withSeq sets a built TCP packet's sequence number (checksum kept right).
func withSeq(pkt []byte, seq uint32) []byte {
	out := append([]byte(nil), pkt...)
	ipLen := 20
	if out[12] == 0x86 {
		ipLen = 40
	}
	ip, l4 := out[14:14+ipLen], out[14+ipLen:]
	binary.BigEndian.PutUint32(l4[4:], seq)
	binary.BigEndian.PutUint16(l4[16:], 0)
	binary.BigEndian.PutUint16(l4[16:], l4csum(ip, l4))
	return out
}

// A SYN sent again after a loss (its SYN-ACK lost, or a packet dropped in
// a dataplane switch) keeps the backend its first copy went to: balanced
// afresh, the client would hold a half-open connection on two backends
// and get a reset. A new SYN from the same port (another sequence
// number) still picks afresh. Both families.
func TestRetransmittedSYNKeepsItsBackend(t *testing.T) {
	for _, c := range []struct {
		name         string
		client, vip  netip.Addr
		first, other netip.Addr
	}{
		{"IPv4", clientIP, vip, backend1, backend2},
		{"IPv6", client6, vip6, backend6a, backend6b},
	} {
		t.Run(c.name, func(t *testing.T) {
			o := load(t)
			b := syncModel(t, o, frontend(c.vip, 80, dataplane.TCP, netip.AddrPortFrom(c.first, 8080)))
			syn := packet(protoTCP, c.client, c.vip, 40000, 80, tcpSYN)
			if ret, out := runOut(t, o.NsxEgress, syn); ret != tcxPass || parse(t, out).dst != c.first {
				t.Fatalf("first SYN: ret %d, to %s", int32(ret), parse(t, out).dst)
			}
			resync(t, b, frontend(c.vip, 80, dataplane.TCP, netip.AddrPortFrom(c.other, 8080)))
			ret, out := runOut(t, o.NsxEgress, syn)
			if p := parse(t, out); ret != tcxPass || p.dst != c.first || !p.l4OK {
				t.Fatalf("the same SYN again: ret %d, to %s (checksum ok %v), want the first backend %s", int32(ret), p.dst, p.l4OK, c.first)
			}
			ret, out = runOut(t, o.NsxEgress, withSeq(syn, 5000))
			if p := parse(t, out); ret != tcxPass || p.dst != c.other {
				t.Fatalf("a new SYN from the same port: ret %d, to %s, want %s", int32(ret), p.dst, c.other)
			}
			// Drained (the frontend gone, a switch to OVS): the same SYN
			// again still follows its backend, a new one passes on.
			resync(t, b)
			if ret, out := runOut(t, o.NsxEgress, withSeq(syn, 5000)); ret != tcxPass || parse(t, out).dst != c.other {
				t.Fatalf("drained, the same SYN again: ret %d, to %s, want %s", int32(ret), parse(t, out).dst, c.other)
			}
			if ret, _ := runOut(t, o.NsxEgress, withSeq(syn, 9000)); ret != tcxNext {
				t.Fatalf("drained, a new SYN: ret %d, want TCX_NEXT", int32(ret))
			}
		})
	}
}

// A switch from OVS hands IPv6 connections over too: the pod's open
// connection to an IPv6 ClusterIP keeps its backend in the IPv6 conntrack
// map. A switch to OVS drains both families' services maps and keeps the
// connections the programs NATed.
func TestIPv6HandoverAndDrain(t *testing.T) {
	dir := pinDir(t)
	o, err := Load(LoadOptions{PinDir: dir, Sizes: MapSizes{Services: 64, Backends: 256, Conntrack: 1024, Affinity: 64, Conntrack6: 1024, Affinity6: 64}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.Close() })
	f6 := frontend(vip6, 80, dataplane.TCP, netip.AddrPortFrom(backend6b, 8080))
	f4 := frontend(vip, 80, dataplane.TCP, netip.AddrPortFrom(backend1, 8080))
	b := syncModel(t, o, f6, f4)
	ovsBackend := netip.AddrPortFrom(backend6a, 8080) // where OVS had sent it
	n, err := b.AdoptConnections([]dataplane.Conn{
		{Frontend: f6.Key, Client: netip.AddrPortFrom(client6, 44000), Backend: ovsBackend},
		{Frontend: f6.Key, Client: netip.AddrPortFrom(clientIP, 44001), Backend: ovsBackend}, // families mixed: skipped
	})
	if err != nil || n != 1 {
		t.Fatalf("adopted %d (%v), want the IPv6 connection only", n, err)
	}
	if ret, out := runOut(t, o.NsxEgress, packet(protoTCP, client6, vip6, 44000, 80, tcpACK)); ret != tcxPass || parse(t, out).dst != backend6a {
		t.Fatalf("adopted IPv6 connection went to %s, want %s", parse(t, out).dst, backend6a)
	}
	ret, out := runOut(t, o.NsxIngress, packet(protoTCP, backend6a, client6, 8080, 44000, tcpACK))
	if p := parse(t, out); ret != tcxPass || p.src != vip6 || p.sport != 80 || !p.l4OK {
		t.Fatalf("its reply: ret %d, from %s:%d", int32(ret), p.src, p.sport)
	}
	// A connection eBPF NATs before the drain.
	if ret, out := runOut(t, o.NsxEgress, packet(protoTCP, client6, vip6, 44002, 80, tcpSYN)); ret != tcxPass || parse(t, out).dst != backend6b {
		t.Fatal("SYN before the drain not NATed")
	}
	if err := Drain(dir); err != nil {
		t.Fatal(err)
	}
	if n := count6(t, o); n != 1 { // the backend slot is left, the service entry went
		t.Fatalf("after the drain the IPv6 maps hold %d entries, want only the backend slot", n)
	}
	if ret, _ := runOut(t, o.NsxEgress, packet(protoTCP, client6, vip6, 44003, 80, tcpSYN)); ret != tcxNext {
		t.Fatalf("a new IPv6 connection after the drain: ret %d, want TCX_NEXT (to OVS)", int32(ret))
	}
	if ret, _ := runOut(t, o.NsxEgress, packet(protoTCP, clientIP, vip, 44003, 80, tcpSYN)); ret != tcxNext {
		t.Fatalf("a new IPv4 connection after the drain: ret %d, want TCX_NEXT (to OVS)", int32(ret))
	}
	if ret, out := runOut(t, o.NsxEgress, packet(protoTCP, client6, vip6, 44002, 80, tcpACK)); ret != tcxPass || parse(t, out).dst != backend6b {
		t.Fatal("a connection NATed before the drain lost its backend")
	}
}

// A connection OVS had opened and the take-over adopted (no SYN sequence
// recorded) keeps its backend when its SYN is retransmitted while the
// take-over lasts; once it is over, a SYN on those ports is a new
// connection.
func TestAdoptedSYNFollowsItsEntryDuringTakeover(t *testing.T) {
	o := load(t)
	b := syncModel(t, o, frontend(vip, 80, dataplane.TCP, netip.AddrPortFrom(backend2, 8080)))
	fe := dataplane.FrontendKey{IP: vip, Port: 80, Protocol: dataplane.TCP}
	if n, err := b.AdoptConnections([]dataplane.Conn{{Frontend: fe, Client: netip.AddrPortFrom(clientIP, 45000), Backend: netip.AddrPortFrom(backend1, 8080)}}); n != 1 || err != nil {
		t.Fatalf("adopted %d (%v)", n, err)
	}
	if err := b.SetHandover(true); err != nil {
		t.Fatal(err)
	}
	syn := packet(protoTCP, clientIP, vip, 45000, 80, tcpSYN)
	if ret, out := runOut(t, o.NsxEgress, syn); ret != tcxPass || parse(t, out).dst != backend1 {
		t.Fatalf("retransmitted SYN of an adopted connection during the take-over: ret %d, to %s, want %s", int32(ret), parse(t, out).dst, backend1)
	}
	if err := b.SetHandover(false); err != nil {
		t.Fatal(err)
	}
	if ret, out := runOut(t, o.NsxEgress, withSeq(syn, 777)); ret != tcxPass || parse(t, out).dst != backend2 {
		t.Fatalf("a new SYN on those ports after the take-over: ret %d, to %s, want %s", int32(ret), parse(t, out).dst, backend2)
	}
}
