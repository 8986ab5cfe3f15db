package harness

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	ovsSchema = "/usr/share/openvswitch/vswitch.ovsschema"
	// ovsReadyTimeout bounds the wait for each OVS daemon to answer.
	ovsReadyTimeout = 20 * time.Second
	// stopGrace is how long a daemon gets to exit on SIGTERM before SIGKILL.
	stopGrace = 5 * time.Second
	// unixPathMax is sun_path's size; longer socket paths cannot be bound.
	unixPathMax = 108
)

// OVSOptions says what StartOVS brings up.
type OVSOptions struct {
	// NetNS is where ovsdb-server and ovs-vswitchd run; nil makes a new one.
	// It must not hold another OVS: the netdev datapath has one ovs-netdev
	// tap per namespace.
	NetNS *NetNS
	// Bridges are created (with DatapathType) before StartOVS returns.
	Bridges []string
	// DatapathType of the bridges; default "netdev", as there is no OVS
	// kernel module on the test machines.
	DatapathType string
}

// OVS is an ovsdb-server + ovs-vswitchd pair private to one test. All its
// files (database, sockets, pidfiles, logs, bridge .mgmt sockets) live in
// RunDir.
type OVS struct {
	RunDir string
	DBSock string // unix socket of ovsdb-server
	NetNS  *NetNS // where ovs-vswitchd runs, and so where its ports live

	env      []string
	db       *daemon
	vswitchd *daemon
}

// StartOVS starts ovsdb-server and ovs-vswitchd as children of the test,
// inside a network namespace, and creates the requested bridges. The cleanup
// stops both (vswitchd first) and, if the test failed, logs their log tails.
func StartOVS(t testing.TB, opts OVSOptions) *OVS {
	t.Helper()
	RequireRoot(t)
	n := opts.NetNS
	if n == nil {
		n = NewNetNS(t)
	}
	dir, err := newTempDir()
	if err != nil {
		t.Fatal(err)
	}
	// Registered before the daemons' cleanup, so it runs after it.
	t.Cleanup(func() { os.RemoveAll(dir) })

	o := &OVS{RunDir: dir, DBSock: filepath.Join(dir, "db.sock"), NetNS: n}
	// ovs-vswitchd puts <bridge>.mgmt in OVS_RUNDIR; the other variables keep
	// every tool away from the system's /etc/openvswitch and /var/run.
	o.env = append(os.Environ(),
		"OVS_RUNDIR="+dir, "OVS_DBDIR="+dir, "OVS_LOGDIR="+dir, "OVS_SYSCONFDIR="+dir)
	t.Cleanup(func() {
		o.vswitchd.stop(stopGrace)
		o.db.stop(stopGrace)
		if t.Failed() {
			for _, d := range []*daemon{o.vswitchd, o.db} {
				if d != nil {
					t.Log(d.logTail())
				}
			}
		}
	})
	if err := o.start(opts); err != nil {
		t.Fatalf("start OVS in netns %s: %v", n.Name, err)
	}
	return o
}

func (o *OVS) start(opts OVSOptions) error {
	longest := o.MgmtSocket(strings.Repeat("x", 15)) // IFNAMSIZ-1: the longest bridge name
	if len(longest) >= unixPathMax {
		return fmt.Errorf("run dir %s too long for unix sockets (TMPDIR)", o.RunDir)
	}
	dbPath := filepath.Join(o.RunDir, "conf.db")
	if _, err := runCmd(o.command("ovsdb-tool", "create", dbPath, ovsSchema)); err != nil {
		return err
	}

	var err error
	o.db, err = o.startDaemon("ovsdb-server", dbPath, "--remote=punix:"+o.DBSock)
	if err != nil {
		return err
	}
	err = waitFor(ovsReadyTimeout, o.db, func() error {
		_, err := runCmd(o.command("ovs-vsctl", "--db=unix:"+o.DBSock, "--no-wait", "--timeout=2", "show"))
		return err
	})
	if err != nil {
		return err
	}
	if _, err := runCmd(o.command("ovs-vsctl", "--db=unix:"+o.DBSock, "--no-wait", "--timeout=10", "init")); err != nil {
		return err
	}

	o.vswitchd, err = o.startDaemon("ovs-vswitchd", "unix:"+o.DBSock)
	if err != nil {
		return err
	}
	err = waitFor(ovsReadyTimeout, o.vswitchd, func() error {
		_, err := runCmd(o.command("ovs-appctl", "-t", o.ctl("ovs-vswitchd"), "version"))
		return err
	})
	if err != nil {
		return err
	}

	dt := opts.DatapathType
	if dt == "" {
		dt = "netdev"
	}
	for _, br := range opts.Bridges {
		// Without --no-wait ovs-vsctl returns once vswitchd has applied the
		// change, so the bridge and its .mgmt socket exist afterwards.
		_, err := runCmd(o.command("ovs-vsctl", "--db=unix:"+o.DBSock, "--timeout=10",
			"--may-exist", "add-br", br, "--", "set", "bridge", br, "datapath_type="+dt))
		if err != nil {
			return err
		}
	}
	return nil
}

// startDaemon starts an OVS daemon inside the namespace, in the foreground
// (no --detach) so it stays a child of the test, with all its files in RunDir.
func (o *OVS) startDaemon(name string, args ...string) (*daemon, error) {
	logPath := filepath.Join(o.RunDir, name+".log")
	args = append(args,
		"--pidfile="+filepath.Join(o.RunDir, name+".pid"),
		"--unixctl="+o.ctl(name),
		"--log-file="+logPath,
		// stderr is appended to the same log; console logging would
		// write every line twice.
		"-vconsole:off")
	cmd := o.NetNS.Exec(context.Background(), name, args...)
	cmd.Env = o.env
	return startDaemon(name, cmd, logPath)
}

func (o *OVS) ctl(daemon string) string { return filepath.Join(o.RunDir, daemon+".ctl") }

// command builds an OVS tool invocation in the host namespace (the daemons
// are reached through unix sockets) with this instance's environment.
func (o *OVS) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Env = o.env
	return cmd
}

func (o *OVS) run(t testing.TB, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = o.env
	out, err := runCmd(cmd)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Vsctl runs ovs-vsctl against this instance's database and returns stdout;
// it fails the test on error.
func (o *OVS) Vsctl(t testing.TB, args ...string) string {
	t.Helper()
	return o.run(t, "ovs-vsctl", append([]string{"--db=unix:" + o.DBSock, "--timeout=10"}, args...)...)
}

// ofctlValueOpts are the short ovs-ofctl options that take the next argument.
var ofctlValueOpts = map[string]bool{"-O": true, "-F": true, "-P": true, "-t": true}

// Ofctl runs ovs-ofctl against bridge's management socket and returns
// stdout; it fails the test on error. The socket goes after the command,
// past any leading options:
//
//	Ofctl(t, "br-int", "-O", "OpenFlow15", "--names", "dump-flows", "table=0")
//
// runs ovs-ofctl -O OpenFlow15 --names dump-flows unix:<RunDir>/br-int.mgmt table=0.
func (o *OVS) Ofctl(t testing.TB, bridge string, args ...string) string {
	t.Helper()
	i := 0
	for i < len(args) && strings.HasPrefix(args[i], "-") {
		if ofctlValueOpts[args[i]] {
			i++
		}
		i++
	}
	if i >= len(args) {
		t.Fatalf("Ofctl %v: no command", args)
	}
	argv := append(append(append([]string{}, args[:i+1]...), "unix:"+o.MgmtSocket(bridge)), args[i+1:]...)
	return o.run(t, "ovs-ofctl", argv...)
}

// Appctl runs ovs-appctl against ovs-vswitchd (e.g. "ofproto/trace",
// "dpctl/dump-flows") and returns stdout; it fails the test on error.
func (o *OVS) Appctl(t testing.TB, args ...string) string {
	t.Helper()
	return o.run(t, "ovs-appctl", append([]string{"-t", o.ctl("ovs-vswitchd")}, args...)...)
}

// MgmtSocket is the OpenFlow management socket ovs-vswitchd opens for bridge.
func (o *OVS) MgmtSocket(bridge string) string {
	return filepath.Join(o.RunDir, bridge+".mgmt")
}

// KillVSwitchd kills ovs-vswitchd with SIGKILL (a crash: no flows saved)
// and starts it again on the same database. The bridges come back from the
// database with empty flow tables; bridges in normal lists those that get
// their NORMAL flow back, as nsx-ovs restores it. It returns once the
// daemon answers and every bridge's management socket is there.
func (o *OVS) KillVSwitchd(t testing.TB, normal ...string) {
	t.Helper()
	_ = syscall.Kill(-o.vswitchd.cmd.Process.Pid, syscall.SIGKILL)
	<-o.vswitchd.done
	var err error
	o.vswitchd, err = o.startDaemon("ovs-vswitchd", "unix:"+o.DBSock)
	if err != nil {
		t.Fatal(err)
	}
	err = waitFor(ovsReadyTimeout, o.vswitchd, func() error {
		_, err := runCmd(o.command("ovs-appctl", "-t", o.ctl("ovs-vswitchd"), "version"))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, br := range normal {
		err := waitFor(ovsReadyTimeout, o.vswitchd, func() error {
			_, err := runCmd(o.command("ovs-ofctl", "add-flow", "unix:"+o.MgmtSocket(br), "priority=0,actions=NORMAL"))
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// RestartDB stops ovsdb-server and starts it again on the same database
// and socket, as an nsx-ovs container restart does: clients see their
// connection close and must reconnect. It returns once the server answers.
func (o *OVS) RestartDB(t testing.TB) {
	t.Helper()
	o.db.stop(stopGrace)
	var err error
	o.db, err = o.startDaemon("ovsdb-server", filepath.Join(o.RunDir, "conf.db"), "--remote=punix:"+o.DBSock)
	if err != nil {
		t.Fatal(err)
	}
	err = waitFor(ovsReadyTimeout, o.db, func() error {
		_, err := runCmd(o.command("ovs-vsctl", "--db=unix:"+o.DBSock, "--no-wait", "--timeout=2", "show"))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// AccessPeer puts a new namespace on bridge behind an access port of vlan
// (a veth called port in node, TX checksum offload off on both ends as the
// userspace datapath needs) with address cidr on its eth0: a host on that
// VLAN, e.g. the hypervisor's end of the HyperBus channel.
func (o *OVS) AccessPeer(t testing.TB, node *NetNS, bridge, port string, vlan int, cidr string) *NetNS {
	t.Helper()
	peer := NewNetNS(t)
	VethPair(t, peer, "eth0", node, port)
	peer.Run(t, "ethtool", "-K", "eth0", "tx", "off")
	node.Run(t, "ethtool", "-K", port, "tx", "off")
	peer.Run(t, "ip", "addr", "add", cidr, "dev", "eth0")
	o.Vsctl(t, "add-port", bridge, port, fmt.Sprintf("tag=%d", vlan))
	return peer
}
