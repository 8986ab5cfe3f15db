package ovs

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
	libovs "github.com/nsx-ujo/nsx-ujo/pkg/ovs"
)

// Options configure the OVS backend.
type Options struct {
	Bridge    string // ovs_bridge
	OVSRunDir string // holds db.sock and <bridge>.mgmt
	NodeName  string // endpoints on this node can hairpin
	// HairpinIP is the source a pod sees when it reaches itself through a
	// Service; default DefaultHairpinIP.
	HairpinIP netip.Addr
	Timeout   time.Duration // per OVS operation
	Log       *zap.Logger
}

// Backend implements dataplane.ServiceBackend with OpenFlow on the
// integration bridge. See the package comment for the pipeline.
type Backend struct {
	opts Options
	log  *zap.Logger
	of   *ofctl
	db   *libovs.Client
	co   compileOptions

	ids  map[dataplane.FrontendKey]uint32
	used map[uint32]bool
	next uint32

	fronts map[dataplane.FrontendKey]*compiled
	refs   map[uint64]int  // desired flow cookie -> frontends using it
	flows  map[uint64]Flow // desired flows
	groups map[uint32]*Group

	installed       map[uint64]bool   // flow cookies on the bridge
	installedGroups map[uint32]string // group id -> signature
	adopted         bool

	reject *rejecter
	stats  Stats
}

// Stats count what the backend sent to OVS.
type Stats struct {
	Bundles      int // ovs-ofctl bundle executions (OVS round-trips that write)
	FlowChanges  int
	GroupChanges int
	LastChanges  int // flow + group changes of the last Sync
}

// Stats returns the counters.
func (b *Backend) Stats() Stats { return b.stats }

var _ dataplane.ServiceBackend = (*Backend)(nil)

// New returns a backend; it touches the bridge only on the first Sync.
func New(o Options) (*Backend, error) {
	if o.Bridge == "" || o.OVSRunDir == "" {
		return nil, errors.New("ovs dataplane: bridge and OVS run dir are required")
	}
	if o.Timeout == 0 {
		o.Timeout = 5 * time.Second
	}
	if !o.HairpinIP.IsValid() {
		o.HairpinIP = DefaultHairpinIP
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	db, err := libovs.Dial(filepath.Join(o.OVSRunDir, "db.sock"), o.Timeout)
	if err != nil {
		return nil, fmt.Errorf("ovs dataplane: %w", err)
	}
	b := &Backend{
		opts: o, log: o.Log, db: db,
		of: &ofctl{target: "unix:" + filepath.Join(o.OVSRunDir, o.Bridge+".mgmt")},
		co: compileOptions{NodeName: o.NodeName, HairpinIP: o.HairpinIP},
	}
	b.reset()
	b.reject = newRejecter(filepath.Join(o.OVSRunDir, o.Bridge+".mgmt"), o.Log.Named("reject"))
	return b, nil
}

// Name implements dataplane.ServiceBackend.
func (b *Backend) Name() string { return "ovs" }

// Close stops the reject responder and the OVSDB connection.
func (b *Backend) Close() error {
	b.reject.stop()
	return b.db.Close()
}

func (b *Backend) reset() {
	b.fronts = map[dataplane.FrontendKey]*compiled{}
	b.refs = map[uint64]int{}
	b.flows = map[uint64]Flow{}
	b.groups = map[uint32]*Group{}
	b.installed = map[uint64]bool{}
	b.installedGroups = map[uint32]string{}
	if b.ids == nil {
		b.ids = map[dataplane.FrontendKey]uint32{}
		b.used = map[uint32]bool{}
	}
}

func (b *Backend) idFor(k dataplane.FrontendKey) (uint32, error) {
	if id, ok := b.ids[k]; ok {
		return id, nil
	}
	for i := 0; i < maxOwner; i++ {
		b.next = b.next%maxOwner + 1
		if !b.used[b.next] {
			b.ids[k], b.used[b.next] = b.next, true
			return b.next, nil
		}
	}
	return 0, errors.New("ovs dataplane: out of frontend ids")
}

func (b *Backend) releaseID(k dataplane.FrontendKey) {
	if id, ok := b.ids[k]; ok {
		delete(b.used, id)
		delete(b.ids, k)
	}
}

// Sync implements dataplane.ServiceBackend.
func (b *Backend) Sync(ctx context.Context, m *dataplane.Model, opts dataplane.SyncOptions) error {
	b.reject.ensure()
	ctx, cancel := context.WithTimeout(ctx, 10*b.opts.Timeout)
	defer cancel()
	if !b.adopted || opts.Full {
		return b.fullSync(ctx, m)
	}
	return b.incrementalSync(ctx, m)
}

// changes collects what one Sync sends in its bundle.
type changes struct {
	flowDel, flowAdd, groupSet, groupDel []string
	learnedDel                           []string
	nFlows, nGroups                      int
}

func (c *changes) lines() []string {
	// Order inside the atomic bundle: nothing references a group that is
	// not there yet, and no group goes while a flow still points at it.
	out := append([]string{}, c.flowDel...)
	out = append(out, c.learnedDel...)
	out = append(out, c.groupSet...)
	out = append(out, c.flowAdd...)
	return append(out, c.groupDel...)
}

func (c *changes) addFlow(f Flow) {
	c.flowAdd = append(c.flowAdd, fmt.Sprintf("flow add cookie=0x%x,%s", f.Cookie(), f.text()))
	c.nFlows++
}

func (c *changes) delFlow(cookie uint64) {
	c.flowDel = append(c.flowDel, fmt.Sprintf("flow delete cookie=0x%x/-1", cookie))
	c.nFlows++
}

func (c *changes) setGroup(g *Group, exists bool) {
	verb := "add"
	if exists {
		verb = "mod"
	}
	c.groupSet = append(c.groupSet, "group "+verb+" "+g.text())
	c.nGroups++
}

func (c *changes) delGroup(id uint32) {
	c.groupDel = append(c.groupDel, fmt.Sprintf("group delete group_id=%d", id))
	c.nGroups++
}

func (c *changes) delLearned(owner uint32) {
	c.learnedDel = append(c.learnedDel, fmt.Sprintf("flow delete cookie=0x%x/0xffffffff00000000", uint64(compLearned)<<56|uint64(owner)<<32))
}

func (b *Backend) refFlow(f Flow, touched map[uint64]bool) {
	c := f.Cookie()
	b.refs[c]++
	b.flows[c] = f
	touched[c] = true
}

func (b *Backend) unrefFlow(f Flow, touched map[uint64]bool) {
	c := f.Cookie()
	if b.refs[c]--; b.refs[c] <= 0 {
		delete(b.refs, c)
		delete(b.flows, c)
	}
	touched[c] = true
}

func (b *Backend) addCompiled(c *compiled, touched map[uint64]bool) {
	for _, f := range c.flows {
		b.refFlow(f, touched)
	}
	for _, f := range c.shared {
		b.refFlow(f, touched)
	}
	b.groups[c.group.ID] = c.group
}

func (b *Backend) removeCompiled(c *compiled, touched map[uint64]bool) {
	for _, f := range c.flows {
		b.unrefFlow(f, touched)
	}
	for _, f := range c.shared {
		b.unrefFlow(f, touched)
	}
	delete(b.groups, c.group.ID)
}

// incrementalSync touches only frontends whose pointer changed.
func (b *Backend) incrementalSync(ctx context.Context, m *dataplane.Model) error {
	touched := map[uint64]bool{}
	touchedGroups := map[uint32]bool{}
	var removed []dataplane.FrontendKey
	var stale []staleUDP
	for k, f := range m.Frontends {
		old := b.fronts[k]
		if old != nil && old.src == f {
			continue
		}
		id, err := b.idFor(k)
		if err != nil {
			return err
		}
		if old != nil {
			b.removeCompiled(old, touched)
			stale = append(stale, goneUDP(old.src, f)...)
		}
		c := compileFrontend(f, id, b.co)
		b.addCompiled(c, touched)
		b.fronts[k] = c
		touchedGroups[c.group.ID] = true
	}
	for k, c := range b.fronts {
		if _, ok := m.Frontends[k]; !ok {
			b.removeCompiled(c, touched)
			delete(b.fronts, k)
			touchedGroups[c.group.ID] = true
			removed = append(removed, k)
			stale = append(stale, goneUDP(c.src, nil)...)
		}
	}
	if len(touched) == 0 && len(touchedGroups) == 0 {
		b.stats.LastChanges = 0
		return nil
	}
	var ch changes
	for c := range touched {
		want, have := b.refs[c] > 0, b.installed[c]
		switch {
		case want && !have:
			ch.addFlow(b.flows[c])
		case !want && have:
			ch.delFlow(c)
		}
	}
	for id := range touchedGroups {
		b.diffGroup(id, &ch)
	}
	for _, k := range removed {
		ch.delLearned(b.ids[k])
	}
	err := b.apply(ctx, &ch, func() {
		for c := range touched {
			if b.refs[c] > 0 {
				b.installed[c] = true
			} else {
				delete(b.installed, c)
			}
		}
		b.commitGroups(touchedGroups)
		for _, k := range removed {
			b.releaseID(k)
		}
	})
	if err == nil && len(stale) > 0 {
		b.flushUDP(ctx, stale)
	}
	return err
}

func (b *Backend) diffGroup(id uint32, ch *changes) {
	g := b.groups[id]
	sig, have := b.installedGroups[id]
	switch {
	case g != nil && (!have || sig != g.signature()):
		ch.setGroup(g, have)
	case g == nil && have:
		ch.delGroup(id)
	}
}

func (b *Backend) commitGroups(ids map[uint32]bool) {
	for id := range ids {
		if g := b.groups[id]; g != nil {
			b.installedGroups[id] = g.signature()
		} else {
			delete(b.installedGroups, id)
		}
	}
}

// apply sends the bundle; commit records it as installed only on success.
// A failure leaves the record stale, so the next Sync re-reads the bridge.
func (b *Backend) apply(ctx context.Context, ch *changes, commit func()) error {
	lines := ch.lines()
	start := time.Now()
	b.stats.LastChanges = ch.nFlows + ch.nGroups
	if len(lines) > 0 {
		b.stats.Bundles++
		b.stats.FlowChanges += ch.nFlows
		b.stats.GroupChanges += ch.nGroups
	}
	if err := b.of.bundle(ctx, lines); err != nil {
		b.adopted = false
		return fmt.Errorf("ovs dataplane: apply %d flow and %d group changes on %s: %w", ch.nFlows, ch.nGroups, b.opts.Bridge, err)
	}
	commit()
	if len(lines) > 0 {
		b.log.Debug("applied bundle", zap.Int("flowChanges", ch.nFlows), zap.Int("groupChanges", ch.nGroups),
			zap.Duration("took", time.Since(start)))
	}
	return nil
}

// fullSync re-reads the bridge, recompiles everything and applies the
// difference. At start it adopts what an earlier process installed
// (frontend ids from the cookies of the classifier flows), so nothing that
// is still wanted is removed and established connections keep flowing.
func (b *Backend) fullSync(ctx context.Context, m *dataplane.Model) error {
	if !b.adopted {
		if err := b.db.SetFlowTableNames(ctx, b.opts.Bridge, tableNamesMap()); err != nil {
			return err
		}
	}
	dumped, err := b.of.dumpFlows(ctx)
	if err != nil {
		return err
	}
	groups, err := b.of.dumpGroups(ctx)
	if err != nil {
		return err
	}
	if !b.adopted {
		b.adoptIDs(dumped)
	}
	installed := map[uint64]bool{}
	for _, f := range dumped {
		if byte(f.Cookie>>56) == compCompiled {
			installed[f.Cookie] = true
		}
	}
	installedGroups := map[uint32]string{}
	for id, text := range groups {
		installedGroups[id] = groupSignature(text)
	}

	b.reset()
	touched := map[uint64]bool{}
	for _, f := range staticFlows(b.co) {
		b.refFlow(f, touched)
	}
	keys := make([]dataplane.FrontendKey, 0, len(m.Frontends))
	for k := range m.Frontends {
		keys = append(keys, k)
	}
	sortKeys(keys) // deterministic id allocation for new frontends
	for _, k := range keys {
		id, err := b.idFor(k)
		if err != nil {
			return err
		}
		c := compileFrontend(m.Frontends[k], id, b.co)
		b.addCompiled(c, touched)
		b.fronts[k] = c
	}
	for k := range b.ids {
		if _, ok := m.Frontends[k]; !ok {
			b.releaseID(k)
		}
	}
	var ch changes
	for c := range installed {
		if b.refs[c] == 0 {
			ch.delFlow(c)
		}
	}
	for c, f := range b.flows {
		if !installed[c] {
			ch.addFlow(f)
		}
	}
	b.installedGroups = installedGroups
	all := map[uint32]bool{}
	for id := range b.groups {
		all[id] = true
	}
	for id := range installedGroups {
		all[id] = true
	}
	for id := range all {
		b.diffGroup(id, &ch)
	}
	// Learned affinity flows of frontends that are gone.
	liveOwners := map[uint32]bool{}
	for _, id := range b.ids {
		liveOwners[id] = true
	}
	seen := map[uint32]bool{}
	for _, f := range dumped {
		if o := cookieOwner(f.Cookie); byte(f.Cookie>>56) == compLearned && !liveOwners[o] && !seen[o] {
			seen[o] = true
			ch.delLearned(o)
		}
	}
	err = b.apply(ctx, &ch, func() {
		b.installed = map[uint64]bool{}
		for c := range b.flows {
			b.installed[c] = true
		}
		b.commitGroups(all)
		b.adopted = true
	})
	if err == nil && (ch.nFlows > 0 || ch.nGroups > 0) {
		b.log.Info("full sync repaired the bridge", zap.Int("flowChanges", ch.nFlows), zap.Int("groupChanges", ch.nGroups),
			zap.Int("frontends", len(m.Frontends)))
	}
	return err
}

func tableNamesMap() map[int]string {
	m := map[int]string{}
	for id, n := range tableNames {
		m[id] = n
	}
	return m
}

func sortKeys(keys []dataplane.FrontendKey) {
	sort.Slice(keys, func(i, j int) bool {
		a, b := keys[i], keys[j]
		if c := a.IP.Compare(b.IP); c != 0 {
			return c < 0
		}
		if a.Port != b.Port {
			return a.Port < b.Port
		}
		return a.Protocol < b.Protocol
	})
}

// adoptIDs recovers frontend -> id from the classifier flows of an earlier
// process, so groups keep their ids across restarts.
func (b *Backend) adoptIDs(dumped []dumpedFlow) {
	for _, f := range dumped {
		if byte(f.Cookie>>56) != compCompiled || f.Table != tClassifier || !strings.Contains(f.Rest, "priority=200,") {
			continue
		}
		k, ok := parseFrontendMatch(f.Rest[strings.Index(f.Rest, "priority=200,")+len("priority=200,"):])
		if !ok {
			continue
		}
		id := cookieOwner(f.Cookie)
		if id == 0 || b.used[id] {
			continue
		}
		b.ids[k], b.used[id] = id, true
		if id > b.next {
			b.next = id
		}
	}
}

// parseFrontendMatch reads "tcp,nw_dst=10.96.0.10,tp_dst=80" back.
func parseFrontendMatch(s string) (dataplane.FrontendKey, bool) {
	var k dataplane.FrontendKey
	for _, tok := range strings.Split(s, ",") {
		name, val, _ := strings.Cut(tok, "=")
		switch name {
		case "tcp", "tcp6":
			k.Protocol = dataplane.TCP
		case "udp", "udp6":
			k.Protocol = dataplane.UDP
		case "sctp", "sctp6":
			k.Protocol = dataplane.SCTP
		case "nw_dst", "ipv6_dst":
			a, err := netip.ParseAddr(val)
			if err != nil {
				return k, false
			}
			k.IP = a
		case "tp_dst":
			p, err := strconv.ParseUint(val, 10, 16)
			if err != nil {
				return k, false
			}
			k.Port = uint16(p)
		}
	}
	return k, k.IP.IsValid() && k.Protocol != "" && k.Port != 0
}

// Cleanup implements dataplane.ServiceBackend: every flow and group this
// backend (in this or an earlier process) installed, and the table names.
func (b *Backend) Cleanup(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*b.opts.Timeout)
	defer cancel()
	groups, err := b.of.dumpGroups(ctx)
	if err != nil {
		return err
	}
	lines := []string{"flow delete cookie=0x5a00000000000000/0xfe00000000000000"}
	for id := range groups {
		lines = append(lines, fmt.Sprintf("group delete group_id=%d", id))
	}
	if err := b.of.bundle(ctx, lines); err != nil {
		return fmt.Errorf("ovs dataplane cleanup on %s: %w", b.opts.Bridge, err)
	}
	names := map[int]string{}
	for id := range tableNames {
		names[id] = ""
	}
	if err := b.db.SetFlowTableNames(ctx, b.opts.Bridge, names); err != nil {
		return err
	}
	b.reset()
	b.ids, b.used, b.next = nil, nil, 0
	b.reset()
	b.adopted = false
	return nil
}
