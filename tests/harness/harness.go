// Package harness starts the real things privileged tests need — network
// namespaces, veth pairs, Open vSwitch on the userspace datapath, etcd and
// kube-apiserver — and tears each down with t.Cleanup, also when the test fails.
//
// A `go test -timeout` panic skips cleanups. Child daemons therefore die with
// the test process (Pdeathsig), and every netns and temp dir is named
// nsxt-<pid>-…, so the first use of the harness in a later process deletes
// what dead processes left behind.
package harness

import (
	"golang.org/x/sys/unix"

	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// namePrefix starts the name of every netns and temp dir the harness makes.
const namePrefix = "nsxt-"

// UnitOnlyEnv, when set, skips the privileged tests even as root (make
// unit).
const UnitOnlyEnv = "NSX_UNIT_ONLY"

// Privileged says whether privileged tests run in this process: as root,
// unless UnitOnlyEnv is set.
func Privileged() bool { return geteuid() == 0 && os.Getenv(UnitOnlyEnv) == "" }

// geteuid is os.Geteuid; a test of the skip rules replaces it.
var geteuid = os.Geteuid

// mustRun says whether a privileged test that cannot run fails instead of
// skipping: under CI=true, unless unit tests only were asked for.
func mustRun() bool { return os.Getenv("CI") == "true" && os.Getenv(UnitOnlyEnv) == "" }

const needsRoot = "needs root (network namespaces, OVS, eBPF, kube-apiserver)"

// RequireRoot skips t unless privileged tests run here (Privileged). Under
// CI=true it fails instead: a privileged test that silently skipped would
// pass CI without testing anything.
func RequireRoot(t testing.TB) {
	t.Helper()
	if Privileged() {
		return
	}
	if mustRun() {
		t.Fatal("this test " + needsRoot + "; CI=true makes that a failure: run it as root")
	}
	t.Skip("privileged: " + needsRoot + "; run as root for the full suite")
}

// MainRequiresRoot is RequireRoot for a TestMain that starts privileged
// things before its tests: it returns ok, or the exit code to leave with
// (0 and one line saying the package was skipped; 1 under CI=true).
func MainRequiresRoot(pkg string) (code int, ok bool) {
	if Privileged() {
		return 0, true
	}
	if mustRun() {
		fmt.Fprintf(os.Stderr, "%s %s; CI=true makes that a failure\n", pkg, needsRoot)
		return 1, false
	}
	fmt.Printf("%s: skipped, every test %s\n", pkg, needsRoot)
	return 0, false
}

// RepoRoot returns the directory holding the go.mod of this module, found by
// walking up from the working directory (go test runs in the package dir).
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		mod, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.HasPrefix(mod, []byte("module github.com/nsx-ujo/nsx-ujo\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod of module github.com/nsx-ujo/nsx-ujo above the working directory")
		}
		dir = parent
	}
}

// newTempDir makes a temp dir named after this process so that sweep can
// remove it once the process is dead. It lives directly in os.TempDir():
// t.TempDir paths embed the test name and can push unix socket paths past
// the 108-byte limit.
func newTempDir() (string, error) {
	return os.MkdirTemp("", fmt.Sprintf("%s%d-", namePrefix, os.Getpid()))
}

// TempDir makes a short temp dir that the cleanup removes (unmounting a
// bpffs mounted on it first) and that the next run's sweep removes if this
// process dies first. Use it for OVS run dirs and bpf pin dirs.
func TempDir(t testing.TB) string {
	t.Helper()
	sweepLeftovers(t.Logf)
	d, err := newTempDir()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeDir(d) })
	return d
}

func removeDir(d string) error {
	// bpffs pin dirs may be mounted on d or below it: unmount them first,
	// deepest first, or RemoveAll would unpin maps and fail on the mount.
	if data, err := os.ReadFile("/proc/self/mounts"); err == nil {
		var under []string
		for _, line := range strings.Split(string(data), "\n") {
			if f := strings.Fields(line); len(f) > 1 && (f[1] == d || strings.HasPrefix(f[1], d+"/")) {
				under = append(under, f[1])
			}
		}
		for i := len(under) - 1; i >= 0; i-- {
			_ = unix.Unmount(under[i], unix.MNT_DETACH)
		}
	}
	return os.RemoveAll(d)
}

var (
	sweepOnce  sync.Once
	leftoverRE = regexp.MustCompile(`^` + namePrefix + `(\d+)-`)
)

// SweepLeftovers deletes what harness users that are no longer alive left
// (netns, temp dirs, cgroups, bpffs mounts): make demo-down.
func SweepLeftovers(logf func(format string, args ...any)) { sweepLeftovers(logf) }

// sweepLeftovers deletes, once per process, the netns and temp dirs of
// harness users that are no longer alive.
func sweepLeftovers(logf func(format string, args ...any)) {
	sweepOnce.Do(func() { sweep(logf) })
}

func sweep(logf func(format string, args ...any)) {
	sweepCgroups(logf) // first: the pods it kills hold mounts in the dirs below
	netnss, _ := filepath.Glob(filepath.Join(netnsDir, namePrefix+"*"))
	for _, p := range netnss {
		name := filepath.Base(p)
		if ownerAlive(name) {
			continue
		}
		if err := deleteNetNS(name); err != nil {
			logf("harness: removing leftover netns %s: %v", name, err)
			continue
		}
		logf("harness: removed leftover netns %s of a dead test process", name)
	}
	sweepMountNS(logf)
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), namePrefix+"*"))
	for _, d := range dirs {
		if ownerAlive(filepath.Base(d)) {
			continue
		}
		if err := removeDir(d); err != nil {
			logf("harness: removing leftover dir %s: %v", d, err)
			continue
		}
		logf("harness: removed leftover dir %s of a dead test process", d)
	}
}

// ownerAlive reports whether the process named in a nsxt-<pid>-… name still
// runs. Names that do not parse are someone else's and count as alive. A
// zombie counts as dead: a killed test binary can wait unreaped in its parent.
func ownerAlive(name string) bool {
	m := leftoverRE.FindStringSubmatch(name)
	if m == nil {
		return true
	}
	pid, err := strconv.Atoi(m[1])
	if err != nil {
		return true
	}
	if pid == os.Getpid() {
		return true
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name, which may hold spaces.
	if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) {
		return stat[i+2] != 'Z'
	}
	return true
}

// daemon is a long-running child of the test process, logging to a file.
type daemon struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	waitErr error
}

// startDaemon starts cmd with stdout and stderr appended to logPath. The
// child gets its own process group, so stop reaches anything it forks and a
// ^C to the test's group does not bypass the cleanup order, and Pdeathsig,
// so it dies with the test process when a timeout panic skips the cleanups.
// (Pdeathsig fires when the forking OS thread exits; Go only ends threads
// that a goroutine left locked, which the harness never does.)
func startDaemon(name string, cmd *exec.Cmd, logPath string) (*daemon, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cmd.Stdout, cmd.Stderr = f, f
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	d := &daemon{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		d.waitErr = cmd.Wait()
		close(d.done)
	}()
	return d, nil
}

// exitErr returns nil while the daemon runs, and why it ended otherwise.
func (d *daemon) exitErr() error {
	select {
	case <-d.done:
		return fmt.Errorf("%s exited: %v\n%s", d.name, d.waitErr, d.logTail())
	default:
		return nil
	}
}

// stop sends SIGTERM to the daemon's process group and SIGKILL after grace.
// Safe on a nil daemon (a start that failed half way) and when called twice.
func (d *daemon) stop(grace time.Duration) {
	if d == nil {
		return
	}
	pgid := -d.cmd.Process.Pid
	_ = syscall.Kill(pgid, syscall.SIGTERM)
	select {
	case <-d.done:
		return
	case <-time.After(grace):
	}
	_ = syscall.Kill(pgid, syscall.SIGKILL)
	<-d.done
}

func (d *daemon) logTail() string {
	return fmt.Sprintf("--- tail of %s ---\n%s", d.logPath, tail(d.logPath, 40))
}

// tail returns the last n lines of a file, or why it could not be read.
func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}

// waitFor polls check until it succeeds, d exits or timeout passes. The error
// carries check's last failure so a start that hangs says why.
func waitFor(timeout time.Duration, d *daemon, check func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return nil
		}
		if exit := d.exitErr(); exit != nil {
			return exit
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %s: %w\n%s", d.name, timeout, err, d.logTail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// freePorts returns n distinct free TCP ports on 127.0.0.1. All listeners stay
// open until every port is picked so the kernel cannot hand one out twice.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// runCmd runs cmd and returns its stdout; the error carries stderr.
func runCmd(cmd *exec.Cmd) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s: %w\n%s%s", strings.Join(cmd.Args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}
