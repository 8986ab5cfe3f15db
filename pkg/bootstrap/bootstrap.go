// Package bootstrap installs the node side of nsx-ujo that lives on the host
// rather than in the DaemonSet's containers: the nsx CNI plugin binary, its
// network configuration, the loopback plugin where the host has none, and the
// AppArmor profile the node agent's pods run under. It upgrades only from an
// older build, writes every file atomically, records what it installed, and
// removes exactly that on cleanup.
//
// Install, Cleanup and Monitor act on the host through Options.HostRoot (the
// host's / mounted into the container). They are not safe to run
// concurrently against one host root; the DaemonSet runs one at a time.
package bootstrap

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"go.uber.org/zap"
	"k8s.io/apimachinery/pkg/util/version"

	"github.com/nsx-ujo/nsx-ujo/pkg/atomicfile"
	"github.com/nsx-ujo/nsx-ujo/pkg/config"
)

// Version is this build's version, compared with the nsxBuildVersion of an
// installed conflist. Release builds set it with
// -ldflags "-X github.com/nsx-ujo/nsx-ujo/pkg/bootstrap.Version=1.2.3".
var Version = "0.1.0-dev"

// Host paths the bootstrap manages.
const (
	PluginPath       = "/opt/cni/bin/nsx"
	LoopbackPath     = "/opt/cni/bin/loopback"
	ConflistPath     = "/etc/cni/net.d/10-nsx.conflist"
	LoopbackConfPath = "/etc/cni/net.d/99-loopback.conf"
	ProfilePath      = "/etc/apparmor.d/ncp-apparmor"
	ManifestPath     = "/var/lib/nsx-ujo/bootstrap-installed.json"
)

// LegacyFiles are files of an older, package-based NCP install that Install
// removes rather than replaces. /etc/cni/net.d/10-nsx.conf is NCP's
// single-plugin netconf: it sorts before 10-nsx.conflist, so the runtime
// would keep using it. The other files of such an install have the paths of
// ours and are replaced (and then recorded as ours): /opt/cni/bin/nsx,
// /etc/cni/net.d/10-nsx.conflist and /etc/apparmor.d/ncp-apparmor.
var LegacyFiles = []string{"/etc/cni/net.d/10-nsx.conf"}

// Options say what to install where. Zero fields take the defaults noted.
type Options struct {
	HostRoot       string // the host's / as seen here ("/")
	PluginSource   string // the nsx binary to install (/usr/local/bin/nsx)
	LoopbackSource string // the loopback binary to install where absent (/usr/local/bin/loopback)
	Socket         string // the agent socket written into the conflist (ncp.ini cni_socket default)
	MTU            int    // the mtu written into the conflist (ncp.ini mtu default)
	CNIVersion     string // ncp.ini cni_version: config.CNIVersionAuto (default) or a pinned version
	BuildVersion   string // this build's semver (Version)
	DryRun         bool   // compute and report the changes, make none
	// ReloadProfile loads the AppArmor profile even when its file is already
	// up to date: at pod start a reboot or an earlier failed run can have
	// left the file in place but not loaded. The monitor leaves it unset so
	// it does not reload the profile every interval.
	ReloadProfile bool
	Runner        Runner      // runs apparmor_parser (ExecRunner)
	Log           *zap.Logger // (no logs)

	probed *probeResult // Monitor's memory of the last loopback version probe
}

func (o Options) complete() (Options, *version.Version, error) {
	d := config.Defaults().NodeAgent
	if o.HostRoot == "" {
		o.HostRoot = "/"
	}
	if o.PluginSource == "" {
		o.PluginSource = "/usr/local/bin/nsx"
	}
	if o.LoopbackSource == "" {
		o.LoopbackSource = "/usr/local/bin/loopback"
	}
	if o.Socket == "" {
		o.Socket = d.CNISocket
	}
	if o.MTU == 0 {
		o.MTU = d.MTU
	}
	if o.BuildVersion == "" {
		o.BuildVersion = Version
	}
	if o.CNIVersion == "" {
		o.CNIVersion = d.CNIVersion
	}
	if o.CNIVersion != config.CNIVersionAuto && !slices.Contains(config.CNIVersions, o.CNIVersion) {
		return o, nil, fmt.Errorf("cni_version %q: must be %s or one of %v", o.CNIVersion, config.CNIVersionAuto, config.CNIVersions)
	}
	if o.Runner == nil {
		o.Runner = ExecRunner{}
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	v, err := version.ParseSemantic(o.BuildVersion)
	if err != nil {
		return o, nil, fmt.Errorf("build version %q is not semver (set it with -ldflags -X): %w", o.BuildVersion, err)
	}
	o.Log = o.Log.With(zap.String("hostRoot", o.HostRoot), zap.String("buildVersion", o.BuildVersion))
	return o, v, nil
}

// host maps a host path to where it is reachable here.
func (o *Options) host(path string) string { return filepath.Join(o.HostRoot, path) }

// Action is what a Change does.
type Action string

// The actions of a Change.
const (
	ActionWrite  Action = "write"
	ActionRemove Action = "remove"
	ActionLoad   Action = "load-apparmor-profile"
	ActionUnload Action = "unload-apparmor-profile"
)

// Change is one modification of the host, made or (with DryRun) planned.
type Change struct {
	Action Action
	Path   string // host path, without the host root
	Reason string

	write *target // the file to write, for ActionWrite
}

func (c Change) String() string { return fmt.Sprintf("%s %s (%s)", c.Action, c.Path, c.Reason) }

// target is one file Install manages.
type target struct {
	path   string // host path
	mode   fs.FileMode
	data   []byte // the content, or
	source string // a file to copy
	// keepExisting: never replace a file that exists, whoever installed
	// it. For loopback, which the host's CNI packages may own.
	keepExisting bool
}

// targets lists the files in install order: binaries before the profile
// before the netconfs, the conflist last. The runtime starts using the
// network once the conflist appears, so everything it needs is in place
// first; and as the conflist carries the version, an install interrupted
// before it is simply retried as an upgrade next time.
func (o *Options) targets(withProfile, chain11 bool) []*target {
	ts := []*target{
		{path: PluginPath, mode: 0o755, source: o.PluginSource},
		{path: LoopbackPath, mode: 0o755, source: o.LoopbackSource, keepExisting: true},
	}
	if withProfile {
		ts = append(ts, &target{path: ProfilePath, mode: 0o644, data: Profile})
	}
	return append(ts,
		&target{path: LoopbackConfPath, mode: 0o644, data: []byte(loopbackConf), keepExisting: true},
		&target{path: ConflistPath, mode: 0o644, data: Conflist(ConflistOptions{
			BuildVersion: o.BuildVersion, Socket: o.Socket, MTU: o.MTU, CNIVersion: o.CNIVersion, ChainSupports11: chain11})},
	)
}

// Install brings the host to this build's files, gated by the
// nsxBuildVersion of the installed conflist:
//
//   - absent, malformed (a warning names the file) or older: every file is
//     (re)written;
//   - newer: nothing is touched, not even the profile: a newer nsx-ujo owns
//     the node (this happens while a rolling update runs);
//   - equal: only files that are missing or differ from what this build
//     would write are rewritten, so an ncp.ini change (mtu, cni_socket)
//     reaches the conflist and the monitor repairs removed files.
//
// Unless a newer build is installed, the LegacyFiles are removed. The
// loopback binary and conf are written only where absent. The manifest
// of installed files is written before any other file, so an interrupted
// install is still cleaned up. On the first error Install stops, leaving
// every file it had not reached as it was.
func Install(ctx context.Context, opts Options) ([]Change, error) {
	o, build, err := opts.complete()
	if err != nil {
		return nil, err
	}
	log := o.Log
	state, detail, err := compareInstalled(o.host(ConflistPath), build)
	if err != nil {
		return nil, err
	}
	switch state {
	case stateNewer:
		log.Info("a newer nsx-ujo is installed; leaving the node untouched", zap.String("installedVersion", detail))
		return nil, nil
	case stateMalformed:
		log.Warn("installed conflist is malformed; replacing it like an older install",
			zap.String("file", o.host(ConflistPath)), zap.String("reason", detail))
	case stateOlder:
		log.Info("upgrading nsx-ujo", zap.String("installedVersion", detail))
	case stateAbsent:
		log.Info("no nsx-ujo install found; installing")
	case stateEqual:
		log.Debug("this build is installed; checking its files")
	}

	m, err := readManifest(o.host(ManifestPath))
	if err != nil {
		return nil, err
	}
	if m == nil {
		m = &manifest{}
	}
	withProfile, load, err := o.appArmorPlan()
	if err != nil {
		return nil, err
	}

	// Also at an equal version: a reinstalled NCP package would otherwise
	// shadow the conflist until the next upgrade.
	var changes []Change
	for _, p := range LegacyFiles {
		if ok, err := exists(o.host(p)); err != nil {
			return nil, err
		} else if ok {
			changes = append(changes, Change{Action: ActionRemove, Path: p, Reason: "file of a package-based NCP install"})
		}
	}
	newM := manifest{Version: o.BuildVersion, Files: append([]string(nil), m.Files...)}
	profileWritten := false
	for _, t := range o.targets(withProfile, o.chainSupports11(ctx)) {
		c, err := o.plan(t, state, m)
		if err != nil {
			return nil, err
		}
		// Files without keepExisting are ours whether or not they change
		// now; a kept file only when this bootstrap wrote it.
		if !t.keepExisting || c != nil {
			newM.add(t.path)
		}
		if c != nil {
			changes = append(changes, *c)
			profileWritten = profileWritten || t.path == ProfilePath
		}
	}
	if load && (profileWritten || o.ReloadProfile) {
		changes = append(changes, Change{Action: ActionLoad, Path: ProfilePath, Reason: "apparmor_parser -r"})
	}
	if enc := newM.encode(); !bytes.Equal(enc, m.encode()) {
		// First, so that cleanup knows about every file even if the install
		// stops half way.
		changes = append([]Change{{Action: ActionWrite, Path: ManifestPath, Reason: "record the installed files",
			write: &target{path: ManifestPath, mode: 0o644, data: enc}}}, changes...)
	}
	return changes, o.apply(ctx, changes)
}

// plan returns the write t needs in state, or nil.
func (o *Options) plan(t *target, state installedState, m *manifest) (*Change, error) {
	path := o.host(t.path)
	change := &Change{Action: ActionWrite, Path: t.path, write: t}
	if t.keepExisting {
		ok, err := exists(path)
		if err != nil {
			return nil, err
		}
		if ok {
			o.Log.Debug("keeping existing file", zap.String("file", path), zap.Bool("installedByUs", m.has(t.path)))
			return nil, nil
		}
		change.Reason = "absent"
		return change, nil
	}
	if state != stateEqual {
		change.Reason = "install " + o.BuildVersion + " over " + state.String()
		return change, nil
	}
	var same bool
	var err error
	if t.data != nil {
		same, err = sameBytes(path, t.data, t.mode)
	} else {
		same, err = sameFile(path, t.source, t.mode)
	}
	if err != nil || same {
		return nil, err
	}
	change.Reason = "missing or differs from this build's"
	return change, nil
}

// chainSupports11 tells whether every plugin of the chain answers CNI
// 1.1.0 (see ConflistOptions.ChainSupports11): ours does; the loopback that
// runs is the node's own where it has one (never replaced), else ours.
func (o *Options) chainSupports11(ctx context.Context) bool {
	if o.CNIVersion != config.CNIVersionAuto {
		return false // pinned: the conflist does not offer a choice
	}
	bin := o.host(LoopbackPath)
	if ok, err := exists(bin); err != nil || !ok {
		bin = o.LoopbackSource
	}
	// The monitor asks again only when the binary changed (no exec every
	// interval, no repeated log line).
	var key probeKey
	if fi, err := os.Stat(bin); err == nil {
		key = probeKey{path: bin, size: fi.Size(), mtime: fi.ModTime()}
		if o.probed != nil && o.probed.key == key {
			return o.probed.ok
		}
	}
	ok, err := supportsCNI11(ctx, bin)
	if o.probed != nil && err == nil {
		*o.probed = probeResult{key: key, ok: ok}
	}
	switch {
	case err != nil:
		o.Log.Warn("cannot ask the loopback CNI plugin its versions; the conflist offers CNI "+baseCNIVersion+" only (no STATUS/GC)", zap.Error(err))
	case !ok:
		o.Log.Info("the loopback CNI plugin does not answer CNI 1.1.0; the conflist offers CNI "+baseCNIVersion+" only (no STATUS/GC)", zap.String("binary", bin))
	}
	return ok
}

// probeKey identifies a plugin binary's version probe; probeResult is its
// answer (see Options.probed).
type probeKey struct {
	path  string
	size  int64
	mtime time.Time
}

type probeResult struct {
	key probeKey
	ok  bool
}

// appArmorPlan decides whether the profile file is installed (Ubuntu) and
// loaded (Ubuntu with AppArmor enabled), logging why not.
func (o *Options) appArmorPlan() (install, load bool, err error) {
	log := o.Log
	h, err := readOSRelease(o.HostRoot)
	if err != nil {
		return false, false, err
	}
	enabled, err := appArmorEnabled(o.HostRoot)
	if err != nil {
		return false, false, err
	}
	switch {
	case !h.ubuntu() && enabled:
		log.Warn("AppArmor is enabled but the host is not Ubuntu: profile "+ProfileName+" not installed, "+
			"so pods that request it will not start; drop appArmorProfile from the node DaemonSet for such nodes",
			zap.String("osRelease", h.file), zap.String("id", h.id))
	case !h.ubuntu():
		log.Info("host is not Ubuntu: AppArmor profile "+ProfileName+" not installed",
			zap.String("osRelease", h.file), zap.String("id", h.id))
	case !enabled:
		log.Warn("AppArmor is not enabled on this host: profile "+ProfileName+" installed but not loaded",
			zap.String("file", o.host("/sys/module/apparmor/parameters/enabled")))
	}
	return h.ubuntu(), h.ubuntu() && enabled, nil
}

// apply makes changes in order, or only logs them with DryRun.
func (o *Options) apply(ctx context.Context, changes []Change) error {
	for _, c := range changes {
		fields := []zap.Field{zap.String("action", string(c.Action)), zap.String("file", c.Path), zap.String("reason", c.Reason)}
		if o.DryRun {
			o.Log.Info("dry run: would change", fields...)
			continue
		}
		var err error
		switch c.Action {
		case ActionWrite:
			t := c.write
			if t.data != nil {
				err = atomicfile.WriteFile(o.host(t.path), t.data, t.mode)
			} else {
				err = copyFileAtomic(o.host(t.path), t.source, t.mode)
			}
		case ActionRemove:
			err = removeIfExists(o.host(c.Path))
		case ActionLoad:
			err = o.Runner.Run(ctx, AppArmorParser, "-r", o.host(ProfilePath))
		case ActionUnload:
			if err = o.Runner.Run(ctx, AppArmorParser, "-R", o.host(ProfilePath)); err != nil {
				// Not fatal: the profile may simply not be loaded (a reboot
				// with AppArmor off since); the files must go regardless.
				o.Log.Warn("could not unload the AppArmor profile", append(fields, zap.Error(err))...)
				continue
			}
		}
		if err != nil {
			return err
		}
		o.Log.Info("changed", fields...)
	}
	return nil
}

// Cleanup undoes Install: it unloads the AppArmor profile and removes the
// files the manifest lists, newest first, then the manifest. Files the
// bootstrap found on the host (a distribution's loopback) are not listed
// and stay. Without a manifest there is nothing to do.
func Cleanup(ctx context.Context, opts Options) ([]Change, error) {
	o, _, err := opts.complete()
	if err != nil {
		return nil, err
	}
	m, err := readManifest(o.host(ManifestPath))
	if err != nil {
		return nil, err
	}
	if m == nil {
		o.Log.Info("no install recorded; nothing to clean up", zap.String("file", o.host(ManifestPath)))
		return nil, nil
	}
	var changes []Change
	if m.has(ProfilePath) {
		enabled, err := appArmorEnabled(o.HostRoot)
		if err != nil {
			return nil, err
		}
		ok, err := exists(o.host(ProfilePath))
		if err != nil {
			return nil, err
		}
		// apparmor_parser -R reads the profile name from the file, so it
		// runs before the file goes.
		if enabled && ok {
			changes = append(changes, Change{Action: ActionUnload, Path: ProfilePath, Reason: "apparmor_parser -R"})
		}
	}
	for i := len(m.Files) - 1; i >= 0; i-- {
		p := m.Files[i]
		if ok, err := exists(o.host(p)); err != nil {
			return nil, err
		} else if ok {
			changes = append(changes, Change{Action: ActionRemove, Path: p, Reason: "installed by nsx-ncp-bootstrap " + m.Version})
		}
	}
	changes = append(changes, Change{Action: ActionRemove, Path: ManifestPath, Reason: "cleanup done"})
	return changes, o.apply(ctx, changes)
}

// Monitor checks every interval, until ctx ends, that the installed files
// are still this build's and re-installs what was removed or changed (Install
// with ReloadProfile off). A failed check is logged and retried at the next
// tick: the monitor must outlive a transient error. It returns an error only
// for invalid options.
func Monitor(ctx context.Context, opts Options, interval time.Duration) error {
	if interval <= 0 {
		return errors.New("monitor interval must be positive")
	}
	opts.ReloadProfile = false
	opts.probed = &probeResult{}
	o, _, err := opts.complete()
	if err != nil {
		return err
	}
	o.Log.Info("monitoring installed files", zap.Duration("interval", interval))
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		// opts, not o: Install completes the options itself.
		changes, err := Install(ctx, opts)
		switch {
		case err != nil:
			o.Log.Error("check of installed files failed", zap.Error(err))
		case len(changes) > 0:
			o.Log.Info("repaired installed files", zap.Int("changes", len(changes)), zap.Strings("files", paths(changes)))
		}
	}
}

func paths(cs []Change) []string {
	ps := make([]string, len(cs))
	for i, c := range cs {
		ps[i] = c.Path
	}
	return ps
}
