package harness

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

const (
	// netnsDir is where `ip netns add` mounts named namespaces.
	netnsDir = "/run/netns"
	// runTimeout bounds a command run by Run so a hung tool fails the test
	// with its output instead of reaching the go test timeout.
	runTimeout = 2 * time.Minute
)

var netnsCounter atomic.Int64

// NetNS is a named network namespace made for one test.
type NetNS struct {
	Name string // nsxt-<pid>-<counter>
	Path string // /run/netns/<Name>
	// Mount, when set (OwnHostPaths), is the namespace's own mount
	// namespace, which Exec enters too.
	Mount string
}

// NewNetNS creates a network namespace with lo up. The cleanup kills every
// process still inside and deletes it.
func NewNetNS(t testing.TB) *NetNS {
	t.Helper()
	RequireRoot(t)
	sweepLeftovers(t.Logf)
	n, err := CreateNetNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Delete(); err != nil {
			t.Errorf("delete netns %s: %v", n.Name, err)
		}
	})
	return n
}

// CreateNetNS is NewNetNS for a goroutine other than the test's (which
// must not call t.Fatal): the caller deletes it with Delete. A killed test
// process leaves it to the next run's sweep.
func CreateNetNS() (*NetNS, error) {
	name := fmt.Sprintf("%s%d-%d", namePrefix, os.Getpid(), netnsCounter.Add(1))
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip netns add %s: %w: %s", name, err, out)
	}
	n := &NetNS{Name: name, Path: filepath.Join(netnsDir, name)}
	if out, err := n.Exec(context.Background(), "ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		return nil, errors.Join(fmt.Errorf("netns %s: lo up: %w: %s", name, err, out), n.Delete())
	}
	return n, nil
}

// Delete kills what runs in the namespace and deletes it; deleting one
// already gone is no error.
func (n *NetNS) Delete() error { return deleteNetNS(n.Name) }

// deleteNetNS kills the processes inside the namespace, then unmounts it.
// Killing first matters: a namespace lives on while a process holds it.
func deleteNetNS(name string) error {
	if _, err := os.Stat(filepath.Join(netnsDir, name)); os.IsNotExist(err) {
		return nil // deleted by the test itself, as a runtime would
	}
	out, err := exec.Command("ip", "netns", "pids", name).Output()
	if err != nil {
		return fmt.Errorf("ip netns pids %s: %w", name, err)
	}
	for _, f := range strings.Fields(string(out)) {
		// The test process itself is listed while one of its threads is
		// inside (Do on another goroutine); it must not shoot itself.
		if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns del %s: %w: %s", name, err, out)
	}
	return nil
}

// Do runs fn on a locked OS thread switched into the namespace, for netlink
// and socket calls from Go. Goroutines fn starts run outside of it.
func (n *NetNS) Do(fn func() error) error {
	h, err := ns.GetNS(n.Path)
	if err != nil {
		return err
	}
	defer h.Close()
	return h.Do(func(ns.NetNS) error { return fn() })
}

// Exec builds a command that runs inside the namespace. It enters only the
// network namespace with nsenter: `ip netns exec` also unshares the mount
// namespace and remounts /sys, which hides /sys/fs/bpf from the command.
func (n *NetNS) Exec(ctx context.Context, name string, args ...string) *exec.Cmd {
	ns := []string{"--net=" + n.Path}
	if n.Mount != "" {
		ns = append(ns, "--mount="+n.Mount)
	}
	cmd := exec.CommandContext(ctx, "nsenter", append(append(ns, "--", name), args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// Run runs a command inside the namespace and returns its combined output;
// it fails the test with that output if the command fails.
func (n *NetNS) Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	defer cancel()
	out, err := n.Exec(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("in netns %s: %s %s: %v\n%s", n.Name, name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Output runs a command in the namespace and returns its standard output
// alone, failing the test on error (stderr goes into the failure). For
// snapshots: iproute2 warns on stderr about namespaces other tests are
// deleting at that moment ("Peer netns reference is invalid"), which is
// not state of this namespace.
func (n *NetNS) Output(t testing.TB, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	defer cancel()
	cmd := n.Exec(ctx, name, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("in netns %s: %s %s: %v\n%s%s", n.Name, name, strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out)
}

// VethPair creates a veth pair with end aName in a and bName in b, both up.
// It is created inside a, so a name can never clash with the host's links.
// The cleanup deletes it (which removes both ends).
func VethPair(t testing.TB, a *NetNS, aName string, b *NetNS, bName string) {
	t.Helper()
	a.Run(t, "ip", "link", "add", aName, "type", "veth", "peer", "name", bName, "netns", b.Name)
	t.Cleanup(func() {
		// Gone already if the test deleted it or a's namespace went first.
		if _, err := os.Stat(a.Path); err != nil {
			return
		}
		out, err := exec.Command("ip", "-n", a.Name, "link", "del", aName).CombinedOutput()
		if err != nil && !strings.Contains(string(out), "Cannot find device") {
			t.Errorf("delete veth %s in %s: %v: %s", aName, a.Name, err, out)
		}
	})
	a.Run(t, "ip", "link", "set", aName, "up")
	b.Run(t, "ip", "link", "set", bName, "up")
}

// DialContext dials from inside n: the socket is created in n and keeps
// it after the thread leaves.
func (n *NetNS) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var conn net.Conn
	err := n.Do(func() error {
		var err error
		conn, err = (&net.Dialer{}).DialContext(ctx, network, addr)
		return err
	})
	return conn, err
}
