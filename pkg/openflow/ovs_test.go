package openflow

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// testOVS is a private ovsdb-server and ovs-vswitchd in a temp dir, with
// one bridge br0 (datapath_type=netdev, OpenFlow15). ovs-vswitchd runs
// with --enable-dummy=override --disable-system: its netdev datapath and
// ports are dummies, so nothing appears on the host (no tap device, no
// kernel datapath) and tests can run side by side.
type testOVS struct {
	t        testing.TB
	dir      string
	env      []string
	ovsdb    *exec.Cmd
	vswitchd *exec.Cmd
}

// needRoot skips t unless it runs as root; under CI=true it fails instead.
func needRoot(t testing.TB) {
	t.Helper()
	skip := func(why string) {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s (CI=true: not skipping)", why)
		}
		t.Skipf("%s: skipping the tests against a real Open vSwitch", why)
	}
	if os.Geteuid() != 0 {
		skip("not root")
	}
	for _, bin := range []string{"ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovs-ofctl", "ovs-appctl"} {
		if _, err := exec.LookPath(bin); err != nil {
			skip(bin + " not installed")
		}
	}
}

// startOVS starts ovsdb-server and ovs-vswitchd with bridge br0; t's
// cleanup kills them and removes the dir.
func startOVS(t testing.TB) *testOVS {
	t.Helper()
	needRoot(t)
	dir, err := os.MkdirTemp("/tmp", "of-") // short: unix socket paths are limited to 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	o := &testOVS{t: t, dir: dir}
	o.env = append(os.Environ(), "OVS_RUNDIR="+dir, "OVS_DBDIR="+dir, "OVS_LOGDIR="+dir, "OVS_SYSCONFDIR="+dir)
	t.Cleanup(o.stop)
	o.run("ovsdb-tool", "create", filepath.Join(dir, "conf.db"), "/usr/share/openvswitch/vswitch.ovsschema")
	o.ovsdb = o.spawn("ovsdb-server", filepath.Join(dir, "conf.db"), "--remote=punix:"+o.DBSock(),
		"--unixctl="+filepath.Join(dir, "ovsdb.ctl"), "--pidfile="+filepath.Join(dir, "ovsdb.pid"),
		"--log-file="+filepath.Join(dir, "ovsdb.log"))
	o.waitFor(o.DBSock())
	o.vsctl("--no-wait", "init")
	o.StartVSwitchd()
	o.vsctl("add-br", "br0", "--", "set", "bridge", "br0", "datapath_type=netdev", "protocols=OpenFlow15")
	o.waitFor(o.Mgmt())
	return o
}

// DBSock is the OVSDB socket; Mgmt the bridge's OpenFlow socket.
func (o *testOVS) DBSock() string { return filepath.Join(o.dir, "db.sock") }
func (o *testOVS) Mgmt() string   { return filepath.Join(o.dir, "br0.mgmt") }

// StartVSwitchd starts ovs-vswitchd (again).
func (o *testOVS) StartVSwitchd() {
	o.t.Helper()
	o.vswitchd = o.spawn("ovs-vswitchd", "unix:"+o.DBSock(), "--enable-dummy=override", "--disable-system",
		"--pidfile="+filepath.Join(o.dir, "vswitchd.pid"), "--unixctl="+filepath.Join(o.dir, "vswitchd.ctl"),
		"--log-file="+filepath.Join(o.dir, "vswitchd.log"))
}

// KillVSwitchd kills ovs-vswitchd with SIGKILL and reaps it.
func (o *testOVS) KillVSwitchd() {
	o.t.Helper()
	if o.vswitchd == nil {
		return
	}
	_ = o.vswitchd.Process.Signal(syscall.SIGKILL)
	_ = o.vswitchd.Wait()
	o.vswitchd = nil
}

func (o *testOVS) stop() {
	for _, c := range []*exec.Cmd{o.vswitchd, o.ovsdb} {
		if c != nil && c.Process != nil {
			_ = c.Process.Signal(syscall.SIGKILL)
			_ = c.Wait()
		}
	}
	if o.t.Failed() {
		if b, err := os.ReadFile(filepath.Join(o.dir, "vswitchd.log")); err == nil {
			o.t.Logf("ovs-vswitchd log:\n%s", tail(string(b), 40))
		}
	}
	_ = os.RemoveAll(o.dir)
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

func (o *testOVS) spawn(name string, args ...string) *exec.Cmd {
	o.t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = o.env
	cmd.Dir = o.dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // never outlive the test binary
	if err := cmd.Start(); err != nil {
		o.t.Fatalf("start %s: %v", name, err)
	}
	return cmd
}

func (o *testOVS) run(name string, args ...string) string {
	o.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = o.env
	out, err := cmd.CombinedOutput()
	if err != nil {
		o.t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func (o *testOVS) vsctl(args ...string) string {
	o.t.Helper()
	return o.run("ovs-vsctl", append([]string{"--db=unix:" + o.DBSock(), "--timeout=15"}, args...)...)
}

// ofctl runs ovs-ofctl -O OpenFlow15 cmd on br0's management socket.
func (o *testOVS) ofctl(cmd string, args ...string) string {
	o.t.Helper()
	return o.run("ovs-ofctl", append([]string{"-O", "OpenFlow15", cmd, "unix:" + o.Mgmt()}, args...)...)
}

func (o *testOVS) waitFor(path string) {
	o.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := os.Stat(path); err == nil {
			return
		} else if !errors.Is(err, os.ErrNotExist) || time.Now().After(deadline) {
			o.t.Fatal(fmt.Errorf("waiting for %s: %w", path, err))
		}
		time.Sleep(10 * time.Millisecond)
	}
}
