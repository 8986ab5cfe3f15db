package ebpf

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
)

// A node upgraded in place keeps forwarding: the maps an earlier version
// pinned (BTF with addresses and ports as integers, the bytes laid out as
// today) are adopted by the loader as they are, read by Inspect, and the
// new program NATs with them.
func TestUpgradeInPlaceAdoptsEarlierMaps(t *testing.T) {
	dir := pinDir(t)
	sizes := MapSizes{Services: 64, Backends: 4096, Conntrack: 1024, Affinity: 64}
	u32 := &btf.Int{Name: "__u32", Size: 4}
	u16 := &btf.Int{Name: "__u16", Size: 2}
	u8 := &btf.Int{Name: "__u8", Size: 1}
	member := func(name string, typ btf.Type, off uint32) btf.Member {
		return btf.Member{Name: name, Type: typ, Offset: btf.Bits(off * 8)}
	}
	// The layout of the version before the readable views.
	oldSvcKey := &btf.Struct{Name: "svc_key", Size: 8, Members: []btf.Member{
		member("vip", u32, 0), member("port", u16, 4), member("proto", u8, 6), member("pad", u8, 7)}}
	oldSvcVal := &btf.Struct{Name: "svc_val", Size: 16, Members: []btf.Member{
		member("id", u32, 0), member("count", u16, 4), member("flags", u16, 6), member("affinity_sec", u32, 8), member("snat_ip", u32, 12)}}
	oldBeKey := &btf.Struct{Name: "be_key", Size: 8, Members: []btf.Member{member("svc_id", u32, 0), member("slot", u32, 4)}}
	oldBeVal := &btf.Struct{Name: "be_val", Size: 8, Members: []btf.Member{member("ip", u32, 0), member("port", u16, 4), member("pad", u16, 6)}}
	create := func(name string, key, val btf.Type, max uint32) *ebpf.Map {
		m, err := ebpf.NewMapWithOptions(&ebpf.MapSpec{Name: name, Type: ebpf.Hash, KeySize: 8, ValueSize: val.(*btf.Struct).Size,
			MaxEntries: max, Key: key, Value: val, Pinning: ebpf.PinByName}, ebpf.MapOptions{PinPath: dir})
		if err != nil {
			t.Fatalf("create %s as the earlier version did: %v", name, err)
		}
		t.Cleanup(func() { m.Close() })
		return m
	}
	svcs := create(nsxMapNsxServices, oldSvcKey, oldSvcVal, sizes.Services)
	bes := create(nsxMapNsxBackends, oldBeKey, oldBeVal, sizes.Backends)
	// What the earlier version wrote: network-order integers, i.e. these
	// bytes.
	ne32 := func(a netip.Addr) []byte { b := a.As4(); return b[:] }
	key := append(ne32(vip), 0, 80, dataplane.ProtoTCP, 0)
	val := binary.LittleEndian.AppendUint32(nil, 7)
	val = binary.LittleEndian.AppendUint16(val, 1)
	val = append(val, make([]byte, 10)...)
	if err := svcs.Put(key, val); err != nil {
		t.Fatal(err)
	}
	beKey := binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(nil, 7), 0)
	if err := bes.Put(beKey, append(ne32(backend1), 0x1f, 0x90, 0, 0)); err != nil {
		t.Fatal(err)
	}

	o, err := Load(LoadOptions{PinDir: dir, Sizes: sizes})
	if err != nil {
		t.Fatalf("the loader refused the earlier version's maps: %v", err)
	}
	defer o.Close()
	held, err := Inspect(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := netip.AddrPortFrom(backend1, 8080)
	if len(held) != 1 || held[0].Key != (dataplane.FrontendKey{IP: vip, Port: 80, Protocol: dataplane.TCP}) ||
		len(held[0].Endpoints) != 1 || held[0].Endpoints[0] != want {
		t.Fatalf("Inspect of the adopted maps: %+v", held)
	}
	ret, out := runOut(t, o.NsxEgress, packet(protoTCP, clientIP, vip, 40000, 80, tcpSYN))
	if p := parse(t, out); ret != tcxPass || p.dst != backend1 || p.dport != 8080 {
		t.Fatalf("the new program with the adopted maps: ret %d, packet to %s:%d; want %s", ret, p.dst, p.dport, want)
	}
}
