package ebpf

import (
	"fmt"
	"net/netip"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
)

// NATEntries lists the conntrack map's entries of connections to a
// frontend (one per connection: its forward entry), read from the map
// pinned in pinDir. Read-only. The program does not track TCP states:
// every entry counts as open until the LRU evicts it.
func NATEntries(pinDir string) ([]dataplane.NATEntry, error) {
	ct, err := pinned(pinDir, nsxMapNsxConntrack)
	if err != nil {
		return nil, err
	}
	defer ct.Close()
	// The forward entry holds the client, the frontend and the backend.
	type conn struct {
		fwd nsxCtKey
		val nsxCtVal
	}
	var fwds []conn
	var k nsxCtKey
	var v nsxCtVal
	it := ct.Iterate()
	for it.Next(&k, &v) {
		if k.Dir == ctDirFwd {
			fwds = append(fwds, conn{k, v})
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("ebpf: read conntrack map: %w", err)
	}
	var out []dataplane.NATEntry
	for _, c := range fwds {
		proto, ok := dataplane.ProtocolOf(c.fwd.Proto)
		if !ok {
			continue
		}
		e := dataplane.NATEntry{Protocol: proto, Open: true,
			Client:   netip.AddrPortFrom(addrOf(c.fwd.Src), portOf(c.fwd.Sport)),
			Frontend: netip.AddrPortFrom(addrOf(c.fwd.Dst), portOf(c.fwd.Dport)),
			Backend:  netip.AddrPortFrom(addrOf(c.val.Ip), portOf(c.val.Port)),
			SNATed:   c.val.Flags&ctFlagSNAT != 0}
		if c.val.Flags&ctFlagHairpin != 0 {
			e.Flags = append(e.Flags, "hairpin")
		}
		if c.val.Flags&ctFlagExternal != 0 {
			e.Flags = append(e.Flags, "external")
		}
		if e.SNATed {
			e.Flags = append(e.Flags, "snat "+netip.AddrPortFrom(addrOf(c.val.ClientIp), portOf(c.val.ClientPort)).String())
		}
		e.Raw = fmt.Sprintf("fwd %+v -> %+v", c.fwd, c.val)
		out = append(out, e)
	}
	return out, nil
}
