package ebpf

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"go.uber.org/zap"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
	"github.com/nsx-ujo/nsx-ujo/pkg/agent/ports"
	"github.com/nsx-ujo/nsx-ujo/pkg/ovsdb"
)

// Options configure the eBPF backend.
type Options struct {
	PinDir string // [nsx_kube_proxy] bpf_pin_dir
	Sizes  MapSizes
	// HairpinIP, HairpinIP6: see LoadOptions.
	HairpinIP, HairpinIP6 netip.Addr
	// Bridge and OVSRunDir locate the OVS ports whose external_ids record
	// the node's pods (netns, ifname): pods that existed before the proxy
	// started get their programs attached at the first Sync.
	Bridge    string
	OVSRunDir string
	// NodeNetns is the network namespace holding the node's interface on
	// Bridge (default: this process's, as in the DaemonSet).
	NodeNetns string
	Timeout   time.Duration
	Log       *zap.Logger
}

const (
	flagAffinity      = 1
	flagDrop          = 2
	flagExternal      = 4
	flagRanges        = 8
	ctDirFwd          = 0
	ctDirRev          = 1
	ctDirHairpinReply = 2
	ctFlagHairpin     = 1 // CT_F_*: what a conntrack entry records
	ctFlagExternal    = 2
	ctFlagSNAT        = 4
)

// installedSvc is what the maps hold for one frontend, in the maps of its
// address family.
type installedSvc struct {
	src      *dataplane.Frontend
	key      dataplane.FrontendKey
	val      svcVal
	backends []netip.AddrPort // slot i holds backends[i]
	ranges   []netip.Prefix   // loadBalancerSourceRanges
	members  []netip.AddrPort // with affinity: the backends, for the affinity check
}

// Backend implements dataplane.ServiceBackend with the TC programs and
// their maps. Writes keep every packet consistent: a frontend's backend
// slots are written before the service entry that counts them, stale
// slots are deleted after it, and a removed frontend's entry goes before
// its slots.
type Backend struct {
	opts Options
	log  *zap.Logger
	objs *Objects

	ids *dataplane.IDs // frontend ids: the key of their backend slots

	installed map[dataplane.FrontendKey]*installedSvc
	adopted   bool
	stats     Stats
}

// Stats count what the backend wrote.
type Stats struct {
	MapWrites   int // element updates and deletes
	LastChanges int // of the last Sync
	Attached    int // pods attached at start
}

var _ dataplane.ServiceBackend = (*Backend)(nil)

// LoadOptions are what the backend loads the programs with; the agent
// loads them the same way.
func (o Options) LoadOptions() LoadOptions {
	return LoadOptions{PinDir: o.PinDir, Sizes: o.Sizes, HairpinIP: o.HairpinIP, HairpinIP6: o.HairpinIP6}
}

// New loads the programs and opens (or creates) the pinned maps.
func New(o Options) (*Backend, error) {
	if o.PinDir == "" {
		return nil, errors.New("ebpf dataplane: a bpf_pin_dir is required")
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	if o.Timeout == 0 {
		o.Timeout = 5 * time.Second
	}
	b := &Backend{opts: o, log: o.Log}
	if err := b.load(); err != nil {
		return nil, err
	}
	return b, nil
}

func (b *Backend) load() error {
	objs, err := Load(b.opts.LoadOptions())
	if err != nil {
		return err
	}
	b.objs = objs
	b.ids = dataplane.NewIDs(maxID)
	b.installed = map[dataplane.FrontendKey]*installedSvc{}
	b.adopted = false
	return nil
}

// Name implements dataplane.ServiceBackend.
func (b *Backend) Name() string { return "ebpf" }

// Stats returns the counters.
func (b *Backend) Stats() Stats { return b.stats }

// Close releases the process's references; pinned maps and links stay, so
// the programs keep serving while the proxy restarts.
func (b *Backend) Close() error {
	if b.objs == nil {
		return nil
	}
	return b.objs.Close()
}

// maxID bounds the frontend ids: the services map never holds more.
const maxID = 1 << 24

func (b *Backend) desired(f *dataplane.Frontend) (*installedSvc, error) {
	id, err := b.ids.Assign(f.Key)
	if err != nil {
		return nil, err
	}
	fam := b.objs.family(f.Key.IP.Is6())
	s := &installedSvc{src: f, key: f.Key}
	s.val = svcVal{Id: id}
	if f.AffinityTimeout > 0 {
		s.val.Flags |= flagAffinity
		s.val.AffinitySec = uint32(f.AffinityTimeout.Seconds())
	}
	if f.Kind.External() {
		s.val.Flags |= flagExternal
		if fam.has(f.SNAT) {
			s.val.SNAT = f.SNAT
		}
		for _, r := range f.SourceRanges {
			if fam.has(r.Addr()) {
				s.ranges = append(s.ranges, r.Masked())
			}
		}
		if len(f.SourceRanges) > 0 {
			// With only other-family ranges nothing of this family passes.
			s.val.Flags |= flagRanges
		}
	}
	for _, e := range f.Endpoints {
		ep := netip.AddrPortFrom(e.IP, e.Port)
		if !fam.has(e.IP) {
			// The model gives a frontend endpoints of its own family; one
			// of the other could never be reached by rewriting addresses.
			continue
		}
		s.backends = append(s.backends, ep)
		if s.val.Flags&flagAffinity != 0 {
			s.members = append(s.members, ep)
		}
	}
	s.val.Count = uint16(len(s.backends))
	if len(s.backends) == 0 && f.IfEmpty == dataplane.Drop {
		s.val.Flags |= flagDrop
	}
	return s, nil
}

// Sync implements dataplane.ServiceBackend.
func (b *Backend) Sync(ctx context.Context, m *dataplane.Model, opts dataplane.SyncOptions) error {
	if b.objs == nil {
		if err := b.load(); err != nil {
			return err
		}
	}
	b.stats.LastChanges = 0
	m, unservable := dataplane.Servable(m, func(k dataplane.FrontendKey) *dataplane.Frontend {
		if s := b.installed[k]; s != nil {
			return s.src
		}
		return nil
	})
	if !b.adopted || opts.Full {
		first := !b.adopted
		if err := b.adopt(); err != nil {
			return err
		}
		if first && len(b.installed) > 0 {
			// A restarted proxy: said once, for whoever reads the log
			// after a crash.
			b.log.Info("found the services of an earlier nsx-kube-proxy in the pinned maps; they keep forwarding while this sync brings them to the model",
				zap.String("pinDir", b.opts.PinDir), zap.Int("frontends", len(b.installed)))
		}
		b.attachExisting(ctx)
	}
	refused := unservable
	for k, f := range m.Frontends {
		cur := b.installed[k]
		if cur != nil && cur.src == f && !opts.Full {
			continue
		}
		want, err := b.desired(f)
		if err == nil {
			err = b.write(cur, want)
		}
		if err != nil {
			refused = append(refused, dataplane.FrontendError{Key: k, Name: f.Name, Err: fmt.Errorf("ebpf dataplane: %w", err)})
			continue
		}
		if cur != nil && k.Protocol == dataplane.UDP {
			b.flushGoneUDP(cur, want)
		}
		b.installed[k] = want
	}
	for k, cur := range b.installed {
		if _, ok := m.Frontends[k]; ok {
			continue
		}
		if err := b.remove(cur, true); err != nil {
			name := dataplane.ServicePortName{}
			if cur.src != nil {
				name = cur.src.Name
			}
			refused = append(refused, dataplane.FrontendError{Key: k, Name: name, Err: fmt.Errorf("ebpf dataplane: remove: %w", err)})
			continue
		}
		if k.Protocol == dataplane.UDP {
			b.flushGoneUDP(cur, nil)
		}
		delete(b.installed, k)
		b.ids.Release(k)
	}
	if len(refused) > 0 {
		// Map full or a kernel error, per frontend: the others are
		// applied; the caller reports them, and what was not written is
		// retried next Sync.
		return &dataplane.FrontendErrors{Failed: refused}
	}
	return nil
}

// write applies want over cur (nil: new) in the packet-safe order.
func (b *Backend) write(cur, want *installedSvc) error {
	fam := b.objs.family(want.key.IP.Is6())
	var old []netip.AddrPort
	if cur != nil && cur.val.Id == want.val.Id {
		old = cur.backends
	}
	// 1. Slots, only those that differ.
	var slots []uint32
	var eps []netip.AddrPort
	for i, be := range want.backends {
		if i < len(old) && old[i] == be {
			continue
		}
		slots = append(slots, uint32(i))
		eps = append(eps, be)
	}
	n, err := fam.putBackends(want.val.Id, slots, eps)
	b.count(n)
	if err != nil {
		return err
	}
	// Source ranges and affinity members too, before the entry that
	// makes them checked.
	var oldRanges []netip.Prefix
	var oldMembers []netip.AddrPort
	if cur != nil && cur.val.Id == want.val.Id {
		oldRanges, oldMembers = cur.ranges, cur.members
	}
	for _, r := range want.ranges {
		if !slices.Contains(oldRanges, r) {
			if err := fam.putRange(want.val.Id, r); err != nil {
				return err
			}
			b.count(1)
		}
	}
	have := make(map[netip.AddrPort]bool, len(oldMembers))
	for _, e := range oldMembers {
		have[e] = true
	}
	for _, e := range want.members {
		if !have[e] {
			if err := fam.putMember(want.val.Id, e); err != nil {
				return err
			}
			b.count(1)
		}
	}
	// Its new-connection counter, from zero, before the entry that makes
	// the program count.
	if cur == nil || cur.val.Id != want.val.Id {
		if err := b.zeroCounter(want.val.Id, ebpf.UpdateAny); err != nil {
			return err
		}
	}
	// 2. The service entry that makes them visible.
	if cur == nil || cur.val != want.val || cur.key != want.key {
		if err := fam.putService(want.key, want.val); err != nil {
			return err
		}
		b.count(1)
	}
	// 3. Stale slots, ranges and members, no longer counted.
	if cur != nil && cur.val.Id != want.val.Id {
		// Written under another id (never by this process: ids stay with
		// their key): nothing of it is current.
		for _, r := range cur.ranges {
			if err := fam.deleteRange(cur.val.Id, r); err != nil {
				return err
			}
		}
		for _, e := range cur.members {
			if err := fam.deleteMember(cur.val.Id, e); err != nil {
				return err
			}
		}
	}
	for i := len(want.backends); i < len(old); i++ {
		if err := fam.deleteBackend(want.val.Id, uint32(i)); err != nil {
			return err
		}
		b.count(1)
	}
	for _, r := range oldRanges {
		if !slices.Contains(want.ranges, r) {
			if err := fam.deleteRange(want.val.Id, r); err != nil {
				return err
			}
			b.count(1)
		}
	}
	keep := make(map[netip.AddrPort]bool, len(want.members))
	for _, e := range want.members {
		keep[e] = true
	}
	for _, e := range oldMembers {
		if !keep[e] {
			if err := fam.deleteMember(want.val.Id, e); err != nil {
				return err
			}
			b.count(1)
		}
	}
	return nil
}

// zeroCounter writes a frontend's new-connection counter as zero on every
// CPU (flags: ebpf.UpdateNoExist keeps one that exists).
func (b *Backend) zeroCounter(id uint32, flags ebpf.MapUpdateFlags) error {
	n, err := ebpf.PossibleCPU()
	if err != nil {
		return fmt.Errorf("connection counters map: %w", err)
	}
	if err := b.objs.NsxSvcConns.Update(id, make([]uint64, n), flags); err != nil && !errors.Is(err, ebpf.ErrKeyExist) {
		return fmt.Errorf("connection counters map: %w", err)
	}
	b.count(1)
	return nil
}

// remove deletes a frontend's entries; ownsID says its id is its own (an
// orphan's may be another frontend's), so its counter goes too.
func (b *Backend) remove(cur *installedSvc, ownsID bool) error {
	fam := b.objs.family(cur.key.IP.Is6())
	if err := fam.deleteService(cur.key); err != nil {
		return err
	}
	b.count(1)
	for i := range cur.backends {
		if err := fam.deleteBackend(cur.val.Id, uint32(i)); err != nil {
			return err
		}
		b.count(1)
	}
	if ownsID {
		if err := b.objs.NsxSvcConns.Delete(cur.val.Id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("connection counters map: %w", err)
		}
		b.count(1)
	}
	for _, r := range cur.ranges {
		if err := fam.deleteRange(cur.val.Id, r); err != nil {
			return err
		}
		b.count(1)
	}
	for _, e := range cur.members {
		if err := fam.deleteMember(cur.val.Id, e); err != nil {
			return err
		}
		b.count(1)
	}
	return nil
}

func (b *Backend) count(n int) {
	b.stats.MapWrites += n
	b.stats.LastChanges += n
}

// adopt reads what the pinned maps of both families hold (left by an
// earlier process), so service ids stay and nothing still wanted is
// rewritten or removed.
func (b *Backend) adopt() error {
	b.installed = map[dataplane.FrontendKey]*installedSvc{}
	b.ids = dataplane.NewIDs(maxID)
	var orphans []*installedSvc
	bySvc := map[uint32]*installedSvc{}
	for _, v6 := range []bool{false, true} {
		fam := b.objs.family(v6)
		var lookupErr error
		err := fam.eachService(func(fk dataplane.FrontendKey, v svcVal, ok bool) {
			s := &installedSvc{key: fk, val: v}
			if !ok || !b.ids.Adopt(fk, v.Id) {
				// Not an entry this version writes (an unknown protocol, an
				// id out of range or twice): removed, as a frontend not
				// wanted.
				orphans = append(orphans, s)
				return
			}
			for i := 0; i < int(v.Count); i++ {
				be, err := fam.lookupBackend(v.Id, uint32(i))
				if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
					lookupErr = fmt.Errorf("%s backends map: frontend %s slot %d: %w", fam.name(), fk, i, err)
				}
				s.backends = append(s.backends, be) // a hole is rewritten by the diff
			}
			b.installed[fk] = s
			bySvc[v.Id] = s
		})
		if err == nil {
			err = lookupErr
		}
		if err != nil {
			return fmt.Errorf("ebpf dataplane: %w", err)
		}
	}
	for _, o := range orphans {
		owns := !b.ids.InUse(o.val.Id)
		if owns { // its slots are nobody else's
			o.backends = make([]netip.AddrPort, o.val.Count)
		}
		if err := b.remove(o, owns); err != nil {
			return fmt.Errorf("ebpf dataplane: %w", err)
		}
	}
	// Source ranges and affinity members: kept for the services adopted
	// (in their own family), removed for the others.
	for _, v6 := range []bool{false, true} {
		fam := b.objs.family(v6)
		if err := adoptEntries(v6, bySvc, fam.eachRange,
			func(s *installedSvc, p netip.Prefix) { s.ranges = append(s.ranges, p) }, fam.deleteRange); err != nil {
			return err
		}
		if err := adoptEntries(v6, bySvc, fam.eachMember,
			func(s *installedSvc, e netip.AddrPort) { s.members = append(s.members, e) }, fam.deleteMember); err != nil {
			return err
		}
	}
	// Counters: kept for the frontends still there (created for those an
	// older version installed without one), removed for the others.
	var id uint32
	var perCPU []uint64
	var gone []uint32
	it := b.objs.NsxSvcConns.Iterate()
	for it.Next(&id, &perCPU) {
		if bySvc[id] == nil {
			gone = append(gone, id)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("ebpf dataplane: read connection counters map: %w", err)
	}
	for _, id := range gone {
		if err := b.objs.NsxSvcConns.Delete(id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("ebpf dataplane: connection counters map: %w", err)
		}
	}
	for id := range bySvc {
		if err := b.zeroCounter(id, ebpf.UpdateNoExist); err != nil {
			return fmt.Errorf("ebpf dataplane: %w", err)
		}
	}
	b.adopted = true
	return nil
}

// adoptEntries reads a family's map keyed by service id (source ranges,
// affinity members) into the adopted services of that family, and deletes
// the entries of services that are gone.
func adoptEntries[T any](v6 bool, bySvc map[uint32]*installedSvc, each func(func(uint32, T)) error,
	add func(*installedSvc, T), del func(uint32, T) error) error {
	type entry struct {
		id uint32
		v  T
	}
	var orphans []entry
	if err := each(func(id uint32, v T) {
		if s := bySvc[id]; s != nil && s.key.IP.Is6() == v6 {
			add(s, v)
			return
		}
		orphans = append(orphans, entry{id, v})
	}); err != nil {
		return fmt.Errorf("ebpf dataplane: %w", err)
	}
	for _, o := range orphans {
		if err := del(o.id, o.v); err != nil {
			return fmt.Errorf("ebpf dataplane: %w", err)
		}
	}
	return nil
}

// flushGoneUDP deletes the conntrack entries of UDP endpoints that left
// the frontend, so a client's next datagram picks a live backend.
func (b *Backend) flushGoneUDP(cur, want *installedSvc) {
	var wantEps []netip.AddrPort
	if want != nil {
		wantEps = want.backends
	}
	gone := map[netip.AddrPort]bool{}
	for _, e := range dataplane.GoneEndpoints(cur.backends, wantEps) {
		gone[e] = true
	}
	if len(gone) == 0 {
		return
	}
	if n := b.objs.family(cur.key.IP.Is6()).flushUDP(cur.val.Id, gone); n > 0 {
		b.log.Debug("flushed conntrack of removed UDP endpoints", zap.Int("entries", n))
	}
}

// attachExisting attaches the programs to every pod the OVS ports record
// (netns, ifname), for pods created before the proxy started or while it
// was down. A pod that cannot be attached is logged, not fatal.
func (b *Backend) attachExisting(ctx context.Context) {
	if b.opts.OVSRunDir == "" || b.opts.Bridge == "" {
		return
	}
	db, err := ovsdb.Dial(filepath.Join(b.opts.OVSRunDir, "db.sock"), ovsdb.Options{Timeout: b.opts.Timeout, Logger: b.log})
	if err != nil {
		b.log.Warn("cannot list the node's pods from OVS", zap.Error(err))
		return
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(ctx, b.opts.Timeout)
	defer cancel()
	pods, err := ports.New(db, b.opts.Bridge).List(ctx)
	if err != nil {
		b.log.Warn("cannot list the node's pods from OVS", zap.Error(err))
		return
	}
	live := map[string]bool{nodeLinkName(b.opts.Bridge): true}
	b.attachNode()
	for _, p := range pods {
		live[p.Name] = true
		if err := b.objs.AttachPod(p.Netns, p.IfName, p.Name); err != nil {
			b.log.Warn("attach programs to pod", zap.String("port", p.Name), zap.String("pod", p.PodNamespace+"/"+p.PodName), zap.Error(err))
			continue
		}
		b.stats.Attached++
	}
	// Links of pods that are gone (DEL missed while the agent was down).
	attached, _ := AttachedPods(b.opts.PinDir)
	for _, name := range attached {
		if !live[name] {
			_ = DetachPod(b.opts.PinDir, name)
		}
	}
}

// nodeLinkName names the pinned links of the node's own interface; pod
// port names start with "nsx", so the two never meet.
func nodeLinkName(bridge string) string { return "node-" + bridge }

// attachNode attaches the programs to the node's interface on the bridge
// (its internal port, named like the bridge, which holds the node's
// addresses): what the node itself and hostNetwork pods send to a
// ClusterIP leaves through its egress, the replies come back through its
// ingress, where clients outside the node also reach the external
// frontends. Failing is logged; the next full sync tries again.
func (b *Backend) attachNode() {
	netns := b.opts.NodeNetns
	if netns == "" {
		netns = "/proc/self/ns/net"
	}
	if err := b.objs.AttachNode(netns, b.opts.Bridge, nodeLinkName(b.opts.Bridge)); err != nil {
		b.log.Warn("attach programs to the node's interface: traffic from the node to ClusterIPs is not served",
			zap.String("interface", b.opts.Bridge), zap.Error(err))
	}
}

// Cleanup implements dataplane.ServiceBackend: detaches every program and
// removes every pin (maps and links) this dataplane created.
func (b *Backend) Cleanup(ctx context.Context) error {
	if b.objs != nil {
		b.objs.Close()
		b.objs = nil
	}
	b.installed, b.adopted = map[dataplane.FrontendKey]*installedSvc{}, false
	return CleanupPins(b.opts.PinDir)
}

// CleanupPins detaches every pinned link and removes every pin under
// pinDir (used when a node switches to the OVS dataplane). Idempotent.
func CleanupPins(pinDir string) error {
	attached, err := AttachedPods(pinDir)
	if err != nil {
		return err
	}
	var errs []error
	for _, name := range attached {
		errs = append(errs, DetachPod(pinDir, name))
	}
	_ = os.Remove(filepath.Join(pinDir, "links"))
	spec, err := loadNsx()
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("ebpf: load object: %w", err))...)
	}
	for m := range spec.Maps { // every map the object pins, no list to keep
		if strings.HasPrefix(m, ".") {
			continue // .rodata and friends are never pinned
		}
		if err := os.Remove(filepath.Join(pinDir, m)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
