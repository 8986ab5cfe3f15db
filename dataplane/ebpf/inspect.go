package ebpf

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/cilium/ebpf"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
)

// pinned opens one map pinned in pinDir read-only.
func pinned(pinDir, name string) (*ebpf.Map, error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, name), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("ebpf: no map %s pinned in %s: the eBPF dataplane has not run on this node", name, pinDir)
		}
		return nil, fmt.Errorf("ebpf: map %s in %s: %w", name, pinDir, err)
	}
	return m, nil
}

// Inspect reads what the maps pinned in pinDir hold, one Held per
// frontend, sorted by key. Read-only, and it needs no running process:
// the maps are the dataplane's state.
func Inspect(pinDir string) ([]dataplane.Held, error) {
	maps := map[string]*ebpf.Map{}
	defer func() {
		for _, m := range maps {
			m.Close()
		}
	}()
	for _, name := range []string{nsxMapNsxServices, nsxMapNsxBackends, nsxMapNsxRanges, nsxMapNsxSvcConns} {
		m, err := pinned(pinDir, name)
		if err != nil {
			return nil, err
		}
		maps[name] = m
	}
	byID := map[uint32]*dataplane.Held{}
	var out []*dataplane.Held
	var k nsxSvcKey
	var v nsxSvcVal
	it := maps[nsxMapNsxServices].Iterate()
	for it.Next(&k, &v) {
		proto, ok := dataplane.ProtocolOf(k.Proto)
		if !ok {
			continue // not an entry this version writes
		}
		h := &dataplane.Held{
			Key:             dataplane.FrontendKey{IP: addrOf(k.Vip), Port: portOf(k.Port), Protocol: proto},
			External:        v.Flags&flagExternal != 0,
			AffinityTimeout: time.Duration(v.AffinitySec) * time.Second,
		}
		if v.Flags&flagAffinity == 0 {
			h.AffinityTimeout = 0
		}
		if v.SnatIp != [4]byte{} {
			h.SNAT = addrOf(v.SnatIp)
		}
		if v.Flags&flagDrop != 0 {
			h.IfEmpty = dataplane.Drop
		}
		for i := 0; i < int(v.Count); i++ {
			var be nsxBeVal
			if err := maps[nsxMapNsxBackends].Lookup(nsxBeKey{SvcId: v.Id, Slot: uint32(i)}, &be); err != nil {
				return nil, fmt.Errorf("ebpf: frontend %s: backend slot %d of %d: %w", h.Key, i, v.Count, err)
			}
			h.Endpoints = append(h.Endpoints, netip.AddrPortFrom(addrOf(be.Ip), portOf(be.Port)))
		}
		var perCPU []uint64
		if err := maps[nsxMapNsxSvcConns].Lookup(v.Id, &perCPU); err == nil {
			for _, n := range perCPU {
				h.NewConnections += n
			}
		}
		byID[v.Id] = h
		out = append(out, h)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("ebpf: read services map: %w", err)
	}
	var rk nsxRangeKey
	var one uint8
	rit := maps[nsxMapNsxRanges].Iterate()
	for rit.Next(&rk, &one) {
		if h := byID[rk.SvcId]; h != nil {
			h.SourceRanges = append(h.SourceRanges, netip.PrefixFrom(addrOf(rk.Ip), int(rk.Prefixlen)-32))
		}
	}
	if err := rit.Err(); err != nil {
		return nil, fmt.Errorf("ebpf: read source ranges map: %w", err)
	}
	held := make([]dataplane.Held, len(out))
	for i, h := range out {
		h.Normalize()
		held[i] = *h
	}
	sort.Slice(held, func(i, j int) bool { return held[i].Key.Compare(held[j].Key) < 0 })
	return held, nil
}
