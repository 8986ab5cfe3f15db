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
// frontend of either family, sorted by key. Read-only, and it needs no
// running process: the maps are the dataplane's state.
func Inspect(pinDir string) ([]dataplane.Held, error) {
	conns, err := pinned(pinDir, nsxMapNsxSvcConns)
	if err != nil {
		return nil, err
	}
	defer conns.Close()
	var out []*dataplane.Held
	for _, v6 := range []bool{false, true} {
		fam, closeFam, err := pinnedFamily(pinDir, v6)
		if err != nil {
			return nil, err
		}
		if fam == nil {
			continue // pinned by a version without IPv6 maps: none held
		}
		held, err := inspectFamily(fam, conns)
		closeFam()
		if err != nil {
			return nil, err
		}
		out = append(out, held...)
	}
	held := make([]dataplane.Held, len(out))
	for i, h := range out {
		h.Normalize()
		held[i] = *h
	}
	sort.Slice(held, func(i, j int) bool { return held[i].Key.Compare(held[j].Key) < 0 })
	return held, nil
}

// pinnedFamily opens one family's services, backends and ranges maps
// pinned in pinDir, read-only; nil
// (and no error) when its services map is not pinned and v6: maps pinned
// by a version without IPv6.
func pinnedFamily(pinDir string, v6 bool) (*family, func(), error) {
	names := []string{nsxMapNsxServices, nsxMapNsxBackends, nsxMapNsxRanges}
	if v6 {
		names = []string{nsxMapNsxServices6, nsxMapNsxBackends6, nsxMapNsxRanges6}
		if _, err := os.Stat(filepath.Join(pinDir, nsxMapNsxServices6)); errors.Is(err, os.ErrNotExist) {
			return nil, func() {}, nil
		}
	}
	var maps []*ebpf.Map
	closeAll := func() {
		for _, m := range maps {
			m.Close()
		}
	}
	for _, name := range names {
		m, err := pinned(pinDir, name)
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		maps = append(maps, m)
	}
	return &family{v6: v6, services: maps[0], backends: maps[1], ranges: maps[2]}, closeAll, nil
}

func inspectFamily(fam *family, conns *ebpf.Map) ([]*dataplane.Held, error) {
	byID := map[uint32]*dataplane.Held{}
	var out []*dataplane.Held
	var lookupErr error
	err := fam.eachService(func(k dataplane.FrontendKey, v svcVal, ok bool) {
		if !ok || lookupErr != nil {
			return // not an entry this version writes
		}
		h := &dataplane.Held{
			Key:             k,
			External:        v.Flags&flagExternal != 0,
			AffinityTimeout: time.Duration(v.AffinitySec) * time.Second,
			SNAT:            v.SNAT,
		}
		if v.Flags&flagAffinity == 0 {
			h.AffinityTimeout = 0
		}
		if v.Flags&flagDrop != 0 {
			h.IfEmpty = dataplane.Drop
		}
		for i := 0; i < int(v.Count); i++ {
			be, err := fam.lookupBackend(v.Id, uint32(i))
			if err != nil {
				lookupErr = fmt.Errorf("ebpf: frontend %s: backend slot %d of %d: %w", h.Key, i, v.Count, err)
				return
			}
			h.Endpoints = append(h.Endpoints, be)
		}
		var perCPU []uint64
		if err := conns.Lookup(v.Id, &perCPU); err == nil {
			for _, n := range perCPU {
				h.NewConnections += n
			}
		}
		byID[v.Id] = h
		out = append(out, h)
	})
	if err == nil {
		err = lookupErr
	}
	if err != nil {
		return nil, fmt.Errorf("ebpf: %w", err)
	}
	if err := fam.eachRange(func(id uint32, p netip.Prefix) {
		if h := byID[id]; h != nil {
			h.SourceRanges = append(h.SourceRanges, p)
		}
	}); err != nil {
		return nil, fmt.Errorf("ebpf: %w", err)
	}
	return out, nil
}
