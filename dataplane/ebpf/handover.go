package ebpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
)

// stateHandover is STATE_F_HANDOVER of nsx_state.
const stateHandover = 1

// SetHandover turns the take-over from the OVS dataplane on or off: while
// on, a TCP packet to a frontend that is not a SYN and has no conntrack
// entry is left to OVS (it belongs to a connection OVS NATed) instead of
// being balanced afresh. Idempotent.
func (b *Backend) SetHandover(on bool) error {
	if b.objs == nil {
		if err := b.load(); err != nil {
			return err
		}
	}
	var v uint32
	if on {
		v = stateHandover
	}
	if err := b.objs.NsxState.Put(uint32(0), v); err != nil {
		return fmt.Errorf("ebpf dataplane: state map: %w", err)
	}
	return nil
}

// AdoptConnections writes conntrack entries for connections another
// dataplane NATed from a pod to a ClusterIP, so this one carries them on to
// the same backend. Call it after a Sync installed their frontends; a
// connection whose frontend is not installed or not a ClusterIP, a hairpin
// one, one that is not IPv4, or one whose ports already have a connection
// here, is skipped. It returns how many were adopted.
func (b *Backend) AdoptConnections(conns []dataplane.Conn) (int, error) {
	n := 0
	var errs []error
	for _, c := range conns {
		s := b.installed[c.Frontend]
		if s == nil || !c.Client.Addr().Is4() || !c.Backend.Addr().Is4() {
			continue
		}
		// Plain entries carry a pod's connection to a ClusterIP. A hairpin
		// connection (the pod reaching itself) or one from outside the
		// node takes flags and keys of its own: not handed over.
		if s.src == nil || s.src.Kind != dataplane.ClusterIP || c.Client.Addr() == c.Backend.Addr() {
			continue
		}
		proto := c.Frontend.Protocol.Number()
		fk := nsxCtKey{Src: be32(c.Client.Addr()), Dst: be32(c.Frontend.IP), Sport: be16(c.Client.Port()), Dport: be16(c.Frontend.Port),
			Proto: proto, Dir: ctDirFwd}
		fv := nsxCtVal{Ip: be32(c.Backend.Addr()), Port: be16(c.Backend.Port()), SvcId: s.val.Id}
		rk := nsxCtKey{Src: be32(c.Backend.Addr()), Dst: be32(c.Client.Addr()), Sport: be16(c.Backend.Port()), Dport: be16(c.Client.Port()),
			Proto: proto, Dir: ctDirRev}
		rv := nsxCtVal{Ip: be32(c.Frontend.IP), Port: be16(c.Frontend.Port), SvcId: s.val.Id}
		// A forward entry already there is a connection this dataplane
		// NATed since the take-over began, on ports an older connection
		// used: it is the newer one, kept.
		var have nsxCtVal
		if b.objs.NsxConntrack.Lookup(fk, &have) == nil {
			continue
		}
		// Reverse first: a forward entry without it would NAT requests
		// whose replies are not un-NATed.
		if err := b.objs.NsxConntrack.Put(rk, rv); err != nil {
			errs = append(errs, fmt.Errorf("connection %s -> %s: %w", c.Client, c.Frontend, err))
			continue
		}
		if err := b.objs.NsxConntrack.Update(fk, fv, ebpf.UpdateNoExist); err != nil && !errors.Is(err, ebpf.ErrKeyExist) {
			errs = append(errs, fmt.Errorf("connection %s -> %s: %w", c.Client, c.Frontend, err))
			continue
		}
		n++
	}
	if err := errors.Join(errs...); err != nil {
		return n, fmt.Errorf("ebpf dataplane: adopt connections: %w", err)
	}
	return n, nil
}

// Drain makes the programs pinned in pinDir stop taking new connections
// (the services map is emptied: they fall through to the OVS dataplane)
// while established ones keep their conntrack entries. The node is
// switching to OVS; CleanupPins ends the drain. No pins: nothing to do.
// Idempotent.
func Drain(pinDir string) error {
	m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, nsxMapNsxServices), nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("ebpf dataplane: drain: %w", err)
	}
	defer m.Close()
	var keys []nsxSvcKey
	var k nsxSvcKey
	var v nsxSvcVal
	it := m.Iterate()
	for it.Next(&k, &v) {
		keys = append(keys, k)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("ebpf dataplane: drain: read services map: %w", err)
	}
	for _, k := range keys {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("ebpf dataplane: drain: %w", err)
		}
	}
	return nil
}

// Pinned says whether pinDir holds the eBPF dataplane's maps.
func Pinned(pinDir string) bool {
	_, err := os.Stat(filepath.Join(pinDir, nsxMapNsxServices))
	return err == nil
}
