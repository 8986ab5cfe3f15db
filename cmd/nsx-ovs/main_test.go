package main_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nsx-ujo/nsx-ujo/pkg/nodeif"
	"github.com/nsx-ujo/nsx-ujo/tests/harness"
	"github.com/nsx-ujo/nsx-ujo/tests/nodeiftest"
)

// binary is the nsx-ovs built for this test run.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "nsx-ovs-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "nsx-ovs")
	out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "go build nsx-ovs: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// node is a topology plus an ncp.ini whose directories are private to the
// test.
type node struct {
	*nodeiftest.Topology
	dir, config, runDir, stateDir string
}

func newNode(t *testing.T) *node {
	tp := nodeiftest.New(t)
	// Named like the harness's temp dirs (nsxt-<pid>-) so that a later
	// run removes it if this process dies; short, for unix socket paths.
	dir, err := os.MkdirTemp("", fmt.Sprintf("nsxt-%d-", os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	n := &node{Topology: tp, dir: dir, config: filepath.Join(dir, "ncp.ini"),
		runDir: filepath.Join(dir, "run"), stateDir: filepath.Join(dir, "state")}
	ini := fmt.Sprintf(`[nsx_node_agent]
ovs_bridge = %s
ovs_uplink_port = %s
ovs_datapath_type = netdev
ovs_run_dir = %s
ovs_db_dir = %s
state_dir = %s
`, nodeiftest.Bridge, nodeiftest.Uplink, n.runDir, filepath.Join(dir, "db"), n.stateDir)
	if err := os.WriteFile(n.config, []byte(ini), 0o644); err != nil {
		t.Fatal(err)
	}
	return n
}

// proc is nsx-ovs running in the node namespace.
type proc struct {
	cmd  *exec.Cmd
	out  *harness.SyncBuffer
	done chan struct{}
	err  error
}

// start runs `nsx-ovs <args> --config-file <ncp.ini>` in the node
// namespace. The cleanup stops it and logs its output if the test failed.
func (n *node) start(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	cmd := n.Node.Exec(context.Background(), binary, append(args, "--config-file", n.config)...)
	cmd.Env = append(os.Environ(), env...)
	p := &proc{cmd: cmd, out: &harness.SyncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.stop(t)
		if t.Failed() {
			t.Logf("nsx-ovs %v output:\n%s", args, p.out)
		}
	})
	return p
}

// wait returns the exit error once the process ends, failing after 60s.
func (p *proc) wait(t *testing.T) error {
	t.Helper()
	select {
	case <-p.done:
		return p.err
	case <-time.After(60 * time.Second):
		t.Fatalf("nsx-ovs still running after 60s:\n%s", p.out)
		return nil
	}
}

// stop sends SIGTERM and waits; a clean stop exits 0.
func (p *proc) stop(t *testing.T) error {
	select {
	case <-p.done:
		return p.err
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.err
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		return errors.New("nsx-ovs ignored SIGTERM for 30s")
	}
}

// run runs nsx-ovs to completion and returns its output and error.
func (n *node) run(t *testing.T, env []string, args ...string) (string, error) {
	t.Helper()
	p := n.start(t, env, args...)
	err := p.wait(t)
	return p.out.String(), err
}

// health runs `nsx-ovs health` and returns its JSON line and success.
func (n *node) health(t *testing.T) (string, bool) {
	t.Helper()
	cmd := n.Node.Exec(context.Background(), binary, "health", "--config-file", n.config)
	out, err := cmd.Output()
	return strings.TrimSpace(string(out)), err == nil
}

// waitHealthy polls `nsx-ovs health` until it succeeds while p runs.
func (n *node) waitHealthy(t *testing.T, p *proc) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		line, ok := n.health(t)
		if ok {
			if !strings.Contains(line, `"ok":true`) {
				t.Fatalf("health exited 0 with %s", line)
			}
			return
		}
		select {
		case <-p.done:
			t.Fatalf("nsx-ovs exited (%v) before it was healthy; last health: %s\n%s", p.err, line, p.out)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("not healthy after 60s: %s\n%s", line, p.out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitOVSGone waits until the OVS daemons of a killed nsx-ovs have exited
// (they get SIGTERM from the kernel when it dies, and remove their pidfiles).
func (n *node) waitOVSGone(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		left, _ := filepath.Glob(filepath.Join(n.runDir, "*.pid"))
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("OVS daemons still running 20s after nsx-ovs died: %v", left)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ofctl runs ovs-ofctl on the bridge: options, then the command, then
// its arguments.
func (n *node) ofctl(t *testing.T, args ...string) string {
	t.Helper()
	i := 0
	for strings.HasPrefix(args[i], "-") {
		i++
	}
	cmd := append(append([]string{"-O", "OpenFlow15"}, args[:i+1]...), "unix:"+filepath.Join(n.runDir, nodeiftest.Bridge+".mgmt"))
	out, err := exec.Command("ovs-ofctl", append(cmd, args[i+1:]...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ovs-ofctl %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// healthz GETs /healthz from inside the node namespace. A raw request on
// one connection: http.Client dials from goroutines of its own, which
// would not be in the namespace.
func (n *node) healthz(t *testing.T, addr string) string {
	t.Helper()
	var resp string
	err := n.Node.Do(func() error {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "GET /healthz HTTP/1.0\r\nHost: %s\r\n\r\n", addr)
		var b strings.Builder
		_, err = bufio.NewReader(c).WriteTo(&b)
		resp = b.String()
		return err
	})
	if err != nil {
		t.Fatalf("GET /healthz: %v", err)
	}
	return resp
}

// TestEndToEnd runs the real binary: start (OVS up, node-if migrated),
// SIGTERM (flows saved), restart (flows restored, node-if migrated onto
// the new bridge device), cleanup (node-if as before).
func TestEndToEnd(t *testing.T) {
	n := newNode(t)
	before := n.UplinkSnapshot(t)
	if line, ok := n.health(t); ok {
		t.Fatalf("healthy before start: %s", line)
	}

	const healthzAddr = "127.0.0.1:10299"
	p := n.start(t, nil, "--healthz-address", healthzAddr)
	n.waitHealthy(t, p)
	n.CheckConnectivity(t)
	if resp := n.healthz(t, healthzAddr); !strings.HasPrefix(resp, "HTTP/1.0 200") || !strings.Contains(resp, `"migrated":true`) {
		t.Errorf("/healthz:\n%s", resp)
	}
	if !strings.Contains(p.out.String(), "DHCP client runs on the bridge") {
		t.Errorf("no DHCP advice in the log of a node with a leased address:\n%s", p.out)
	}
	if flows := n.ofctl(t, "dump-flows", "table=0"); !strings.Contains(flows, "priority=0 actions=NORMAL") {
		t.Errorf("no NORMAL flow:\n%s", flows)
	}

	n.ofctl(t, "add-flow", "cookie=0x1234,table=0,priority=10,ip,nw_dst=203.0.113.7,actions=drop")
	n.ofctl(t, "add-group", "group_id=7,type=select,bucket=actions=NORMAL")
	if err := p.stop(t); err != nil {
		t.Fatalf("stop: %v\n%s", err, p.out)
	}
	if saved, err := os.ReadFile(filepath.Join(n.stateDir, "ovs-flows", nodeiftest.Bridge+".json")); err != nil ||
		!bytes.Contains(saved, []byte("cookie=0x1234")) {
		t.Fatalf("saved flows: %v\n%s", err, saved)
	}
	n.waitOVSGone(t)

	p = n.start(t, nil, "--resync-interval", "200ms")
	n.waitHealthy(t, p)
	if flows := n.ofctl(t, "dump-flows", "table=0"); !strings.Contains(flows, "cookie=0x1234") || !strings.Contains(flows, "priority=0 actions=NORMAL") {
		t.Errorf("flows after restart:\n%s", flows)
	}
	if groups := n.ofctl(t, "dump-groups"); !strings.Contains(groups, "group_id=7") {
		t.Errorf("groups after restart:\n%s", groups)
	}
	if other := n.vsctl(t, "get", "Open_vSwitch", ".", "other_config"); strings.Contains(other, "flow-restore-wait") {
		t.Errorf("flow-restore-wait left set: %s", other)
	}
	if out := p.out.String(); strings.Contains(out, "the previous nsx-ovs saved no flows") || !strings.Contains(out, "restored saved flows") {
		t.Errorf("after a clean stop, the restarted nsx-ovs should say it restored the flows, nothing else:\n%s", out)
	}
	n.CheckConnectivity(t)

	t.Run("drift repaired", func(t *testing.T) {
		n.ofctl(t, "--strict", "del-flows", "table=0,priority=0")
		n.Node.Run(t, "ip", "addr", "del", "10.50.0.2/24", "dev", nodeiftest.Bridge)
		n.waitHealthy(t, p)
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			flows := n.ofctl(t, "dump-flows", "table=0")
			if strings.Contains(flows, "priority=0 actions=NORMAL") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("NORMAL flow not restored:\n%s", flows)
			}
		}
		n.CheckConnectivity(t)
	})
	t.Run("second instance refused", func(t *testing.T) {
		out, err := n.run(t, nil)
		if err == nil || !strings.Contains(out, "nsx-ovs.lock is held") {
			t.Errorf("second nsx-ovs: %v\n%s", err, out)
		}
	})
	t.Run("cleanup refused while running", func(t *testing.T) {
		out, err := n.run(t, nil, "cleanup")
		if err == nil || !strings.Contains(out, "nsx-ovs.lock is held") {
			t.Errorf("cleanup while nsx-ovs runs: %v\n%s", err, out)
		}
	})

	if err := p.stop(t); err != nil {
		t.Fatalf("stop: %v\n%s", err, p.out)
	}
	n.waitOVSGone(t)
	if out, err := n.run(t, nil, "cleanup"); err != nil {
		t.Fatalf("cleanup: %v\n%s", err, out)
	}
	n.CheckUplinkRestored(t, before)
	n.CheckConnectivity(t)
	if line, ok := n.health(t); ok {
		t.Errorf("healthy after cleanup: %s", line)
	}
	// Nothing nsx-ovs kept between runs is left: the database it created,
	// the saved flows, the journal, the lock.
	for _, d := range []string{n.stateDir, filepath.Join(n.dir, "db")} {
		if entries, err := os.ReadDir(d); err != nil || len(entries) != 0 {
			var names []string
			for _, e := range entries {
				names = append(names, e.Name())
			}
			t.Errorf("%s after cleanup: %v %v, want it empty", d, names, err)
		}
	}
}

func (n *node) vsctl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("ovs-vsctl", append([]string{"--db=unix:" + filepath.Join(n.runDir, "db.sock"), "--timeout=10"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ovs-vsctl %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// TestCrashAfterEachStep kills nsx-ovs (and with it OVS) after each
// migration step and each cleanup step in turn, then runs it again: the
// node must be connected after the re-run of the migration, and node-if
// exactly as before after the re-run of the cleanup.
func TestCrashAfterEachStep(t *testing.T) {
	n := newNode(t)
	before := n.UplinkSnapshot(t)
	cleanupSteps := nodeif.CleanupSteps()
	for i, step := range nodeif.MigrateSteps() {
		t.Run(step, func(t *testing.T) {
			out, err := n.run(t, []string{"NSX_OVS_CRASH_AFTER_STEP=" + step})
			if !killed(err) {
				t.Fatalf("nsx-ovs crashing after %s: %v, want killed\n%s", step, err, out)
			}
			n.waitOVSGone(t)
			p := n.start(t, nil)
			n.waitHealthy(t, p)
			n.CheckConnectivity(t)
			if err := p.stop(t); err != nil {
				t.Fatalf("stop: %v", err)
			}
			n.waitOVSGone(t)

			if i < len(cleanupSteps)-1 {
				cstep := cleanupSteps[i]
				out, err := n.run(t, []string{"NSX_OVS_CRASH_AFTER_STEP=" + cstep}, "cleanup")
				if !killed(err) {
					t.Fatalf("cleanup crashing after %s: %v, want killed\n%s", cstep, err, out)
				}
				n.waitOVSGone(t)
			}
			if out, err := n.run(t, nil, "cleanup"); err != nil {
				t.Fatalf("cleanup: %v\n%s", err, out)
			}
			n.CheckUplinkRestored(t, before)
		})
	}
}

func killed(err error) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

func TestMissingUplink(t *testing.T) {
	n := newNode(t)
	ini, _ := os.ReadFile(n.config)
	os.WriteFile(n.config, bytes.Replace(ini, []byte("ovs_uplink_port = node-if"), []byte("ovs_uplink_port = eth-nope"), 1), 0o644)
	out, err := n.run(t, nil)
	if err == nil || !strings.Contains(out, `ncp.ini [nsx_node_agent] ovs_uplink_port "eth-nope": no such network interface`) {
		t.Fatalf("nsx-ovs with a missing uplink: %v; want an error naming the key\n%s", err, out)
	}
	n.waitOVSGone(t)
}

// TestOVSOnHost runs nsx-ovs against an OVS it did not start: refused
// without --allow-ovs-on-host, used with it, and left running after both
// the daemon and its cleanup.
func TestOVSOnHost(t *testing.T) {
	n := newNode(t)
	host := harness.StartOVS(t, harness.OVSOptions{NetNS: n.Node})
	ini, _ := os.ReadFile(n.config)
	n.runDir = host.RunDir
	os.WriteFile(n.config, bytes.Replace(ini, []byte(filepath.Join(n.dir, "run")), []byte(host.RunDir), 1), 0o644)
	before := n.UplinkSnapshot(t)

	if out, err := n.run(t, nil); err == nil || !strings.Contains(out, "--allow-ovs-on-host") {
		t.Fatalf("nsx-ovs with OVS already running: %v; want a refusal naming --allow-ovs-on-host\n%s", err, out)
	}
	p := n.start(t, nil, "--allow-ovs-on-host")
	n.waitHealthy(t, p)
	n.CheckConnectivity(t)
	if err := p.stop(t); err != nil {
		t.Fatalf("stop: %v\n%s", err, p.out)
	}
	host.Vsctl(t, "br-exists", nodeiftest.Bridge) // still answering, bridge kept
	if out, err := n.run(t, nil, "cleanup", "--allow-ovs-on-host"); err != nil {
		t.Fatalf("cleanup: %v\n%s", err, out)
	}
	n.CheckUplinkRestored(t, before)
	host.Vsctl(t, "show")
}

// When one of its OVS daemons dies, nsx-ovs says which, stops the other
// and exits for its container to be restarted; without ovsdb-server it
// cannot list the bridges to save their flows and must not try (it used
// to wait out its whole stop timeout for the dead database first).
func TestOVSDaemonDies(t *testing.T) {
	for _, daemon := range []string{"ovsdb-server", "ovs-vswitchd"} {
		t.Run(daemon, func(t *testing.T) {
			n := newNode(t)
			p := n.start(t, nil)
			n.waitHealthy(t, p)
			pids := map[string]int{}
			for _, d := range []string{"ovsdb-server", "ovs-vswitchd"} {
				b, err := os.ReadFile(filepath.Join(n.runDir, d+".pid"))
				if err != nil {
					t.Fatal(err)
				}
				if pids[d], err = strconv.Atoi(strings.TrimSpace(string(b))); err != nil {
					t.Fatal(err)
				}
			}
			if err := syscall.Kill(pids[daemon], syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			if err := p.wait(t); err == nil {
				t.Fatalf("nsx-ovs exited 0 after its %s died; want an error exit for a restart", daemon)
			}
			out := p.out.String()
			if !strings.Contains(out, "open vswitch died") || !strings.Contains(out, daemon+" exited") {
				t.Errorf("nsx-ovs's log does not say that %s died:\n%s", daemon, out)
			}
			if strings.Contains(out, "save flows") {
				t.Errorf("nsx-ovs tried to save flows with its %s dead:\n%s", daemon, out)
			}
			// The killed one leaves its pidfile: look for the processes.
			for d, pid := range pids {
				for deadline := time.Now().Add(20 * time.Second); syscall.Kill(pid, 0) == nil; time.Sleep(50 * time.Millisecond) {
					if time.Now().After(deadline) {
						t.Fatalf("%s (pid %d) still runs 20 s after nsx-ovs exited", d, pid)
					}
				}
			}
			// The next nsx-ovs says why its bridges start without the
			// flows of the last run.
			p = n.start(t, nil)
			n.waitHealthy(t, p)
			if err := p.stop(t); err != nil {
				t.Fatalf("stop: %v\n%s", err, p.out)
			}
			if out := p.out.String(); !strings.Contains(out, "the previous nsx-ovs saved no flows") {
				t.Errorf("the nsx-ovs started after %s died does not say the previous run saved no flows:\n%s", daemon, out)
			}
		})
	}
}
