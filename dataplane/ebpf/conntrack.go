package ebpf

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
)

// NATEntries lists the conntrack maps' entries of connections to a
// frontend, both families (one per connection: its forward entry), read
// from the maps pinned in pinDir. Read-only. The program does not track
// TCP states: every entry counts as open until the LRU evicts it.
func NATEntries(pinDir string) ([]dataplane.NATEntry, error) {
	var out []dataplane.NATEntry
	for _, v6 := range []bool{false, true} {
		name := nsxMapNsxConntrack
		if v6 {
			name = nsxMapNsxConntrack6
			if _, err := os.Stat(filepath.Join(pinDir, name)); errors.Is(err, os.ErrNotExist) {
				continue // pinned by a version without IPv6 maps
			}
		}
		ct, err := pinned(pinDir, name)
		if err != nil {
			return nil, err
		}
		es, err := (&family{v6: v6, conntrack: ct}).natEntries()
		ct.Close()
		if err != nil {
			return nil, err
		}
		out = append(out, es...)
	}
	return out, nil
}

// ctEntry is a conntrack entry of either family.
type ctEntry struct {
	src, dst       netip.AddrPort
	proto, dir     uint8
	ip, client     netip.AddrPort // the value's address and client_*
	flags          uint16
	svcID          uint32
	rawKey, rawVal any
}

// eachConn calls fn with every conntrack entry.
func (f *family) eachConn(fn func(ctEntry)) error {
	var err error
	if f.v6 {
		err = iterate(f.conntrack, func(k *nsxCt6Key, v *nsxCt6Val) {
			fn(ctEntry{src: ap6(k.Src, k.Sport), dst: ap6(k.Dst, k.Dport), proto: k.Proto, dir: uint8(k.Dir),
				ip: ap6(v.Ip, v.Port), client: ap6(v.ClientIp, v.ClientPort), flags: v.Flags, svcID: v.SvcId, rawKey: *k, rawVal: *v})
		})
	} else {
		err = iterate(f.conntrack, func(k *nsxCtKey, v *nsxCtVal) {
			fn(ctEntry{src: ap4(k.Src, k.Sport), dst: ap4(k.Dst, k.Dport), proto: k.Proto, dir: uint8(k.Dir),
				ip: ap4(v.Ip, v.Port), client: ap4(v.ClientIp, v.ClientPort), flags: v.Flags, svcID: v.SvcId, rawKey: *k, rawVal: *v})
		})
	}
	if err != nil {
		return fmt.Errorf("ebpf: read %s conntrack map: %w", f.name(), err)
	}
	return nil
}

// natEntries are the family's connections: the forward entry holds the
// client, the frontend and the backend.
func (f *family) natEntries() ([]dataplane.NATEntry, error) {
	var out []dataplane.NATEntry
	err := f.eachConn(func(c ctEntry) {
		if c.dir != ctDirFwd {
			return
		}
		proto, ok := dataplane.ProtocolOf(c.proto)
		if !ok {
			return
		}
		e := dataplane.NATEntry{Protocol: proto, Open: true, Client: c.src, Frontend: c.dst, Backend: c.ip,
			SNATed: c.flags&ctFlagSNAT != 0}
		if c.flags&ctFlagHairpin != 0 {
			e.Flags = append(e.Flags, "hairpin")
		}
		if c.flags&ctFlagExternal != 0 {
			e.Flags = append(e.Flags, "external")
		}
		if e.SNATed {
			e.Flags = append(e.Flags, "snat "+c.client.String())
		}
		e.Raw = fmt.Sprintf("fwd %+v -> %+v", c.rawKey, c.rawVal)
		out = append(out, e)
	})
	return out, err
}
