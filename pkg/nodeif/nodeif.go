// Package nodeif moves the node's network configuration from its uplink
// (ncp.ini ovs_uplink_port, "node-if") onto the OVS integration bridge and
// back, crash-safely.
//
// Migration and cleanup are each a fixed list of named steps. Before any
// change the uplink's addresses, routes, MAC and MTU are written to a
// journal (<state_dir>/node-if.json), which afterwards is the only record
// of them; after each step the journal records the step. Every step is
// idempotent and works from the journal, not from what the links show, so
// a run that died after any step is finished by running again, and a run
// on a finished node changes nothing. Steps run in full every time, rather
// than resuming after the recorded one: with the userspace datapath the
// bridge device lives and dies with ovs-vswitchd, so a "done" step may
// need doing again after OVS restarts.
//
// All netlink and sysctl work happens in the network namespace of the
// calling OS thread.
package nodeif

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/nsx-ujo/nsx-ujo/pkg/agent/ports"
	"github.com/nsx-ujo/nsx-ujo/pkg/ovsdb"
	"github.com/nsx-ujo/nsx-ujo/pkg/sysctl"
)

// Config keys named in errors, so an operator knows what to fix.
const (
	keyUplink = "ncp.ini [nsx_node_agent] ovs_uplink_port"
	keyBridge = "ncp.ini [nsx_node_agent] ovs_bridge"
)

// ErrStopped is returned when Options.StopAfter stopped a run.
var ErrStopped = errors.New("nodeif: stopped after the requested step")

// Options configure a Migrator.
type Options struct {
	Bridge       string // ovs_bridge
	Uplink       string // ovs_uplink_port; "" only ensures the bridge
	DatapathType string // ovs_datapath_type
	StateDir     string // where the journal lives (state_dir)
	// DHCP is is_dhcp_configured_on_ovs_uplink_port. A dynamic address on
	// the uplink turns it on as well.
	DHCP bool
	OVS  *ovsdb.Client
	Log  *zap.Logger
	// StopAfter names a step after which Migrate or Cleanup return
	// ErrStopped, with the journal written: crash tests use it.
	StopAfter string
	// Sysctl is where the node's /proc/sys is (proc_mount_path_prefix).
	Sysctl sysctl.Dir
}

// Migrator migrates one uplink. Its methods must not run concurrently
// (cmd/nsx-ovs holds a lock file around them).
type Migrator struct {
	o   Options
	log *zap.Logger
}

// New returns a Migrator.
func New(o Options) *Migrator {
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	return &Migrator{o: o, log: o.Log.With(zap.String("uplink", o.Uplink), zap.String("bridge", o.Bridge))}
}

// run is one Migrate or Cleanup: its netlink handle and journal.
type run struct {
	*Migrator
	h *netlink.Handle
	j *Journal
}

type step struct {
	name string
	do   func(r *run, ctx context.Context) error
}

// Step names, in order. A test stops after each in turn.
var (
	migrateSteps = []step{
		{"journal", (*run).capture},
		{"bridge", (*run).ensureBridge},
		{"uplink-port", (*run).addUplinkPort},
		{"links-up", (*run).linksUp},
		{"addresses", (*run).addressesToBridge},
		{"routes", (*run).routesToBridge},
		{"isolate-uplink", (*run).isolateUplink},
	}
	cleanupSteps = []step{
		{"journal", (*run).startCleanup},
		{"unisolate-uplink", (*run).unisolateUplink},
		{"uplink-port", (*run).removeUplinkPort},
		{"agent-ports", (*run).removeAgentPorts},
		{"addresses", (*run).addressesToUplink},
		{"routes", (*run).routesToUplink},
		{"bridge", (*run).restoreBridge},
		{"uplink-state", (*run).restoreUplinkState},
	}
)

func names(steps []step) []string {
	out := make([]string, len(steps))
	for i, s := range steps {
		out[i] = s.name
	}
	return out
}

// MigrateSteps and CleanupSteps name the steps of each direction.
func MigrateSteps() []string { return names(migrateSteps) }
func CleanupSteps() []string { return names(cleanupSteps) }

// Migrate moves the uplink's configuration onto the bridge, creating the
// bridge if needed. Idempotent; it finishes an interrupted Migrate or, if
// the node was half way through Cleanup, migrates it again.
func (m *Migrator) Migrate(ctx context.Context) error {
	if m.o.Uplink == "" {
		m.log.Warn("no uplink configured (" + keyUplink + "): only ensuring the bridge")
		return m.ensureBridgeOnly(ctx)
	}
	return m.runSteps(ctx, PhaseMigrate, migrateSteps)
}

// Cleanup puts the uplink back exactly as the journal recorded it, removes
// it from the bridge, deletes the bridge if nsx-ovs created it, and then
// the journal. Without a journal there is nothing to undo. Idempotent.
func (m *Migrator) Cleanup(ctx context.Context) error {
	j, err := LoadJournal(m.o.StateDir)
	if err != nil {
		return err
	}
	if j == nil {
		m.log.Info("no journal: node-if was never migrated, nothing to restore", zap.String("stateDir", m.o.StateDir))
		return nil
	}
	return m.runSteps(ctx, PhaseCleanup, cleanupSteps)
}

func (m *Migrator) runSteps(ctx context.Context, phase string, steps []step) error {
	h, err := netlink.NewHandle()
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	defer h.Close()
	r := &run{Migrator: m, h: h}
	start := time.Now()
	// A node whose journal records a finished migration is only checked
	// and repaired by another Migrate: its journal would change in the
	// step only, so it is not written, and a full state_dir cannot stop
	// nsx-ovs from starting (the OVS datapath with it).
	var settled *Journal
	if j, err := LoadJournal(m.o.StateDir); err == nil && j != nil && phase == PhaseMigrate &&
		j.Phase == PhaseMigrate && j.Step == steps[len(steps)-1].name {
		settled = j
	}
	for _, s := range steps {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := s.do(r, ctx); err != nil {
			return fmt.Errorf("%s step %s: %w", phase, s.name, err)
		}
		if r.j == nil { // cleanup's last step removed the journal
			break
		}
		r.j.Phase, r.j.Step = phase, s.name
		if settled == nil || !sameButStep(r.j, settled) {
			if err := r.j.save(m.o.StateDir); err != nil {
				return err
			}
		}
		m.log.Debug("step done", zap.String("phase", phase), zap.String("step", s.name))
		if s.name == m.o.StopAfter {
			return fmt.Errorf("%s step %s: %w", phase, s.name, ErrStopped)
		}
	}
	m.log.Info(phase+" done", zap.Duration("took", time.Since(start)))
	return nil
}

// --- migration steps ---

// capture writes the journal from the uplink as it is now, unless a
// journal exists: then the uplink may already be half emptied and the
// journal is the truth.
func (r *run) capture(ctx context.Context) error {
	j, err := LoadJournal(r.o.StateDir)
	if err != nil {
		return err
	}
	if j != nil {
		if j.Uplink != r.o.Uplink || j.Bridge != r.o.Bridge {
			return fmt.Errorf("journal %s is for uplink %q on bridge %q, but %s = %q and %s = %q: run `nsx-ovs cleanup` first (it follows the journal)",
				journalPath(r.o.StateDir), j.Uplink, j.Bridge, keyUplink, r.o.Uplink, keyBridge, r.o.Bridge)
		}
		r.j = j
		r.logDHCP()
		return nil
	}
	up, err := linkByName(r.h, r.o.Uplink, keyUplink)
	if err != nil {
		return err
	}
	addrs, routes, dhcp, skipped, err := capture(r.h, up)
	if err != nil {
		return err
	}
	for _, s := range skipped {
		r.log.Warn("multipath route through the uplink is not moved: move it to the bridge by hand", zap.String("route", s))
	}
	a := up.Attrs()
	j = &Journal{
		Version: journalVersion, Uplink: r.o.Uplink, Bridge: r.o.Bridge, CapturedAt: time.Now().UTC(),
		MAC: a.HardwareAddr.String(), MTU: a.MTU, Up: a.Flags&net.FlagUp != 0, DHCP: r.o.DHCP || dhcp,
		Addresses: addrs, Routes: routes,
	}
	if _, err := r.o.OVS.GetBridge(ctx, r.o.Bridge); err == nil {
		j.BridgeExisted = true
		if j.BridgeHWAddr, err = r.o.OVS.BridgeHWAddr(ctx, r.o.Bridge); err != nil {
			return err
		}
	} else if !errors.Is(err, ovsdb.ErrNotFound) {
		return err
	}
	r.j = j
	r.log.Info("journaled the uplink's configuration", zap.String("journal", journalPath(r.o.StateDir)),
		zap.String("mac", j.MAC), zap.Int("mtu", j.MTU), zap.Int("addresses", len(addrs)), zap.Int("routes", len(routes)),
		zap.Bool("dhcp", j.DHCP))
	r.logDHCP()
	return nil
}

// logDHCP tells the operator, on every start, what a leased uplink
// address means once it sits on the bridge: the lease is renewed only by a
// DHCP client running on the bridge. NCP users lost their node's address
// at the first reboot for want of this.
func (r *run) logDHCP() {
	if !r.j.DHCP {
		return
	}
	r.log.Warn("the uplink's address is leased (DHCP or IPv6 autoconfiguration): it now lives on the bridge with its remaining lease. "+
		"Configure the node's network so that the DHCP client runs on the bridge and not on the uplink, "+
		"or the node loses its address when the lease ends and at the next reboot",
		zap.Bool("setting", r.o.DHCP), zap.String("key", "ncp.ini [nsx_node_agent] is_dhcp_configured_on_ovs_uplink_port"),
		zap.String("runDHCPOn", r.o.Bridge), zap.String("notOn", r.o.Uplink))
}

func (r *run) bridgeSpec() ovsdb.BridgeSpec {
	return ovsdb.BridgeSpec{Name: r.o.Bridge, DatapathType: r.o.DatapathType, HWAddr: r.j.MAC, MTU: r.j.MTU}
}

// ensureBridge makes the bridge with the uplink's MAC, so the node's
// neighbours' ARP caches stay right, and its MTU.
func (r *run) ensureBridge(ctx context.Context) error {
	return r.o.OVS.EnsureBridge(ctx, r.bridgeSpec())
}

func (m *Migrator) ensureBridgeOnly(ctx context.Context) error {
	spec := ovsdb.BridgeSpec{Name: m.o.Bridge, DatapathType: m.o.DatapathType}
	if hw, err := m.o.OVS.BridgeHWAddr(ctx, m.o.Bridge); err == nil {
		spec.HWAddr = hw // keep a pin set by someone else
	}
	return m.o.OVS.EnsureBridge(ctx, spec)
}

// uplinkPortIDs mark the uplink's port for whoever lists the bridge.
var uplinkPortIDs = map[string]string{"nsx-ujo-role": "uplink"}

func (r *run) addUplinkPort(ctx context.Context) error {
	if _, err := linkByName(r.h, r.o.Uplink, keyUplink); err != nil {
		return err
	}
	_, err := r.o.OVS.EnsureTrunkPort(ctx, r.o.Bridge, r.o.Uplink, uplinkPortIDs)
	return err
}

func (r *run) linksUp(context.Context) error {
	for _, l := range []struct{ name, what string }{{r.o.Uplink, keyUplink}, {r.o.Bridge, keyBridge}} {
		link, err := linkByName(r.h, l.name, l.what)
		if err != nil {
			return err
		}
		if err := r.h.LinkSetUp(link); err != nil {
			return fmt.Errorf("set %s up: %w", l.name, err)
		}
	}
	return nil
}

func (r *run) links() (uplink, bridge netlink.Link, err error) {
	if uplink, err = linkByName(r.h, r.o.Uplink, keyUplink); err != nil {
		return nil, nil, err
	}
	if bridge, err = linkByName(r.h, r.o.Bridge, keyBridge); err != nil {
		return nil, nil, err
	}
	return uplink, bridge, nil
}

func (r *run) addressesToBridge(context.Context) error {
	up, br, err := r.links()
	if err != nil {
		return err
	}
	// No DAD on the bridge: the address was in use on this very segment a
	// moment ago, and DAD would keep IPv6 down for a second or more.
	return moveAddresses(r.h, r.j, up, br, unix.IFA_F_NODAD)
}

func (r *run) routesToBridge(context.Context) error {
	up, br, err := r.links()
	if err != nil {
		return err
	}
	return moveRoutes(r.h, r.j, up, br)
}

// isolateUplink applies isolationSysctls with the userspace datapath only:
// the kernel datapath takes the uplink's packets away from the kernel
// stack by itself. The old values are journaled before the first change.
func (r *run) isolateUplink(context.Context) error {
	if r.o.DatapathType != "netdev" {
		return nil
	}
	want := isolationSysctls(r.o.Uplink)
	if r.j.Sysctls == nil {
		old := map[string]string{}
		for k := range want {
			v, ok, err := r.o.Sysctl.Read(k)
			if err != nil {
				return err
			}
			if ok {
				old[k] = v
			}
		}
		r.j.Sysctls = old
		if err := r.j.save(r.o.StateDir); err != nil {
			return err
		}
	}
	for k, v := range want {
		if _, ok := r.j.Sysctls[k]; !ok {
			continue
		}
		if err := r.o.Sysctl.Write(k, v); err != nil {
			return err
		}
	}
	if v, _, _ := r.o.Sysctl.Read("net/ipv4/conf/all/rp_filter"); v == "2" {
		r.log.Warn("net.ipv4.conf.all.rp_filter = 2 (loose) overrides the uplink's strict setting: the kernel will also answer IPv4 packets that arrive on the uplink, so peers see duplicates")
	}
	return nil
}

// --- cleanup steps ---

func (r *run) startCleanup(context.Context) error {
	j, err := LoadJournal(r.o.StateDir)
	if err != nil {
		return err
	}
	if j == nil {
		return errors.New("journal disappeared")
	}
	if j.Uplink != r.o.Uplink || j.Bridge != r.o.Bridge {
		r.log.Warn("cleanup follows the journal, not ncp.ini", zap.String("journalUplink", j.Uplink), zap.String("journalBridge", j.Bridge))
		r.Migrator = New(Options{Bridge: j.Bridge, Uplink: j.Uplink, DatapathType: r.o.DatapathType, StateDir: r.o.StateDir,
			DHCP: r.o.DHCP, OVS: r.o.OVS, Log: r.o.Log, StopAfter: r.o.StopAfter, Sysctl: r.o.Sysctl})
	}
	r.j = j
	return nil
}

func (r *run) unisolateUplink(context.Context) error {
	for k, v := range r.j.Sysctls {
		if err := r.o.Sysctl.Write(k, v); err != nil {
			return err
		}
	}
	return nil
}

// removeUplinkPort takes the uplink out of the bridge first, so that with
// the kernel datapath its own stack gets its packets again before its
// addresses come back.
func (r *run) removeUplinkPort(ctx context.Context) error {
	if _, err := r.o.OVS.GetBridge(ctx, r.o.Bridge); errors.Is(err, ovsdb.ErrNotFound) {
		return nil
	} else if err != nil {
		return err
	}
	return r.o.OVS.DeletePort(ctx, r.o.Bridge, r.o.Uplink)
}

// removeAgentPorts takes nsx-node-agent's ports (pods', HyperBus's) off
// the bridge: a bridge that existed before nsx-ujo is given back without
// them; one nsx-ujo created goes entirely in the bridge step.
func (r *run) removeAgentPorts(ctx context.Context) error {
	removed, err := ports.RemoveAgentPorts(ctx, r.o.OVS, r.o.Bridge)
	if len(removed) > 0 {
		r.log.Info("removed nsx-node-agent's ports", zap.Strings("ports", removed))
	}
	return err
}

// bridgeLink is nil when the bridge device is gone (OVS down with the
// userspace datapath, or bridge already deleted): then there is nothing
// to take back from it and the journal alone rebuilds the uplink.
func (r *run) bridgeLink() (netlink.Link, error) {
	l, err := r.h.LinkByName(r.o.Bridge)
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%s %q: %w", keyBridge, r.o.Bridge, err)
	}
	return l, nil
}

func (r *run) addressesToUplink(context.Context) error {
	up, err := linkByName(r.h, r.o.Uplink, keyUplink)
	if err != nil {
		return err
	}
	// IPv6 addresses need the link up; routes need it too.
	if err := r.h.LinkSetUp(up); err != nil {
		return fmt.Errorf("set %s up: %w", r.o.Uplink, err)
	}
	br, err := r.bridgeLink()
	if err != nil {
		return err
	}
	return moveAddresses(r.h, r.j, br, up, 0)
}

func (r *run) routesToUplink(context.Context) error {
	up, err := linkByName(r.h, r.o.Uplink, keyUplink)
	if err != nil {
		return err
	}
	br, err := r.bridgeLink()
	if err != nil {
		return err
	}
	return moveRoutes(r.h, r.j, br, up)
}

// restoreBridge deletes the bridge nsx-ovs created, or gives a bridge that
// was there before its own hwaddr back.
func (r *run) restoreBridge(ctx context.Context) error {
	if !r.j.BridgeExisted {
		return r.o.OVS.DeleteBridge(ctx, r.o.Bridge)
	}
	spec := r.bridgeSpec()
	spec.HWAddr, spec.MTU = r.j.BridgeHWAddr, 0
	return r.o.OVS.EnsureBridge(ctx, spec)
}

// restoreUplinkState puts back MAC, MTU and admin state, then removes the
// journal: the node is as it was.
func (r *run) restoreUplinkState(context.Context) error {
	up, err := linkByName(r.h, r.o.Uplink, keyUplink)
	if err != nil {
		return err
	}
	a := up.Attrs()
	if mac, err := net.ParseMAC(r.j.MAC); err == nil && a.HardwareAddr.String() != r.j.MAC {
		if err := r.h.LinkSetHardwareAddr(up, mac); err != nil {
			return fmt.Errorf("restore MAC of %s: %w", r.o.Uplink, err)
		}
	}
	if a.MTU != r.j.MTU {
		if err := r.h.LinkSetMTU(up, r.j.MTU); err != nil {
			return fmt.Errorf("restore MTU of %s: %w", r.o.Uplink, err)
		}
	}
	if !r.j.Up {
		if err := r.h.LinkSetDown(up); err != nil {
			return fmt.Errorf("set %s down: %w", r.o.Uplink, err)
		}
	}
	if err := removeJournal(r.o.StateDir); err != nil {
		return err
	}
	r.j = nil
	return nil
}
