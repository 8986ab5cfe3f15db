// Package ovsrun runs the Open vSwitch daemons of one node for nsx-ovs:
// it creates the database, starts ovsdb-server and ovs-vswitchd with every
// file of theirs in the configured directories, waits until they answer,
// and stops them cleanly, saving the OpenFlow tables across the restart as
// OVS's own ovs-ctl/ovs-save do (flow-restore-wait).
//
// It never touches daemons it did not start: an OVS already running on the
// node is either refused or, when allowed, used as it is and left running.
package ovsrun

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/nsx-ujo/nsx-ujo/pkg/ovsdb"
)

// DefaultSchema is where Debian's openvswitch-common installs the schema.
const DefaultSchema = "/usr/share/openvswitch/vswitch.ovsschema"

// stopGrace is how long a daemon gets to exit on SIGTERM before SIGKILL.
const stopGrace = 10 * time.Second

// Options say where the daemons keep their files.
type Options struct {
	// RunDir holds db.sock, the pidfiles, the unixctl sockets and the
	// bridges' <bridge>.mgmt sockets: the agent and nsx-kube-proxy dial
	// them there (ncp.ini [nsx_node_agent] ovs_run_dir).
	RunDir string
	DBDir  string // conf.db (ovs_db_dir)
	// StateDir keeps the flows saved at stop until the next start
	// (state_dir); it must survive a restart of the container.
	StateDir string
	LogDir   string // the daemons' log files; "" logs to our stderr
	Schema   string // default DefaultSchema
	// AllowExisting uses an OVS that already answers in RunDir (the host's)
	// instead of refusing to start.
	AllowExisting bool
	// StartTimeout bounds the wait for each daemon to answer (default 30s).
	StartTimeout time.Duration
	// OpTimeout bounds each OVSDB call (ovs_operation_timeout).
	OpTimeout time.Duration
	Log       *zap.Logger
}

// OVS is a running ovsdb-server + ovs-vswitchd pair.
type OVS struct {
	opts     Options
	db       *ovsdb.Client
	dbProc   *proc // nil when not started by us
	vsProc   *proc
	exited   chan struct{}
	exitedBy *proc
}

// DBSocket is the OVSDB socket in runDir.
func DBSocket(runDir string) string { return filepath.Join(runDir, "db.sock") }

// Start brings OVS up and returns once both daemons answer and saved flows
// are back. It starts only what is not already running and, without
// AllowExisting, refuses to share RunDir with an OVS it did not start.
func Start(ctx context.Context, opts Options) (*OVS, error) {
	if opts.Schema == "" {
		opts.Schema = DefaultSchema
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 30 * time.Second
	}
	if opts.Log == nil {
		opts.Log = zap.NewNop()
	}
	o := &OVS{opts: opts, exited: make(chan struct{})}
	log := opts.Log

	if running, err := o.useRunning(ctx); err != nil {
		return nil, err
	} else if running {
		return o, nil
	}
	for _, d := range []string{opts.RunDir, opts.DBDir, opts.StateDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("ovsrun: %w", err)
		}
	}
	if opts.LogDir != "" {
		if err := os.MkdirAll(opts.LogDir, 0o755); err != nil {
			return nil, fmt.Errorf("ovsrun: %w", err)
		}
	}
	ok := false
	defer func() {
		if !ok {
			if o.db != nil {
				o.db.Close()
			}
			o.stopProcs()
		}
	}()
	if err := o.startDB(ctx); err != nil {
		return nil, err
	}
	saved, err := listSaved(opts.StateDir)
	if err != nil {
		log.Error("cannot read saved flows, starting with empty flow tables", zap.Error(err))
	}
	if _, err := os.Stat(runningRecord(opts.StateDir)); err == nil && len(saved) == 0 {
		// The one line that tells the operator why the first seconds
		// after this start dropped traffic.
		log.Warn("the previous nsx-ovs saved no flows at its end (it was killed, one of its OVS daemons died, or the save failed: its log says which): "+
			"the bridges start with their default flows until nsx-kube-proxy and nsx-node-agent reinstall theirs",
			zap.String("record", runningRecord(opts.StateDir)))
	}
	// ovs-vswitchd must find flow-restore-wait set when it starts, so that
	// it keeps the datapath as it is until the flows are back, and unset
	// when there is nothing to restore: a flag left by a start that died
	// half way would hold the datapath forever.
	var wait *string
	if len(saved) > 0 {
		wait = ptr("true")
	}
	if err := o.db.SetSwitchOtherConfig(ctx, "flow-restore-wait", wait); err != nil {
		return nil, err
	}
	if err := o.startVSwitchd(ctx); err != nil {
		return nil, err
	}
	if len(saved) > 0 {
		o.restoreFlows(ctx, saved)
		if err := o.db.SetSwitchOtherConfig(ctx, "flow-restore-wait", nil); err != nil {
			return nil, err
		}
	}
	go o.watch()
	ok = true
	// Removed once a stop has saved the flows: what the next start finds
	// says whether this run ended cleanly.
	if err := os.WriteFile(runningRecord(opts.StateDir), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		log.Warn("cannot record this run in the state directory; the next start cannot tell an unclean stop", zap.Error(err))
	}
	return o, nil
}

func ptr[T any](v T) *T { return &v }

// useRunning adopts, when allowed, an OVS that already answers in RunDir,
// and reports whether there is one.
func (o *OVS) useRunning(ctx context.Context) (bool, error) {
	sock := DBSocket(o.opts.RunDir)
	db, err := ovsdb.Dial(sock, ovsdb.Options{Timeout: o.opts.OpTimeout, Logger: o.opts.Log})
	if err == nil && db.Ping(ctx) == nil {
		if !o.opts.AllowExisting {
			db.Close()
			return true, fmt.Errorf("ovsdb-server already answers on %s: another Open vSwitch runs on this node; stop it, or allow using it (nsx-ovs --allow-ovs-on-host)", sock)
		}
		o.opts.Log.Info("using the Open vSwitch already running on the host; it will be left running", zap.String("runDir", o.opts.RunDir))
		if err := o.waitVSwitchd(ctx, nil); err != nil {
			db.Close()
			return true, err
		}
		o.db = db
		return true, nil
	}
	if db != nil {
		db.Close()
	}
	if vswitchdAnswers(ctx, o.opts.RunDir) == nil {
		return true, fmt.Errorf("ovs-vswitchd already answers in %s without an ovsdb-server: stop it first", o.opts.RunDir)
	}
	return false, nil
}

// Client is the OVSDB connection, valid until Stop.
func (o *OVS) Client() *ovsdb.Client { return o.db }

// Started says whether this process started the daemons (false when it
// uses the host's).
func (o *OVS) Started() bool { return o.vsProc != nil }

// Exited is closed when a daemon this process started has exited on its
// own. Nothing restarts it: the caller stops the other and exits, so the
// container restarts and re-runs the whole idempotent start.
func (o *OVS) Exited() <-chan struct{} { return o.exited }

// ExitErr says which daemon exited and how, once Exited is closed.
func (o *OVS) ExitErr() error {
	if o.exitedBy == nil {
		return nil
	}
	return fmt.Errorf("%s exited: %v", o.exitedBy.name, o.exitedBy.err)
}

func (o *OVS) watch() {
	select {
	case <-o.dbProc.done:
		o.exitedBy = o.dbProc
	case <-o.vsProc.done:
		o.exitedBy = o.vsProc
	}
	close(o.exited)
}

// Stop saves the flows of every bridge and stops the daemons this process
// started (ovs-vswitchd first, so it never runs without its database).
// With an OVS it did not start it only closes the connection.
func (o *OVS) Stop(ctx context.Context) error {
	var errs []error
	// Saving needs both: ovs-vswitchd for the flows, the database for
	// the bridges (without it the listing would wait out ctx).
	if o.vsProc != nil && !o.vsProc.exited() && (o.dbProc == nil || !o.dbProc.exited()) {
		if err := o.saveFlows(ctx); err != nil {
			errs = append(errs, err)
		} else if err := os.Remove(runningRecord(o.opts.StateDir)); err != nil && !os.IsNotExist(err) {
			errs = append(errs, err)
		}
	}
	if o.db != nil {
		o.db.Close()
	}
	errs = append(errs, o.stopProcs())
	return errors.Join(errs...)
}

func (o *OVS) stopProcs() error {
	var errs []error
	for _, p := range []*proc{o.vsProc, o.dbProc} {
		if p == nil {
			continue
		}
		if err := p.stop(stopGrace); err != nil {
			errs = append(errs, err)
		}
		o.opts.Log.Info("stopped", zap.String("daemon", p.name))
	}
	return errors.Join(errs...)
}

// env makes the daemons and tools keep everything in our directories
// (OVS's own defaults are compiled-in /var/run/openvswitch and /etc).
func (o *OVS) env() []string {
	logDir := o.opts.LogDir
	if logDir == "" {
		logDir = o.opts.RunDir
	}
	return append(os.Environ(), "OVS_RUNDIR="+o.opts.RunDir, "OVS_DBDIR="+o.opts.DBDir, "OVS_LOGDIR="+logDir)
}

// logArgs sends a daemon's log to LogDir, or to our stderr (the container
// log) when there is none. Syslog is off: containers have no /dev/log.
func (o *OVS) logArgs(name string) []string {
	if o.opts.LogDir == "" {
		return []string{"-vsyslog:off", "-vconsole:info"}
	}
	return []string{"-vsyslog:off", "-vconsole:off", "--log-file=" + filepath.Join(o.opts.LogDir, name+".log")}
}

func (o *OVS) startDB(ctx context.Context) error {
	dbPath := filepath.Join(o.opts.DBDir, "conf.db")
	if err := o.prepareDB(ctx, dbPath); err != nil {
		return err
	}
	args := append([]string{dbPath,
		"--remote=punix:" + DBSocket(o.opts.RunDir),
		"--remote=db:Open_vSwitch,Open_vSwitch,manager_options",
		"--pidfile"}, o.logArgs("ovsdb-server")...)
	p, err := startProc("ovsdb-server", o.env(), args...)
	if err != nil {
		return err
	}
	o.dbProc = p
	err = o.waitReady(ctx, p, func() error {
		db, err := ovsdb.Dial(DBSocket(o.opts.RunDir), ovsdb.Options{Timeout: o.opts.OpTimeout, Logger: o.opts.Log})
		if err != nil {
			return err
		}
		if err := db.InitDB(ctx); err != nil {
			db.Close()
			return err
		}
		o.db = db
		return nil
	})
	if err != nil {
		return err
	}
	o.opts.Log.Info("ovsdb-server ready", zap.Int("pid", p.cmd.Process.Pid), zap.String("db", dbPath))
	return nil
}

// prepareDB creates conf.db from the schema when absent and converts it
// when the installed schema is newer, as ovs-ctl does. The new file is
// created beside and renamed, so a crash never leaves a half-written DB.
func (o *OVS) prepareDB(ctx context.Context, dbPath string) error {
	if _, err := os.Stat(dbPath); errors.Is(err, os.ErrNotExist) {
		tmp := dbPath + ".tmp"
		os.Remove(tmp)
		if _, err := o.tool(ctx, "ovsdb-tool", "create", tmp, o.opts.Schema); err != nil {
			return err
		}
		// Recorded before it exists: RemoveState removes only a database
		// nsx-ovs created, never the host's own.
		if err := os.WriteFile(createdRecord(o.opts.StateDir), []byte(dbPath+"\n"), 0o644); err != nil {
			return fmt.Errorf("ovsrun: %w", err)
		}
		if err := os.Rename(tmp, dbPath); err != nil {
			return fmt.Errorf("ovsrun: %w", err)
		}
		o.opts.Log.Info("created the OVS database", zap.String("db", dbPath), zap.String("schema", o.opts.Schema))
		return nil
	} else if err != nil {
		return fmt.Errorf("ovsrun: %w", err)
	}
	out, err := o.tool(ctx, "ovsdb-tool", "needs-conversion", dbPath, o.opts.Schema)
	if err != nil {
		return err
	}
	if strings.TrimSpace(out) == "yes" {
		if _, err := o.tool(ctx, "ovsdb-tool", "convert", dbPath, o.opts.Schema); err != nil {
			return err
		}
		o.opts.Log.Info("converted the OVS database to the installed schema", zap.String("db", dbPath))
	}
	return nil
}

func (o *OVS) startVSwitchd(ctx context.Context) error {
	args := append([]string{"unix:" + DBSocket(o.opts.RunDir), "--pidfile"}, o.logArgs("ovs-vswitchd")...)
	p, err := startProc("ovs-vswitchd", o.env(), args...)
	if err != nil {
		return err
	}
	o.vsProc = p
	if err := o.waitVSwitchd(ctx, p); err != nil {
		return err
	}
	o.opts.Log.Info("ovs-vswitchd ready", zap.Int("pid", p.cmd.Process.Pid))
	return nil
}

func (o *OVS) waitVSwitchd(ctx context.Context, p *proc) error {
	return o.waitReady(ctx, p, func() error { return vswitchdAnswers(ctx, o.opts.RunDir) })
}

// waitReady polls check until it succeeds, p (when ours) exits, or
// StartTimeout passes; the error carries check's last failure.
func (o *OVS) waitReady(ctx context.Context, p *proc, check func() error) error {
	name := "ovs-vswitchd"
	if p != nil {
		name = p.name
	}
	ctx, cancel := context.WithTimeout(ctx, o.opts.StartTimeout)
	defer cancel()
	for {
		err := check()
		if err == nil {
			return nil
		}
		if p != nil && p.exited() {
			return fmt.Errorf("%s exited during start-up: %v (last check: %v)", name, p.err, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not answering after %s: %w", name, o.opts.StartTimeout, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (o *OVS) tool(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = o.env()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// vswitchdAnswers asks the ovs-vswitchd of runDir for its version over
// its control socket.
func vswitchdAnswers(ctx context.Context, runDir string) error {
	if _, err := os.Stat(filepath.Join(runDir, "ovs-vswitchd.pid")); err != nil {
		return fmt.Errorf("ovs-vswitchd: %w", err)
	}
	_, err := Appctl(ctx, VSwitchdCtl(runDir), "version")
	return err
}

// Probe checks that both daemons of runDir answer and that ovs-vswitchd is
// not still waiting for its flows, for health checks.
func Probe(ctx context.Context, runDir string, timeout time.Duration) error {
	var errs []error
	db, err := ovsdb.Dial(DBSocket(runDir), ovsdb.Options{Timeout: timeout})
	if err == nil {
		var other map[string]string
		if other, err = db.SwitchOtherConfig(); err == nil && other["flow-restore-wait"] == "true" {
			errs = append(errs, errors.New("ovs-vswitchd holds the datapath until saved flows are restored (other_config:flow-restore-wait=true)"))
		}
		db.Close()
	}
	if err != nil {
		errs = append(errs, fmt.Errorf("ovsdb-server: %w", err))
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := vswitchdAnswers(ctx, runDir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// proc is a daemon started by this process.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error // after done
}

// startProc starts an OVS daemon in the foreground (no --detach), so it
// stays our child and its exit is seen. Its own process group keeps a ^C
// on a terminal from reaching it before we have saved the flows; Pdeathsig
// stops it when nsx-ovs dies, so a restarted nsx-ovs never finds orphans
// holding the run dir. (Pdeathsig follows the forking OS thread, which Go
// only ends for a goroutine that exits while locked; nsx-ovs never does.)
func startProc(name string, env []string, args ...string) (*proc, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM (OVS daemons exit cleanly on it, removing their
// pidfiles and sockets) and SIGKILL after grace.
func (p *proc) stop(grace time.Duration) error {
	if p.exited() {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
	}
	_ = p.cmd.Process.Kill()
	<-p.done
	return fmt.Errorf("%s did not exit within %s of SIGTERM: killed", p.name, grace)
}

// createdRecord is the file saying nsx-ovs created the OVS database.
func createdRecord(stateDir string) string { return filepath.Join(stateDir, "ovsdb-created") }

// runningRecord is the file saying an nsx-ovs runs the daemons and has
// not yet saved its flows at a stop.
func runningRecord(stateDir string) string { return filepath.Join(stateDir, "ovs-running") }

// RemoveState removes what nsx-ovs kept on the node between its runs, for
// `nsx-ovs cleanup` once OVS is stopped for good: the saved flows, and the
// OVS database with its lock and the record of its creation if nsx-ovs
// created it (a database that was the host's stays). Idempotent.
func RemoveState(opts Options) error {
	var errs []error
	if err := os.RemoveAll(savedDir(opts.StateDir)); err != nil {
		errs = append(errs, fmt.Errorf("saved flows: %w", err))
	}
	if err := os.Remove(runningRecord(opts.StateDir)); err != nil && !os.IsNotExist(err) {
		errs = append(errs, fmt.Errorf("run record: %w", err))
	}
	record := createdRecord(opts.StateDir)
	if _, err := os.Stat(record); err == nil {
		db := filepath.Join(opts.DBDir, "conf.db")
		for _, f := range []string{db, filepath.Join(opts.DBDir, ".conf.db.~lock~"), db + ".tmp", filepath.Join(opts.DBDir, ".conf.db.tmp.~lock~"), record} {
			if err := os.Remove(f); err != nil && !os.IsNotExist(err) {
				errs = append(errs, fmt.Errorf("OVS database: %w", err))
			}
		}
	}
	return errors.Join(errs...)
}
