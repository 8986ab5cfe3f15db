package ebpf

import (
	"errors"
	"fmt"
	"net/netip"
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
// the same backend, in the maps of the connection's family. Call it after
// a Sync installed their frontends; a connection whose frontend is not
// installed or not a ClusterIP, a hairpin one, one whose addresses are not
// of its frontend's family, or one whose ports already have a connection
// here, is skipped. It returns how many were adopted.
func (b *Backend) AdoptConnections(conns []dataplane.Conn) (int, error) {
	n := 0
	var errs []error
	for _, c := range conns {
		s := b.installed[c.Frontend]
		if s == nil {
			continue
		}
		fam := b.objs.family(c.Frontend.IP.Is6())
		if !fam.has(c.Client.Addr()) || !fam.has(c.Backend.Addr()) {
			continue
		}
		// Plain entries carry a pod's connection to a ClusterIP. A hairpin
		// connection (the pod reaching itself) or one from outside the
		// node takes flags and keys of its own: not handed over.
		if s.src == nil || s.src.Kind != dataplane.ClusterIP || c.Client.Addr() == c.Backend.Addr() {
			continue
		}
		proto := c.Frontend.Protocol.Number()
		frontend := netip.AddrPortFrom(c.Frontend.IP, c.Frontend.Port)
		// A forward entry already there is a connection this dataplane
		// NATed since the take-over began, on ports an older connection
		// used: it is the newer one, kept.
		if fam.hasConn(c.Client, frontend, proto, ctDirFwd) {
			continue
		}
		// Reverse first: a forward entry without it would NAT requests
		// whose replies are not un-NATed.
		if err := fam.conntrack.Put(fam.ctKey(c.Backend, c.Client, proto, ctDirRev), fam.ctVal(frontend, s.val.Id)); err != nil {
			errs = append(errs, fmt.Errorf("connection %s -> %s: %w", c.Client, c.Frontend, err))
			continue
		}
		err := fam.conntrack.Update(fam.ctKey(c.Client, frontend, proto, ctDirFwd), fam.ctVal(c.Backend, s.val.Id), ebpf.UpdateNoExist)
		if err != nil && !errors.Is(err, ebpf.ErrKeyExist) {
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
	for _, name := range []string{nsxMapNsxServices, nsxMapNsxServices6} {
		if err := drain(filepath.Join(pinDir, name)); err != nil {
			return fmt.Errorf("ebpf dataplane: drain: %w", err)
		}
	}
	return nil
}

// drain empties the services map pinned at pin (either family: only the
// keys are read, as bytes). No pin (an older version had no IPv6 maps):
// nothing to do.
func drain(pin string) error {
	m, err := ebpf.LoadPinnedMap(pin, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer m.Close()
	var keys [][]byte
	var k, v []byte
	it := m.Iterate()
	for it.Next(&k, &v) {
		keys = append(keys, append([]byte(nil), k...))
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read %s: %w", filepath.Base(pin), err)
	}
	for _, k := range keys {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("%s: %w", filepath.Base(pin), err)
		}
	}
	return nil
}

// Pinned says whether pinDir holds the eBPF dataplane's maps.
func Pinned(pinDir string) bool {
	_, err := os.Stat(filepath.Join(pinDir, nsxMapNsxServices))
	return err == nil
}
