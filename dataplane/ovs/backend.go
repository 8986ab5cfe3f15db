package ovs

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"runtime/debug"
	"slices"
	"sort"
	"sync"
	"time"

	"antrea.io/libOpenflow/openflow15"
	"antrea.io/libOpenflow/util"
	"go.uber.org/zap"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
	"github.com/nsx-ujo/nsx-ujo/pkg/openflow"
	"github.com/nsx-ujo/nsx-ujo/pkg/ovsdb"
	"github.com/nsx-ujo/nsx-ujo/pkg/ovsrun"
)

// Options configure the OVS backend.
type Options struct {
	Bridge    string // ovs_bridge
	OVSRunDir string // holds db.sock and <bridge>.mgmt
	NodeName  string // endpoints on this node can hairpin
	// Uplink is the bridge's port to the fabric (ovs_uplink_port): what
	// arrives through it for an external frontend (NodePort, external or
	// load-balancer IP) comes from outside the node. Empty: external
	// frontends serve pods and the node only.
	Uplink string
	// HairpinIP is the source a pod sees when it reaches itself through a
	// Service; default dataplane.DefaultHairpinIP.
	HairpinIP netip.Addr
	// HairpinIP6 is HairpinIP for IPv6 Services; default
	// dataplane.DefaultHairpinIP6.
	HairpinIP6 netip.Addr
	Timeout    time.Duration // per OVS operation
	Log        *zap.Logger
	// Conn replaces the OpenFlow connection (tests inject refusals
	// through it); nil dials the bridge's management socket.
	Conn func(onReconnect func()) SwitchConn
}

// SwitchConn is the OpenFlow connection the backend writes through:
// *openflow.Client, or a wrapper of it in tests. See openflow.Client for
// the semantics of each method.
type SwitchConn interface {
	Bundle(ctx context.Context, msgs []util.Message) error
	DumpFlows(ctx context.Context, table uint8, cookie, cookieMask uint64) ([]*openflow15.FlowDesc, error)
	DumpGroups(ctx context.Context) ([]*openflow15.GroupDesc, error)
	RoundTrips() uint64
	Close() error
}

// Backend implements dataplane.ServiceBackend with OpenFlow on the
// integration bridge, over one persistent connection. See the package
// comment for the pipeline.
//
// Flows are identified by (table, priority, match); a flow shared by
// several frontends (an endpoint's DNAT) is reference-counted by that key.
// Sync and Cleanup are serialized with the replay that follows a
// reconnection (mu).
type Backend struct {
	opts Options
	log  *zap.Logger
	of   SwitchConn
	db   *ovsdb.Client
	co   compileOptions

	mu sync.Mutex // everything below, and every write to the switch

	ids *dataplane.IDs // frontend ids: group ids and cookies

	fronts  map[dataplane.FrontendKey]*compiled
	desired map[flowKey]*desiredFlow
	groups  map[uint32]Group // desired groups by id

	installed       map[flowKey]installedFlow
	installedGroups map[uint32]Group
	adopted         bool
	adoptedOnce     bool // the first adoption of this process was done (and said)
	serial          uint32
	last            *dataplane.Model // for the replay after a reconnection

	reject       *rejecter
	stats        Stats
	uplinkWarned bool
}

type desiredFlow struct {
	flow Flow
	refs int
}

type installedFlow struct {
	cookie  uint64
	actions []Action
}

// Stats count what the backend sent to OVS.
type Stats struct {
	Bundles      int // bundles committed (OpenFlow round trips that write)
	FlowChanges  int
	GroupChanges int
	LastChanges  int // flow + group changes of the last Sync
	Refused      int // frontends the switch refused
	Replays      int // reinstalls after a reconnection to ovs-vswitchd
	LastReplay   time.Duration
}

// Stats returns the counters.
func (b *Backend) Stats() Stats {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.stats
}

// RoundTrips is the number of OpenFlow requests that waited for a reply.
func (b *Backend) RoundTrips() uint64 { return b.of.RoundTrips() }

var _ dataplane.ServiceBackend = (*Backend)(nil)

// New returns a backend; it connects to the bridge in the background and
// writes to it only on the first Sync.
func New(o Options) (*Backend, error) {
	if o.Bridge == "" || o.OVSRunDir == "" {
		return nil, errors.New("ovs dataplane: bridge and OVS run dir are required")
	}
	if o.Timeout == 0 {
		o.Timeout = 5 * time.Second
	}
	if !o.HairpinIP.IsValid() {
		o.HairpinIP = dataplane.DefaultHairpinIP
	}
	if !o.HairpinIP6.IsValid() {
		o.HairpinIP6 = dataplane.DefaultHairpinIP6
	}
	if !o.HairpinIP.Is4() || !o.HairpinIP6.Is6() {
		return nil, fmt.Errorf("ovs dataplane: hairpin addresses %s and %s must be IPv4 and IPv6", o.HairpinIP, o.HairpinIP6)
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	db, err := ovsdb.Dial(filepath.Join(o.OVSRunDir, "db.sock"), ovsdb.Options{Timeout: o.Timeout, Logger: o.Log})
	if err != nil {
		return nil, fmt.Errorf("ovs dataplane: %w", err)
	}
	b := &Backend{opts: o, log: o.Log, db: db, co: compileOptions{NodeName: o.NodeName, HairpinIP: o.HairpinIP, HairpinIP6: o.HairpinIP6}}
	if o.Conn != nil {
		b.of = o.Conn(b.replay)
	} else {
		b.of = openflow.New(openflow.Options{Socket: ovsrun.MgmtSocket(o.OVSRunDir, o.Bridge), Timeout: o.Timeout,
			Log: o.Log.Named("openflow"), OnReconnect: b.replay})
	}
	b.reset()
	b.reject = newRejecter(ovsrun.MgmtSocket(o.OVSRunDir, o.Bridge), o.Log.Named("reject"))
	return b, nil
}

// Name implements dataplane.ServiceBackend.
func (b *Backend) Name() string { return "ovs" }

// Close stops the reject responder and the connections.
func (b *Backend) Close() error {
	b.reject.stop()
	return errors.Join(b.of.Close(), b.db.Close())
}

func (b *Backend) reset() { b.resetSized(0) }

// resetSized empties the state, with room for about frontends frontends.
func (b *Backend) resetSized(frontends int) {
	b.fronts = make(map[dataplane.FrontendKey]*compiled, frontends)
	b.desired = make(map[flowKey]*desiredFlow, 12*frontends)
	b.groups = make(map[uint32]Group, frontends)
	b.installed = make(map[flowKey]installedFlow, 12*frontends)
	b.installedGroups = make(map[uint32]Group, frontends)
	if b.ids == nil {
		b.ids = dataplane.NewIDs(maxOwner)
	}
}

func (b *Backend) idFor(k dataplane.FrontendKey) (uint32, error) {
	id, err := b.ids.Assign(k)
	if err != nil {
		return 0, fmt.Errorf("ovs dataplane: %w", err)
	}
	return id, nil
}

// replay reinstalls the desired state after the connection to
// ovs-vswitchd came back (it may have restarted with an empty bridge),
// without waiting for the proxy's next full sync.
func (b *Backend) replay() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.adopted = false
	if b.last == nil {
		return
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*b.opts.Timeout)
	defer cancel()
	b.waitFlowsRestored(ctx)
	err := b.fullSync(ctx, b.last)
	b.stats.Replays++
	b.stats.LastReplay = time.Since(start)
	if err != nil {
		b.log.Warn("reinstalling the services after reconnecting to ovs-vswitchd failed; the next sync retries", zap.Error(err))
		return
	}
	b.log.Info("reconnected to ovs-vswitchd and reinstalled the services", zap.Int("frontends", len(b.last.Frontends)),
		zap.Duration("took", b.stats.LastReplay))
}

// restoreWait bounds waitFlowsRestored: a flag that stays set (an
// nsx-ovs that died while restoring) must not stop the services for good.
const restoreWait = 10 * time.Second

// waitFlowsRestored waits while nsx-ovs puts back the flows it saved
// (other_config:flow-restore-wait), before a first or replayed sync: one
// that ran first raced the restore, which then failed on a group the sync
// had just added and left the bridge without what nsx-ovs saved (found by
// make chaos). A sync after the restore adopts the restored flows.
func (b *Backend) waitFlowsRestored(ctx context.Context) {
	deadline := time.Now().Add(restoreWait)
	logged := false
	for {
		wait, err := b.db.FlowRestoreWait(ctx)
		if err == nil && !wait {
			return
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			b.log.Warn("syncing before nsx-ovs finished restoring its saved flows", zap.Bool("flowRestoreWait", wait), zap.Error(err))
			return
		}
		if !logged {
			b.log.Info("waiting for nsx-ovs to restore its saved flows (other_config:flow-restore-wait)")
			logged = true
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Sync implements dataplane.ServiceBackend.
func (b *Backend) Sync(ctx context.Context, m *dataplane.Model, opts dataplane.SyncOptions) error {
	b.reject.ensure()
	ctx, cancel := context.WithTimeout(ctx, 10*b.opts.Timeout)
	defer cancel()
	b.mu.Lock()
	defer b.mu.Unlock()
	m, refused := dataplane.Servable(m, func(k dataplane.FrontendKey) *dataplane.Frontend {
		if c := b.fronts[k]; c != nil {
			return c.src
		}
		return nil
	})
	b.last = m
	if !b.adopted {
		b.waitFlowsRestored(ctx)
	}
	if !b.adopted || opts.Full {
		return dataplane.WithRefused(b.fullSync(ctx, m), refused)
	}
	return dataplane.WithRefused(b.incrementalSync(ctx, m), refused)
}

// change is one frontend's step of a Sync, undone if the switch refuses it.
type change struct {
	key      dataplane.FrontendKey
	old, new *compiled // nil: absent
}

func (b *Backend) refFlow(f Flow, touched map[flowKey]bool) {
	k := f.key()
	d := b.desired[k]
	if d == nil {
		d = &desiredFlow{flow: f}
		b.desired[k] = d
	}
	d.refs++
	touched[k] = true
}

func (b *Backend) unrefFlow(f Flow, touched map[flowKey]bool) {
	k := f.key()
	if d := b.desired[k]; d != nil {
		if d.refs--; d.refs <= 0 {
			delete(b.desired, k)
		}
	}
	touched[k] = true
}

func (b *Backend) addCompiled(c *compiled, touched map[flowKey]bool, touchedGroups map[uint32]bool) {
	for _, f := range c.flows {
		b.refFlow(f, touched)
	}
	for _, f := range c.shared {
		b.refFlow(f, touched)
	}
	for _, g := range c.groups {
		b.groups[g.ID] = g
		touchedGroups[g.ID] = true
	}
}

func (b *Backend) removeCompiled(c *compiled, touched map[flowKey]bool, touchedGroups map[uint32]bool) {
	for _, f := range c.flows {
		b.unrefFlow(f, touched)
	}
	for _, f := range c.shared {
		b.unrefFlow(f, touched)
	}
	for _, g := range c.groups {
		delete(b.groups, g.ID)
		touchedGroups[g.ID] = true
	}
}

// apply makes the flows and groups in touched/touchedGroups on the switch
// equal to the desired state, one bundle for all. When the switch refuses
// a message, the frontend it belongs to is rolled back to what it was
// (changes) and the bundle is sent again without it, so one bad frontend
// never keeps the others from converging. It returns the refused
// frontends.
func (b *Backend) apply(ctx context.Context, changes []change, touched map[flowKey]bool, touchedGroups map[uint32]bool) ([]dataplane.FrontendError, error) {
	// owner: the frontend whose change touched a flow or group, to blame
	// it for a refusal. Built only when the switch refuses something.
	var owner map[any]int
	ownerOf := func(o any) (int, bool) {
		if owner == nil {
			owner = map[any]int{}
			for i, c := range changes {
				for _, cc := range []*compiled{c.old, c.new} {
					if cc == nil {
						continue
					}
					for _, f := range cc.flows {
						owner[f.key()] = i
					}
					for _, f := range cc.shared {
						if _, ok := owner[f.key()]; !ok {
							owner[f.key()] = i
						}
					}
					for _, g := range cc.groups {
						owner[g.ID] = i
					}
				}
			}
		}
		i, ok := owner[o]
		return i, ok
	}
	var refused []dataplane.FrontendError
	undone := map[int]bool{}
	for {
		msgs, objs, nFlows, nGroups := b.diff(touched, touchedGroups)
		start := time.Now()
		err := b.of.Bundle(ctx, msgs)
		var me *openflow.MessageError
		if errors.As(err, &me) && me.Index >= 0 && me.Index < len(objs) {
			o := objs[me.Index]
			var i int
			var ok bool
			if o.group != 0 {
				i, ok = ownerOf(o.group)
			} else {
				i, ok = ownerOf(o.flow)
			}
			if ok && !undone[i] {
				undone[i] = true
				c := changes[i]
				name := dataplane.ServicePortName{}
				if c.new != nil {
					name = c.new.src.Name
				}
				refused = append(refused, dataplane.FrontendError{Key: c.key, Name: name, Err: err})
				b.stats.Refused++
				b.log.Warn("the switch refused a frontend; it keeps its previous state, the others are applied",
					zap.Stringer("frontend", c.key), zap.Stringer("service", name), zap.Error(err))
				b.undo(c, touched, touchedGroups)
				continue
			}
		}
		if err != nil {
			b.adopted = false
			return refused, fmt.Errorf("ovs dataplane: apply %d flow and %d group changes on %s: %w", nFlows, nGroups, b.opts.Bridge, err)
		}
		b.stats.LastChanges = nFlows + nGroups
		if len(msgs) > 0 {
			if classifierChanged(objs) || affinityChanged(changes) || emptinessChanged(changes) {
				b.waitRevalidated(ctx)
			}
			b.stats.Bundles++
			b.stats.FlowChanges += nFlows
			b.stats.GroupChanges += nGroups
			b.log.Debug("applied bundle", zap.Int("flowChanges", nFlows), zap.Int("groupChanges", nGroups),
				zap.Duration("took", time.Since(start)))
		}
		b.commit(touched, touchedGroups, msgs, objs)
		if len(msgs) >= bigBundle {
			// A full program builds every message at once; give that
			// transient peak back to the node instead of keeping it as
			// RSS until the Go runtime's scavenger gets to it.
			msgs, objs = nil, nil
			debug.FreeOSMemory()
		}
		return refused, nil
	}
}

// classifierChanged says whether a bundle added or removed a table-0 flow:
// a Service frontend appeared or went.
func classifierChanged(objs []object) bool {
	for _, o := range objs {
		if o.group == 0 && o.flow.Table == tClassifier {
			return true
		}
	}
	return false
}

// affinityChanged says whether a change concerns a frontend with session
// affinity: its datapath flows match the client address, not the
// connection's 5-tuple, so a new connection of an affine client would take
// a cached flow of the old tables (an endpoint that is gone).
func affinityChanged(changes []change) bool {
	for _, c := range changes {
		for _, cc := range []*compiled{c.old, c.new} {
			if cc != nil && cc.src.AffinityTimeout > 0 {
				return true
			}
		}
	}
	return false
}

// emptinessChanged says whether a frontend gained its first endpoint or
// lost its last: a datapath flow cached for its reject or drop matches the
// frontend's address and port only, not the 5-tuple, so new connections
// would keep meeting it (and the other way round).
func emptinessChanged(changes []change) bool {
	for _, c := range changes {
		if c.old != nil && c.new != nil && (len(c.old.src.Endpoints) == 0) != (len(c.new.src.Endpoints) == 0) {
			return true
		}
	}
	return false
}

// waitRevalidated waits until ovs-vswitchd has revalidated its datapath
// flows after a frontend appeared or went, a UDP endpoint went, a frontend
// with session affinity changed, or one gained its first endpoint or lost
// its last (emptinessChanged): until then a packet can still
// take a cached datapath flow of the old tables (a new Service's first SYN
// would leave un-NATed, matching a flow cached while the VIP was nobody's;
// a UDP client's next datagram would go to its removed endpoint; an affine
// client's new connection too, see affinityChanged). Other endpoint changes
// need no wait: the select groups hash the 5-tuple, so a new connection
// never matches a cached flow of another one. Each unixctl request lasts
// until the revalidators' next round (at most about 500 ms with 100k flows
// installed, a few ms with few).
//
// Twice: a wait can be answered by rounds that still used the old
// translations (ovs-vswitchd turns a committed bundle into a new
// revalidation generation in a later main-loop iteration); a conformance
// case caught a cached reject surviving one wait, never two.
func (b *Backend) waitRevalidated(ctx context.Context) {
	for range 2 {
		if _, err := ovsrun.Appctl(ctx, ovsrun.VSwitchdCtl(b.opts.OVSRunDir), "revalidator/wait"); err != nil {
			b.log.Debug("revalidator/wait failed; datapath flows catch up on their own", zap.Error(err))
			return
		}
	}
}

// undo puts a refused frontend back as it was before this Sync.
func (b *Backend) undo(c change, touched map[flowKey]bool, touchedGroups map[uint32]bool) {
	if c.new != nil {
		b.removeCompiled(c.new, touched, touchedGroups)
		delete(b.fronts, c.key)
	}
	if c.old != nil {
		b.addCompiled(c.old, touched, touchedGroups)
		b.fronts[c.key] = c.old
	}
}

// pendingFlow is a flow message of a bundle being built: its cookie is
// recorded as installed once the bundle commits.
type pendingFlow struct {
	key    flowKey
	cookie uint64 // 0: deleted
}

// bigBundle is the bundle size from which the memory it took is returned to
// the OS right away (a full program of ~350 Services or more).
const bigBundle = 4096

// object is what one message of a bundle changes: a group (id != 0) or a
// flow.
type object struct {
	flow  flowKey
	group uint32
}

// diff builds the bundle for the touched keys. objs[i] names what msgs[i]
// changes: a flowKey or a group id (uint32). Order inside the atomic,
// ordered bundle: nothing references a group that is not there yet, and no
// group goes while a flow or a bucket still points at it.
func (b *Backend) diff(touched map[flowKey]bool, touchedGroups map[uint32]bool) (msgs []util.Message, objs []object, nFlows, nGroups int) {
	var flowDel, groupSet, groupDel []util.Message
	var flowDelObj, groupSetObj, groupDelObj []object
	flowAdd, flowAddObj := make([]util.Message, 0, len(touched)), make([]object, 0, len(touched))
	// Flows need no order among themselves: each is its own key, and the
	// groups they point at are set before them below.
	for k := range touched {
		want, have := b.desired[k], b.installed[k]
		switch {
		case want != nil && (have.cookie == 0 || !slices.Equal(want.flow.Actions, have.actions)):
			b.serial++
			owner := want.flow.Owner
			flowAdd = append(flowAdd, want.flow.flowMod(makeCookie(compCompiled, owner, b.serial)))
			flowAddObj = append(flowAddObj, object{flow: k})
		case want == nil && have.cookie != 0:
			flowDel = append(flowDel, deleteFlow(k, have.cookie))
			flowDelObj = append(flowDelObj, object{flow: k})
		}
	}
	ids := make([]uint32, 0, len(touchedGroups))
	for id := range touchedGroups {
		ids = append(ids, id)
	}
	// Sub-groups (0x4…) before the groups that point at them when
	// setting; the other way round when deleting.
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	for _, id := range ids {
		g, want := b.groups[id]
		old, have := b.installedGroups[id]
		switch {
		case want && !have:
			groupSet = append(groupSet, g.groupMod(openflow15.OFPGC_ADD))
			groupSetObj = append(groupSetObj, object{group: id})
		case want && !groupEqual(g, old):
			groupSet = append(groupSet, g.groupMod(openflow15.OFPGC_MODIFY))
			groupSetObj = append(groupSetObj, object{group: id})
		case !want && have:
			groupDel = append([]util.Message{deleteGroup(id)}, groupDel...)
			groupDelObj = append([]object{{group: id}}, groupDelObj...)
		}
	}
	msgs = slices.Concat(flowDel, groupSet, flowAdd, groupDel)
	objs = slices.Concat(flowDelObj, groupSetObj, flowAddObj, groupDelObj)
	return msgs, objs, len(flowDel) + len(flowAdd), len(groupSet) + len(groupDel)
}

// commit records what a committed bundle installed.
func (b *Backend) commit(touched map[flowKey]bool, touchedGroups map[uint32]bool, msgs []util.Message, objs []object) {
	for i, o := range objs {
		if o.group != 0 {
			continue
		}
		k := o.flow
		if fm := msgs[i].(*openflow15.FlowMod); fm.Command == openflow15.FC_ADD {
			b.installed[k] = installedFlow{cookie: fm.Cookie, actions: b.desired[k].flow.Actions}
		} else {
			delete(b.installed, k)
		}
	}
	for id := range touchedGroups {
		if g, ok := b.groups[id]; ok {
			b.installedGroups[id] = g
		} else {
			delete(b.installedGroups, id)
		}
	}
}

func groupEqual(a, b Group) bool {
	return a.ID == b.ID && a.Proto == b.Proto && a.V6 == b.V6 && a.Basis == b.Basis &&
		slices.EqualFunc(a.Buckets, b.Buckets, func(x, y Bucket) bool { return x.Weight == y.Weight && slices.Equal(x.Actions, y.Actions) })
}

// incrementalSync touches only frontends whose pointer changed.
func (b *Backend) incrementalSync(ctx context.Context, m *dataplane.Model) error {
	touched := map[flowKey]bool{}
	touchedGroups := map[uint32]bool{}
	var changes []change
	var stale []staleUDP
	var changed []dataplane.FrontendKey
	for k, f := range m.Frontends {
		if old := b.fronts[k]; old == nil || old.src != f {
			changed = append(changed, k)
		}
	}
	sortKeys(changed) // new frontends get ids in key order, as in a full sync
	for _, k := range changed {
		f, old := m.Frontends[k], b.fronts[k]
		id, err := b.idFor(k)
		if err != nil {
			return err
		}
		if old != nil {
			b.removeCompiled(old, touched, touchedGroups)
		}
		c := compileFrontend(f, id, b.co)
		b.addCompiled(c, touched, touchedGroups)
		b.fronts[k] = c
		changes = append(changes, change{key: k, old: old, new: c})
		if old != nil {
			stale = append(stale, goneUDP(old.src, f)...)
		}
	}
	var removed []change
	for k, c := range b.fronts {
		if _, ok := m.Frontends[k]; !ok {
			b.removeCompiled(c, touched, touchedGroups)
			delete(b.fronts, k)
			ch := change{key: k, old: c}
			changes = append(changes, ch)
			removed = append(removed, ch)
			// Its UDP clients' entries go too: a client reusing a source
			// port must not reach an endpoint of a frontend that is gone
			// (or that comes back with other endpoints).
			stale = append(stale, goneUDP(c.src, nil)...)
		}
	}
	if len(touched) == 0 && len(touchedGroups) == 0 {
		b.stats.LastChanges = 0
		return nil
	}
	refused, err := b.apply(ctx, changes, touched, touchedGroups)
	if err != nil {
		return err
	}
	b.afterApply(ctx, refused, removed, stale)
	if len(refused) > 0 {
		return &dataplane.FrontendErrors{Failed: refused}
	}
	return nil
}

// afterApply releases what removed frontends held (ids, learned affinity
// flows) and flushes the conntrack of UDP endpoints that went.
func (b *Backend) afterApply(ctx context.Context, refused []dataplane.FrontendError, removed []change, stale []staleUDP) {
	kept := map[dataplane.FrontendKey]bool{}
	for _, r := range refused {
		kept[r.Key] = true
	}
	var learned []util.Message
	for _, c := range removed {
		if kept[c.key] {
			continue
		}
		id, _ := b.ids.Get(c.key)
		learned = append(learned, deleteByCookie(makeCookie(compLearned, id, 0), 0xffffffff00000000))
		b.ids.Release(c.key)
	}
	if len(learned) > 0 {
		if err := b.of.Bundle(ctx, learned); err != nil {
			b.log.Warn("removing learned affinity flows of removed frontends failed", zap.Error(err))
		}
	}
	b.flushStaleUDP(ctx, stale, kept)
}

// flushStaleUDP flushes the conntrack of the UDP endpoints that left, but
// not of refused frontends, whose old flows still serve them.
func (b *Backend) flushStaleUDP(ctx context.Context, stale []staleUDP, refused map[dataplane.FrontendKey]bool) {
	stale = slices.DeleteFunc(stale, func(s staleUDP) bool { return refused[s.key] })
	if len(stale) == 0 {
		return
	}
	// A UDP client keeps its 5-tuple: its next datagram after the flush
	// must not take the datapath flow cached with the removed endpoint's
	// bucket, so wait for the revalidators first.
	b.waitRevalidated(ctx)
	b.flushUDP(ctx, stale)
}

// fullSync re-reads the bridge, recompiles everything and applies the
// difference. At start (and after a reconnection) it adopts what is
// installed: frontend ids from the classifier flows, so groups keep their
// ids and established connections keep flowing. A flow whose key is
// desired is rewritten in place (an add replaces it atomically); one that
// is not desired is deleted.
func (b *Backend) fullSync(ctx context.Context, m *dataplane.Model) error {
	if !b.adopted {
		if err := b.db.SetFlowTableNames(ctx, b.opts.Bridge, tableNamesMap()); err != nil {
			return err
		}
	}
	b.refreshUplink(ctx)
	dumped, err := b.of.DumpFlows(ctx, openflow15.OFPTT_ALL, uint64(compCompiled)<<56, 0xfe00000000000000)
	if err != nil {
		return fmt.Errorf("ovs dataplane: dump flows of %s: %w", b.opts.Bridge, err)
	}
	groups, err := b.of.DumpGroups(ctx)
	if err != nil {
		return fmt.Errorf("ovs dataplane: dump groups of %s: %w", b.opts.Bridge, err)
	}
	// What the bridge holds, by key; flows we cannot read back are
	// deleted by cookie.
	installed := map[flowKey]installedFlow{}
	var unreadable []uint64
	learnedOwners := map[uint32]bool{}
	for _, fs := range dumped {
		if byte(fs.Cookie>>56) == compLearned {
			learnedOwners[cookieOwner(fs.Cookie)] = true
			continue
		}
		k, ok := decodeKey(fs)
		if !ok {
			unreadable = append(unreadable, fs.Cookie)
			continue
		}
		// The actions are not read back: a full sync compares cookies,
		// which change with every write we make.
		installed[k] = installedFlow{cookie: fs.Cookie}
	}
	if !b.adopted {
		// The first sync of a restarted proxy: say so, for whoever reads
		// the log after a crash. A replay logs its own line.
		if n := b.adoptIDs(installed); n > 0 && !b.adoptedOnce {
			b.log.Info("found the services of an earlier nsx-kube-proxy on the bridge; they keep forwarding while this sync brings them to the model",
				zap.String("bridge", b.opts.Bridge), zap.Int("frontends", n))
		}
	}
	prev, prevGroups, prevFronts := b.installed, b.installedGroups, b.fronts
	b.resetSized(len(m.Frontends))
	for k, f := range installed {
		// Still what we wrote (same cookie): keep the record of its
		// actions, so an unchanged flow is not rewritten.
		if p, ok := prev[k]; ok && p.cookie == f.cookie {
			f.actions = p.actions
		}
		b.installed[k] = f
	}
	touchedGroups := map[uint32]bool{}
	for _, g := range groups {
		if isOurGroup(g.GroupId) {
			touchedGroups[g.GroupId] = true
			// Only existence is read back: a group is rewritten at every
			// full sync unless this process wrote it and it is still there.
			if pg, ok := prevGroups[g.GroupId]; ok && len(g.Buckets) == len(pg.Buckets) {
				b.installedGroups[g.GroupId] = pg
			} else {
				b.installedGroups[g.GroupId] = Group{ID: g.GroupId}
			}
		}
	}

	touched := make(map[flowKey]bool, 12*len(m.Frontends)+len(installed))
	for k := range installed {
		touched[k] = true
	}
	for _, f := range staticFlows(b.co) {
		b.refFlow(f, touched)
	}
	keys := make([]dataplane.FrontendKey, 0, len(m.Frontends))
	for k := range m.Frontends {
		keys = append(keys, k)
	}
	sortKeys(keys) // deterministic id allocation for new frontends
	var changes []change
	for _, k := range keys {
		id, err := b.idFor(k)
		if err != nil {
			return err
		}
		c := compileFrontend(m.Frontends[k], id, b.co)
		b.addCompiled(c, touched, touchedGroups)
		b.fronts[k] = c
		// old: what a refusal puts back (what this process had installed).
		changes = append(changes, change{key: k, old: prevFronts[k], new: c})
	}
	for _, k := range b.ids.Keys() {
		if _, ok := m.Frontends[k]; !ok {
			b.ids.Release(k)
		}
	}
	var cleanup []util.Message
	for _, c := range unreadable {
		cleanup = append(cleanup, deleteByCookie(c, ^uint64(0)))
	}
	for o := range learnedOwners {
		if !b.ids.InUse(o) {
			cleanup = append(cleanup, deleteByCookie(makeCookie(compLearned, o, 0), 0xffffffff00000000))
		}
	}
	var stale []staleUDP
	for k, old := range prevFronts {
		stale = append(stale, goneUDP(old.src, m.Frontends[k])...)
	}
	refused, err := b.apply(ctx, changes, touched, touchedGroups)
	if err != nil {
		return err
	}
	kept := map[dataplane.FrontendKey]bool{}
	for _, r := range refused {
		kept[r.Key] = true
	}
	b.flushStaleUDP(ctx, stale, kept)
	if len(cleanup) > 0 {
		if err := b.of.Bundle(ctx, cleanup); err != nil {
			return fmt.Errorf("ovs dataplane: remove stale flows on %s: %w", b.opts.Bridge, err)
		}
	}
	b.adopted, b.adoptedOnce = true, true
	if b.stats.LastChanges > 0 {
		b.log.Info("full sync repaired the bridge", zap.Int("changes", b.stats.LastChanges), zap.Int("frontends", len(m.Frontends)))
	}
	if len(refused) > 0 {
		return &dataplane.FrontendErrors{Failed: refused}
	}
	return nil
}

// refreshUplink reads the uplink's OpenFlow port, which tells external
// traffic (see the package comment). Every full sync reads it again: it
// recompiles every frontend anyway.
func (b *Backend) refreshUplink(ctx context.Context) {
	if b.opts.Uplink == "" {
		return
	}
	p, err := b.db.GetPort(ctx, b.opts.Uplink)
	if err == nil && p.OFPort <= 0 {
		err = fmt.Errorf("uplink %s has no OpenFlow port (ofport %d, error %q)", b.opts.Uplink, p.OFPort, p.Error)
	}
	if err != nil {
		if !b.uplinkWarned {
			b.log.Warn("the uplink is unknown: external frontends serve pods and the node only until a full sync finds it",
				zap.String("uplink", b.opts.Uplink), zap.Error(err))
			b.uplinkWarned = true
		}
		return
	}
	if uint32(p.OFPort) != b.co.Uplink {
		b.log.Info("external traffic arrives through the uplink", zap.String("uplink", b.opts.Uplink), zap.Int("ofport", p.OFPort))
	}
	b.co.Uplink, b.uplinkWarned = uint32(p.OFPort), false
}

func tableNamesMap() map[int]string {
	m := map[int]string{}
	for id, n := range tableNames {
		m[id] = n
	}
	return m
}

func sortKeys(keys []dataplane.FrontendKey) {
	slices.SortFunc(keys, dataplane.FrontendKey.Compare)
}

// adoptIDs recovers frontend -> id from the classifier flows of an earlier
// process, so groups keep their ids across restarts, and returns how many
// frontends it found.
func (b *Backend) adoptIDs(installed map[flowKey]installedFlow) int {
	n := 0
	for k, f := range installed {
		if k.Table != tClassifier || k.Priority != 200 || k.Match.TPDst == 0 {
			continue
		}
		proto, ok := dataplane.ProtocolOf(k.Match.IPProto)
		fk := dataplane.FrontendKey{IP: k.Match.IPDst, Port: k.Match.TPDst, Protocol: proto}
		if ok && fk.IP.IsValid() && b.ids.Adopt(fk, cookieOwner(f.cookie)) {
			n++
		}
	}
	return n
}

// Cleanup implements dataplane.ServiceBackend: every flow and group this
// backend (in this or an earlier process) installed, and the table names.
func (b *Backend) Cleanup(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*b.opts.Timeout)
	defer cancel()
	b.mu.Lock()
	defer b.mu.Unlock()
	groups, err := b.of.DumpGroups(ctx)
	if err != nil {
		return fmt.Errorf("ovs dataplane cleanup on %s: %w", b.opts.Bridge, err)
	}
	// In two steps, so that no packet is dropped while traffic moves to
	// the other dataplane (a dropped SYN-ACK there is retransmitted to a
	// client whose own retransmitted SYN the eBPF program balanced afresh:
	// the connection is reset). Our table-0 flows send every IP packet
	// through conntrack and on to our tables after a recirculation, and
	// the datapath keeps flows of both halves until the revalidators
	// reach them, in any order: removing all at once leaves for a while a
	// cached first half that recirculates into a table already empty.
	// First the entry points (table 0), with the revalidators waited for:
	// then no datapath flow leads into our tables.
	top0 := deleteByCookie(uint64(compCompiled)<<56, 0xfe00000000000000)
	top0.TableId = tClassifier
	if err := b.of.Bundle(ctx, []util.Message{top0}); err != nil {
		return fmt.Errorf("ovs dataplane cleanup on %s: %w", b.opts.Bridge, err)
	}
	b.waitRevalidated(ctx)
	msgs := []util.Message{deleteByCookie(uint64(compCompiled)<<56, 0xfe00000000000000)}
	var top, sub []util.Message
	for _, g := range groups {
		switch {
		case g.GroupId&0xff000000 == groupBase:
			top = append(top, deleteGroup(g.GroupId))
		case isOurGroup(g.GroupId):
			sub = append(sub, deleteGroup(g.GroupId))
		}
	}
	if err := b.of.Bundle(ctx, slices.Concat(msgs, top, sub)); err != nil {
		return fmt.Errorf("ovs dataplane cleanup on %s: %w", b.opts.Bridge, err)
	}
	// Then the datapath flows of the recirculations into the removed
	// tables: revalidated, they turn into drops and stay until idle (10 s),
	// and ovs-vswitchd hands their recirculation ids out again to the next
	// program of these tables (a switch back to OVS), whose packets would
	// meet those drops until the revalidators come round.
	b.waitRevalidated(ctx)
	if _, err := ovsrun.Appctl(ctx, ovsrun.VSwitchdCtl(b.opts.OVSRunDir), "revalidator/purge"); err != nil {
		b.log.Warn("purging the datapath flows after removing the OVS dataplane's flows failed", zap.Error(err))
	}
	names := map[int]string{}
	for id := range tableNames {
		names[id] = ""
	}
	if err := b.db.SetFlowTableNames(ctx, b.opts.Bridge, names); err != nil {
		return err
	}
	// Our zones' conntrack entries go too: connections that close while no
	// flow tracks them (after a switch to eBPF) would stay "established"
	// there and take over a later connection on the same ports.
	b.ids = nil
	b.reset()
	b.adopted, b.last = false, nil
	ctl := ovsrun.VSwitchdCtl(b.opts.OVSRunDir)
	var errs []error
	for _, z := range []int{SvcZone, HairpinZone, SNATZone} {
		if _, err := ovsrun.Appctl(ctx, ctl, "dpctl/flush-conntrack", fmt.Sprintf("zone=%d", z)); err != nil {
			errs = append(errs, fmt.Errorf("ovs dataplane cleanup: conntrack zone %d: %w", z, err))
		}
	}
	return errors.Join(errs...)
}
