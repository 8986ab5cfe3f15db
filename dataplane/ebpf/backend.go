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
	// HairpinIP: see LoadOptions.
	HairpinIP netip.Addr
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

// installedSvc is what the maps hold for one frontend.
type installedSvc struct {
	src      *dataplane.Frontend
	key      nsxSvcKey
	val      nsxSvcVal
	backends []nsxBeVal
	ranges   []nsxRangeKey  // loadBalancerSourceRanges
	members  []nsxMemberKey // with affinity: the backends, for the affinity check
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
	return LoadOptions{PinDir: o.PinDir, Sizes: o.Sizes, HairpinIP: o.HairpinIP}
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

func svcKeyOf(k dataplane.FrontendKey) nsxSvcKey {
	return nsxSvcKey{Vip: be32(k.IP), Port: be16(k.Port), Proto: k.Protocol.Number()}
}

// maxID bounds the frontend ids: the services map never holds more.
const maxID = 1 << 24

func (b *Backend) desired(f *dataplane.Frontend) (*installedSvc, error) {
	id, err := b.ids.Assign(f.Key)
	if err != nil {
		return nil, err
	}
	s := &installedSvc{src: f, key: svcKeyOf(f.Key)}
	s.val = nsxSvcVal{Id: id, Count: uint16(len(f.Endpoints))}
	if f.AffinityTimeout > 0 {
		s.val.Flags |= flagAffinity
		s.val.AffinitySec = uint32(f.AffinityTimeout.Seconds())
	}
	if len(f.Endpoints) == 0 && f.IfEmpty == dataplane.Drop {
		s.val.Flags |= flagDrop
	}
	if f.Kind.External() {
		s.val.Flags |= flagExternal
		if f.SNAT.Is4() {
			s.val.SnatIp = be32(f.SNAT)
		}
		for _, r := range f.SourceRanges {
			if r.Addr().Is4() {
				s.ranges = append(s.ranges, nsxRangeKey{Prefixlen: 32 + uint32(r.Bits()), SvcId: s.val.Id, Ip: be32(r.Masked().Addr())})
			}
		}
		if len(f.SourceRanges) > 0 {
			// With only other-family ranges nothing of this family passes.
			s.val.Flags |= flagRanges
		}
	}
	for _, e := range f.Endpoints {
		be := nsxBeVal{Ip: be32(e.IP), Port: be16(e.Port)}
		s.backends = append(s.backends, be)
		if s.val.Flags&flagAffinity != 0 {
			s.members = append(s.members, nsxMemberKey{SvcId: s.val.Id, Ip: be.Ip, Port: be.Port})
		}
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
		if !k.IP.Is4() {
			continue // IPv6 frontends are not served by this dataplane yet
		}
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
	m := b.objs
	var old []nsxBeVal
	if cur != nil && cur.val.Id == want.val.Id {
		old = cur.backends
	}
	// 1. Slots, only those that differ.
	var keys []nsxBeKey
	var vals []nsxBeVal
	for i, be := range want.backends {
		if i < len(old) && old[i] == be {
			continue
		}
		keys = append(keys, nsxBeKey{SvcId: want.val.Id, Slot: uint32(i)})
		vals = append(vals, be)
	}
	if err := b.putBackends(keys, vals); err != nil {
		return err
	}
	// Source ranges and affinity members too, before the entry that
	// makes them checked.
	var oldRanges []nsxRangeKey
	var oldMembers []nsxMemberKey
	if cur != nil {
		oldRanges, oldMembers = cur.ranges, cur.members
	}
	for _, r := range want.ranges {
		if !slices.Contains(oldRanges, r) {
			if err := m.NsxRanges.Put(r, uint8(1)); err != nil {
				return fmt.Errorf("source ranges map: %w", err)
			}
			b.count(1)
		}
	}
	have := make(map[nsxMemberKey]bool, len(oldMembers))
	for _, k := range oldMembers {
		have[k] = true
	}
	for _, k := range want.members {
		if !have[k] {
			if err := m.NsxMembers.Put(k, uint8(1)); err != nil {
				return fmt.Errorf("affinity members map: %w", err)
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
		if err := m.NsxServices.Put(want.key, want.val); err != nil {
			return fmt.Errorf("services map: %w", err)
		}
		b.count(1)
	}
	// 3. Stale slots and ranges, no longer counted.
	for i := len(want.backends); i < len(old); i++ {
		if err := m.NsxBackends.Delete(nsxBeKey{SvcId: want.val.Id, Slot: uint32(i)}); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("backends map: %w", err)
		}
		b.count(1)
	}
	for _, r := range oldRanges {
		if !slices.Contains(want.ranges, r) {
			if err := b.deleteRange(r); err != nil {
				return err
			}
		}
	}
	keep := make(map[nsxMemberKey]bool, len(want.members))
	for _, k := range want.members {
		keep[k] = true
	}
	for _, k := range oldMembers {
		if !keep[k] {
			if err := b.deleteMember(k); err != nil {
				return err
			}
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

func (b *Backend) deleteMember(k nsxMemberKey) error {
	if err := b.objs.NsxMembers.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("affinity members map: %w", err)
	}
	b.count(1)
	return nil
}

func (b *Backend) deleteRange(r nsxRangeKey) error {
	if err := b.objs.NsxRanges.Delete(r); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("source ranges map: %w", err)
	}
	b.count(1)
	return nil
}

func (b *Backend) putBackends(keys []nsxBeKey, vals []nsxBeVal) error {
	if len(keys) == 0 {
		return nil
	}
	if len(keys) > 1 {
		if n, err := b.objs.NsxBackends.BatchUpdate(keys, vals, nil); err == nil {
			b.count(n)
			return nil
		}
	}
	for i := range keys {
		if err := b.objs.NsxBackends.Put(keys[i], vals[i]); err != nil {
			return fmt.Errorf("backends map: %w", err)
		}
		b.count(1)
	}
	return nil
}

// remove deletes a frontend's entries; ownsID says its id is its own (an
// orphan's may be another frontend's), so its counter goes too.
func (b *Backend) remove(cur *installedSvc, ownsID bool) error {
	if err := b.objs.NsxServices.Delete(cur.key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("services map: %w", err)
	}
	b.count(1)
	for i := range cur.backends {
		if err := b.objs.NsxBackends.Delete(nsxBeKey{SvcId: cur.val.Id, Slot: uint32(i)}); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("backends map: %w", err)
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
		if err := b.deleteRange(r); err != nil {
			return err
		}
	}
	for _, k := range cur.members {
		if err := b.deleteMember(k); err != nil {
			return err
		}
	}
	return nil
}

func (b *Backend) count(n int) {
	b.stats.MapWrites += n
	b.stats.LastChanges += n
}

// adopt reads what the pinned maps hold (left by an earlier process), so
// service ids stay and nothing still wanted is rewritten or removed.
func (b *Backend) adopt() error {
	b.installed = map[dataplane.FrontendKey]*installedSvc{}
	b.ids = dataplane.NewIDs(maxID)
	var k nsxSvcKey
	var v nsxSvcVal
	type orphan struct {
		key nsxSvcKey
		val nsxSvcVal
	}
	var orphanSvcs []orphan
	it := b.objs.NsxServices.Iterate()
	for it.Next(&k, &v) {
		proto, ok := dataplane.ProtocolOf(k.Proto)
		fk := dataplane.FrontendKey{IP: addrOf(k.Vip), Port: portOf(k.Port), Protocol: proto}
		if !ok || !b.ids.Adopt(fk, v.Id) {
			// Not an entry this version writes (an unknown protocol, an id
			// out of range or twice): removed, as a frontend not wanted.
			orphanSvcs = append(orphanSvcs, orphan{k, v})
			continue
		}
		s := &installedSvc{key: k, val: v}
		for i := 0; i < int(v.Count); i++ {
			var be nsxBeVal
			if err := b.objs.NsxBackends.Lookup(nsxBeKey{SvcId: v.Id, Slot: uint32(i)}, &be); err != nil {
				be = nsxBeVal{} // a hole: rewritten by the diff
			}
			s.backends = append(s.backends, be)
		}
		b.installed[fk] = s
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("ebpf dataplane: read services map: %w", err)
	}
	for _, o := range orphanSvcs {
		gone := &installedSvc{key: o.key, val: o.val}
		if !b.ids.InUse(o.val.Id) { // its slots are nobody else's
			gone.backends = make([]nsxBeVal, o.val.Count)
		}
		if err := b.remove(gone, !b.ids.InUse(o.val.Id)); err != nil {
			return fmt.Errorf("ebpf dataplane: %w", err)
		}
	}
	bySvc := map[uint32]*installedSvc{}
	for _, s := range b.installed {
		bySvc[s.val.Id] = s
	}
	if err := adoptPerService(b.objs.NsxRanges, bySvc, "source ranges",
		func(k nsxRangeKey) uint32 { return k.SvcId },
		func(s *installedSvc, k nsxRangeKey) { s.ranges = append(s.ranges, k) }, b.deleteRange); err != nil {
		return err
	}
	if err := adoptPerService(b.objs.NsxMembers, bySvc, "affinity members",
		func(k nsxMemberKey) uint32 { return k.SvcId },
		func(s *installedSvc, k nsxMemberKey) { s.members = append(s.members, k) }, b.deleteMember); err != nil {
		return err
	}
	// Counters: kept for the frontends still there (created for those an
	// older version installed without one), removed for the others.
	var id uint32
	var perCPU []uint64
	var gone []uint32
	it = b.objs.NsxSvcConns.Iterate()
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

// adoptPerService reads a map keyed by service id (value: a byte) into the
// adopted services, and deletes the entries of services that are gone.
func adoptPerService[K any](m *ebpf.Map, bySvc map[uint32]*installedSvc, what string,
	svcID func(K) uint32, add func(*installedSvc, K), del func(K) error) error {
	var k K
	var one uint8
	var orphans []K
	it := m.Iterate()
	for it.Next(&k, &one) {
		if s := bySvc[svcID(k)]; s != nil {
			add(s, k)
		} else {
			orphans = append(orphans, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("ebpf dataplane: read %s map: %w", what, err)
	}
	for _, k := range orphans {
		if err := del(k); err != nil {
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
		wantEps = addrPorts(want.backends)
	}
	gone := map[nsxBeVal]bool{}
	for _, e := range dataplane.GoneEndpoints(addrPorts(cur.backends), wantEps) {
		gone[nsxBeVal{Ip: be32(e.Addr()), Port: be16(e.Port())}] = true
	}
	if len(gone) == 0 {
		return
	}
	var stale []nsxCtKey
	var k nsxCtKey
	var v nsxCtVal
	it := b.objs.NsxConntrack.Iterate()
	for it.Next(&k, &v) {
		if k.Proto != dataplane.ProtoUDP || v.SvcId != cur.val.Id {
			continue
		}
		switch {
		case k.Dir == ctDirFwd && gone[nsxBeVal{Ip: v.Ip, Port: v.Port}]:
			stale = append(stale, k)
		case k.Dir != ctDirFwd && gone[nsxBeVal{Ip: k.Src, Port: k.Sport}]:
			stale = append(stale, k)
		}
	}
	for _, k := range stale {
		_ = b.objs.NsxConntrack.Delete(k)
	}
	if len(stale) > 0 {
		b.log.Debug("flushed conntrack of removed UDP endpoints", zap.Int("entries", len(stale)))
	}
}

func addrPorts(bs []nsxBeVal) []netip.AddrPort {
	out := make([]netip.AddrPort, len(bs))
	for i, be := range bs {
		out[i] = netip.AddrPortFrom(addrOf(be.Ip), portOf(be.Port))
	}
	return out
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
