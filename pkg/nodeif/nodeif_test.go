package nodeif_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"github.com/nsx-ujo/nsx-ujo/pkg/nodeif"
	"github.com/nsx-ujo/nsx-ujo/pkg/ovsdb"
	"github.com/nsx-ujo/nsx-ujo/tests/harness"
	"github.com/nsx-ujo/nsx-ujo/tests/nodeiftest"
)

// node is a test node: the topology, its own OVS (userspace datapath) in
// the node namespace, and a state dir for the journal.
type node struct {
	*nodeiftest.Topology
	ovs      *harness.OVS
	db       *ovsdb.Client
	stateDir string
}

func newNode(t *testing.T) *node {
	tp := nodeiftest.New(t)
	o := harness.StartOVS(t, harness.OVSOptions{NetNS: tp.Node})
	db, err := ovsdb.Dial(o.DBSock, ovsdb.Options{Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return &node{Topology: tp, ovs: o, db: db, stateDir: t.TempDir()}
}

func (n *node) migrator(t *testing.T, stopAfter string) *nodeif.Migrator {
	return nodeif.New(nodeif.Options{Bridge: nodeiftest.Bridge, Uplink: nodeiftest.Uplink, DatapathType: "netdev",
		StateDir: n.stateDir, OVS: n.db, Log: zaptest.NewLogger(t), StopAfter: stopAfter})
}

// in runs fn in the node's namespace: netlink and sysctls act on the
// namespace of the calling thread.
func (n *node) in(fn func() error) error { return n.Node.Do(fn) }

func (n *node) migrate(t *testing.T, stopAfter string) error {
	return n.in(func() error { return n.migrator(t, stopAfter).Migrate(context.Background()) })
}

func (n *node) cleanup(t *testing.T, stopAfter string) error {
	return n.in(func() error { return n.migrator(t, stopAfter).Cleanup(context.Background()) })
}

func (n *node) status(t *testing.T) *nodeif.Status {
	var s *nodeif.Status
	n.in(func() error { s = n.migrator(t, "").Status(context.Background()); return nil })
	return s
}

func (n *node) mustMigrate(t *testing.T) {
	t.Helper()
	if err := n.migrate(t, ""); err != nil {
		t.Fatalf("migrate: %v", err)
	}
}

func (n *node) mustCleanup(t *testing.T) {
	t.Helper()
	if err := n.cleanup(t, ""); err != nil {
		t.Fatalf("cleanup: %v", err)
	}
}

func (n *node) checkRestored(t *testing.T, want string) {
	t.Helper()
	n.CheckUplinkRestored(t, want)
	if j, err := nodeif.LoadJournal(n.stateDir); err != nil || j != nil {
		t.Fatalf("journal after cleanup: %+v, %v", j, err)
	}
	if _, err := n.db.GetBridge(context.Background(), nodeiftest.Bridge); !errors.Is(err, ovsdb.ErrNotFound) {
		t.Fatalf("bridge after cleanup: %v, want not found", err)
	}
}

func (n *node) checkMigrated(t *testing.T) {
	t.Helper()
	if s := n.status(t); !s.OK() {
		t.Fatalf("status after migration: %+v", s)
	}
	n.CheckConnectivity(t)
}

func contains(t *testing.T, what, out string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("%s: no %q in\n%s", what, w, out)
		}
	}
}

func TestMigrateAndCleanup(t *testing.T) {
	n := newNode(t)
	before := n.UplinkSnapshot(t)
	n.CheckConnectivity(t)

	n.mustMigrate(t)
	n.checkMigrated(t)

	up := n.Node.Run(t, "ip", "-o", "addr", "show", "dev", nodeiftest.Uplink)
	if strings.Contains(up, " inet ") || strings.Contains(up, "scope global") {
		t.Errorf("addresses left on node-if:\n%s", up)
	}
	contains(t, "bridge addresses", n.Node.Run(t, "ip", "-o", "addr", "show", "dev", nodeiftest.Bridge),
		"inet 10.50.0.2/24 scope global br-int", "inet 10.50.0.4/24 scope global secondary br-int:sec",
		"inet 10.50.0.9/24 scope global secondary dynamic br-int", "inet6 2001:db8:50::2/64 scope global")
	contains(t, "IPv4 routes", n.Node.Run(t, "ip", "-4", "route", "show", "table", "all"),
		"default via 10.50.0.1 dev br-int table 100", "default via 10.50.0.1 dev br-int \n",
		"198.51.100.0/24 via 10.50.0.1 dev br-int metric 50")
	contains(t, "IPv6 routes", n.Node.Run(t, "ip", "-6", "route", "show"),
		"default via 2001:db8:50::1 dev br-int metric 1024", "2001:db8:77::/64 via 2001:db8:50::1 dev br-int metric 300")
	upLink := n.Node.Run(t, "ip", "-o", "link", "show", "dev", nodeiftest.Uplink)
	brLink := n.Node.Run(t, "ip", "-o", "link", "show", "dev", nodeiftest.Bridge)
	mac := strings.Fields(upLink[strings.Index(upLink, "link/ether"):])[1]
	contains(t, "bridge link", brLink, "link/ether "+mac, "mtu "+nodeiftest.MTU)

	j, err := nodeif.LoadJournal(n.stateDir)
	if err != nil || j == nil {
		t.Fatalf("journal: %v, %v", j, err)
	}
	if !j.DHCP || j.Step != nodeif.MigrateSteps()[len(nodeif.MigrateSteps())-1] || len(j.Addresses) != 4 || len(j.Routes) != 5 {
		t.Errorf("journal: dhcp %v, step %q, %d addresses, %d routes; want dhcp, complete, 4, 5", j.DHCP, j.Step, len(j.Addresses), len(j.Routes))
	}

	t.Run("rerun changes nothing", func(t *testing.T) {
		node, sw := n.NodeSnapshot(t), n.ovs.Vsctl(t, "show")
		n.mustMigrate(t)
		if got := n.NodeSnapshot(t); got != node {
			t.Errorf("node changed by a re-run\n--- before\n%s\n--- after\n%s", node, got)
		}
		if got := n.ovs.Vsctl(t, "show"); got != sw {
			t.Errorf("OVS changed by a re-run\n--- before\n%s\n--- after\n%s", sw, got)
		}
	})

	t.Run("drift is reported and repaired", func(t *testing.T) {
		n.Node.Run(t, "ip", "route", "del", "default", "table", "100")
		n.Node.Run(t, "ip", "addr", "del", "10.50.0.4/24", "dev", nodeiftest.Bridge)
		s := n.status(t)
		contains(t, "status problems", strings.Join(s.Problems, "\n"), "address 10.50.0.4/24 is not on br-int", "route 0.0.0.0/0 via 10.50.0.1 table 100")
		n.mustMigrate(t)
		n.checkMigrated(t)
	})

	n.mustCleanup(t)
	n.checkRestored(t, before)
	n.CheckConnectivity(t)
	n.mustCleanup(t) // no journal: nothing to do
	n.checkRestored(t, before)
}

// TestCrashAfterEachStep stops Migrate (and then Cleanup) after each step
// in turn, as a crash would, and checks that running it again finishes the
// job: after a migration the node reaches the peer over the subnet and
// through the default routes, after a cleanup node-if is as it was.
func TestCrashAfterEachStep(t *testing.T) {
	n := newNode(t)
	before := n.UplinkSnapshot(t)
	for _, step := range nodeif.MigrateSteps() {
		t.Run("migrate/"+step, func(t *testing.T) {
			if err := n.migrate(t, step); !errors.Is(err, nodeif.ErrStopped) {
				t.Fatalf("migrate stopped after %s: %v, want ErrStopped", step, err)
			}
			n.mustMigrate(t)
			n.checkMigrated(t)
			n.mustCleanup(t)
			n.checkRestored(t, before)
		})
		t.Run("migrate/"+step+"/then-cleanup", func(t *testing.T) {
			if err := n.migrate(t, step); !errors.Is(err, nodeif.ErrStopped) {
				t.Fatalf("migrate stopped after %s: %v, want ErrStopped", step, err)
			}
			n.mustCleanup(t)
			n.checkRestored(t, before)
		})
	}
	steps := nodeif.CleanupSteps()
	for _, step := range steps[:len(steps)-1] { // the last one ends the cleanup anyway
		t.Run("cleanup/"+step, func(t *testing.T) {
			n.mustMigrate(t)
			if err := n.cleanup(t, step); !errors.Is(err, nodeif.ErrStopped) {
				t.Fatalf("cleanup stopped after %s: %v, want ErrStopped", step, err)
			}
			n.mustCleanup(t)
			n.checkRestored(t, before)
			n.CheckConnectivity(t)
		})
	}
}

func TestUplinkMissing(t *testing.T) {
	n := newNode(t)
	err := n.in(func() error {
		return nodeif.New(nodeif.Options{Bridge: nodeiftest.Bridge, Uplink: "eth-nope", DatapathType: "netdev",
			StateDir: n.stateDir, OVS: n.db, Log: zaptest.NewLogger(t)}).Migrate(context.Background())
	})
	if err == nil || !strings.Contains(err.Error(), "ovs_uplink_port") || !strings.Contains(err.Error(), `"eth-nope"`) {
		t.Fatalf("migrate with a missing uplink: %v; want an error naming ovs_uplink_port and the interface", err)
	}
	if j, _ := nodeif.LoadJournal(n.stateDir); j != nil {
		t.Errorf("journal written for a missing uplink: %+v", j)
	}
}

// A bridge that existed before nsx-ujo is given back, without the ports
// nsx-node-agent made on it (a pod's, the HyperBus port) and with every
// other port kept.
func TestCleanupGivesBackAnExistingBridge(t *testing.T) {
	n := newNode(t)
	n.ovs.Vsctl(t, "add-br", nodeiftest.Bridge, "--", "set", "Bridge", nodeiftest.Bridge, "datapath_type=netdev")
	n.Node.Run(t, "ip", "link", "set", nodeiftest.Bridge, "up")
	var before string
	bridgeLocal := regexp.MustCompile(`local fe80::\S+ dev ` + nodeiftest.Bridge + ` `)
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		// The bridge's IPv6 link-local routes come on the kernel's time:
		// the subnet's at once, the address's local one after DAD (a
		// snapshot between the two failed CI on a busy machine).
		if before = n.UplinkSnapshot(t); strings.Contains(before, "fe80::/64 dev "+nodeiftest.Bridge) && bridgeLocal.MatchString(before) {
			break
		}
	}
	n.mustMigrate(t)
	n.checkMigrated(t)
	for _, p := range []struct{ name, owner string }{
		{"nsx-rpc", "nsx-node-agent/hyperbus"}, {"nsxpod0", "nsx-node-agent"}, {"keep0", ""}, {"keep1", "someone-else"},
	} {
		args := []string{"add-port", nodeiftest.Bridge, p.name, "--", "set", "Interface", p.name, "type=internal"}
		if p.owner != "" {
			args = append(args, "--", "set", "Port", p.name, "external_ids:nsx-ujo-owner="+p.owner)
		}
		n.ovs.Vsctl(t, args...)
	}
	n.mustCleanup(t)
	n.CheckUplinkRestored(t, before)
	if got := strings.Fields(n.ovs.Vsctl(t, "list-ports", nodeiftest.Bridge)); strings.Join(got, " ") != "keep0 keep1" {
		t.Errorf("ports on the bridge given back: %v, want [keep0 keep1]", got)
	}
}

// fullDisk puts a small tmpfs at dir (emptied first) that fill() fills and
// free() empties: state_dir on a full disk.
type fullDisk struct {
	t      *testing.T
	filler string
}

func newFullDisk(t *testing.T, dir string) *fullDisk {
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=256k"); err != nil {
		t.Fatalf("tmpfs at %s: %v", dir, err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	return &fullDisk{t: t, filler: filepath.Join(dir, "filler")}
}

func (d *fullDisk) fill() {
	err := os.WriteFile(d.filler, make([]byte, 1<<20), 0o644)
	if !errors.Is(err, unix.ENOSPC) {
		d.t.Fatalf("filling the disk: %v, want ENOSPC", err)
	}
}

func (d *fullDisk) free() {
	if err := os.Remove(d.filler); err != nil {
		d.t.Fatal(err)
	}
}

// A full disk under state_dir: migrate and cleanup stop at their first
// journal write, before touching the node, with the cause named; once
// there is room again a rerun finishes. Migrate interrupted by the disk
// filling half way (after uplink-port) is finished by the rerun too.
func TestFullStateDisk(t *testing.T) {
	n := newNode(t)
	before := n.UplinkSnapshot(t)
	disk := newFullDisk(t, n.stateDir)
	noSpace := func(what string, err error) {
		t.Helper()
		if err == nil || !strings.Contains(err.Error(), "no space left on device") || !strings.Contains(err.Error(), nodeif.JournalFile) {
			t.Fatalf("%s on a full disk: %v; want an error naming the journal and the lack of space", what, err)
		}
	}

	disk.fill()
	noSpace("migrate", n.migrate(t, ""))
	n.CheckUplinkRestored(t, before)
	if _, err := n.db.GetBridge(context.Background(), nodeiftest.Bridge); !errors.Is(err, ovsdb.ErrNotFound) {
		t.Fatalf("bridge after a migrate that could not journal: %v, want none", err)
	}
	disk.free()

	if err := n.migrate(t, "uplink-port"); !errors.Is(err, nodeif.ErrStopped) {
		t.Fatalf("migrate up to uplink-port: %v", err)
	}
	disk.fill()
	noSpace("migrate half way", n.migrate(t, ""))
	disk.free()
	n.mustMigrate(t)
	n.checkMigrated(t)

	// A migrated node migrates again (nsx-ovs restarting) with the disk
	// full: nothing to journal, so nothing stops it.
	disk.fill()
	if err := n.migrate(t, ""); err != nil {
		t.Fatalf("migrate of a migrated node on a full disk: %v", err)
	}
	n.checkMigrated(t)
	noSpace("cleanup", n.cleanup(t, ""))
	n.checkMigrated(t)
	disk.free()
	n.mustCleanup(t)
	n.checkRestored(t, before)
}
