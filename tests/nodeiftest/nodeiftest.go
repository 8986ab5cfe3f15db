// Package nodeiftest builds the node a node-if migration test works on: a
// "node" network namespace whose uplink node-if is a veth to a "peer"
// namespace that plays the NSX fabric, with the addresses and routes a real
// node has, and the checks the tests share (connectivity, snapshots).
package nodeiftest

import (
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nsx-ujo/nsx-ujo/tests/harness"
)

// Names and addresses of the topology.
const (
	Uplink = "node-if"
	Bridge = "br-int"
	MTU    = "1400" // not the default, so a lost MTU shows
)

// Targets the node must reach: a peer address in node-if's subnet, and
// addresses outside it that only the default routes lead to.
var (
	SubnetTargets  = []string{"10.50.0.3", "2001:db8:50::1"}
	DefaultTargets = []string{"192.0.2.1", "2001:db8:99::1"}
)

// Topology is a node and its peer.
type Topology struct {
	Node, Peer *harness.NetNS
}

// New builds the topology. node-if has a primary, a labelled secondary and
// a leased (dynamic) IPv4 address and a global IPv6 one; routes: the IPv4
// and IPv6 default routes, a route with a metric of each family, and a
// default route in table 100. The harness cleanups remove it all.
func New(t testing.TB) *Topology {
	t.Helper()
	tp := &Topology{Node: harness.NewNetNS(t), Peer: harness.NewNetNS(t)}
	harness.VethPair(t, tp.Node, Uplink, tp.Peer, "peer-if")
	n, p := tp.Node, tp.Peer
	n.Run(t, "ip", "link", "set", Uplink, "mtu", MTU)
	p.Run(t, "ip", "link", "set", "peer-if", "mtu", MTU)
	// The userspace datapath does not complete checksums a veth leaves
	// to "hardware": make the peer compute them (matters for TCP only).
	p.Run(t, "ethtool", "-K", "peer-if", "tx", "off")
	for _, a := range [][]string{
		{"10.50.0.1/24", "dev", "peer-if"}, // the gateway
		{"10.50.0.3/24", "dev", "peer-if"},
		{"192.0.2.1/32", "dev", "lo"},
		{"2001:db8:50::1/64", "dev", "peer-if", "nodad"},
		{"2001:db8:99::1/128", "dev", "lo"},
	} {
		p.Run(t, "ip", append([]string{"addr", "add"}, a...)...)
	}
	for _, a := range [][]string{
		{"10.50.0.2/24", "dev", Uplink},
		{"10.50.0.4/24", "dev", Uplink, "label", Uplink + ":sec"},
		{"10.50.0.9/24", "dev", Uplink, "valid_lft", "3600", "preferred_lft", "1800"},
		{"2001:db8:50::2/64", "dev", Uplink, "nodad"},
	} {
		n.Run(t, "ip", append([]string{"addr", "add"}, a...)...)
	}
	for _, r := range [][]string{
		{"-4", "route", "add", "default", "via", "10.50.0.1"},
		{"-4", "route", "add", "198.51.100.0/24", "via", "10.50.0.1", "metric", "50"},
		{"-4", "route", "add", "default", "via", "10.50.0.1", "table", "100"},
		{"-6", "route", "add", "default", "via", "2001:db8:50::1"},
		{"-6", "route", "add", "2001:db8:77::/64", "via", "2001:db8:50::1", "metric", "300"},
	} {
		n.Run(t, "ip", r...)
	}
	// The link-local address gets its local route only once DAD is done:
	// a snapshot taken before would lack it (seen on a busy machine).
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if strings.TrimSpace(n.Output(t, "ip", "-o", "addr", "show", "dev", Uplink, "tentative")) == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: addresses still tentative after 20 s (DAD)", Uplink)
		}
	}
	return tp
}

// CheckConnectivity pings every target from the node: over node-if's
// subnet and through the default routes, IPv4 and IPv6.
func (tp *Topology) CheckConnectivity(t testing.TB) {
	t.Helper()
	for _, a := range append(slices.Clone(SubnetTargets), DefaultTargets...) {
		tp.Node.Run(t, "ping", "-c", "1", "-W", "3", a)
	}
}

var (
	reLifetimes = regexp.MustCompile(`valid_lft \d+sec preferred_lft \d+sec`)
	reTentative = regexp.MustCompile(` tentative`)
	// iproute2 names the peer's namespace by scanning /var/run/netns; a
	// scan racing another test's namespace deletion prints the id instead.
	rePeerNetns = regexp.MustCompile(`link-netns(id)? \S+`)
)

// normalize removes what changes with time alone: the remaining lease of
// a dynamic address, IPv6 DAD in progress, how the peer netns is named.
// Lines are sorted: the dump order of equal-priority entries is not
// configuration.
func normalize(out string) string {
	out = reLifetimes.ReplaceAllString(out, "valid_lft N preferred_lft N")
	out = reTentative.ReplaceAllString(out, "")
	out = rePeerNetns.ReplaceAllString(out, "link-netns PEER")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// UplinkSnapshot is node-if as the kernel shows it, plus every route of
// the node: what Cleanup must restore exactly.
func (tp *Topology) UplinkSnapshot(t testing.TB) string {
	t.Helper()
	n := tp.Node
	parts := []string{
		n.Output(t, "ip", "-o", "link", "show", "dev", Uplink),
		n.Output(t, "ip", "-o", "addr", "show", "dev", Uplink),
		n.Output(t, "ip", "-o", "-4", "route", "show", "table", "all"),
		n.Output(t, "ip", "-o", "-6", "route", "show", "table", "all"),
		n.Output(t, "sysctl", "net.ipv4.conf."+Uplink+".rp_filter", "net.ipv4.conf."+Uplink+".arp_ignore",
			"net.ipv6.conf."+Uplink+".disable_ipv6"),
	}
	return normalize(strings.Join(parts, "\n"))
}

// CheckUplinkRestored fails t unless UplinkSnapshot becomes want within a
// few seconds: the kernel re-adds an interface's IPv6 link-local route
// on its own time after the interface comes back up.
func (tp *Topology) CheckUplinkRestored(t testing.TB, want string) {
	t.Helper()
	var got string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if got = tp.UplinkSnapshot(t); got == want || time.Now().After(deadline) {
			break
		}
	}
	if got != want {
		t.Fatalf("node-if not restored\n--- want\n%s\n--- got\n%s", want, got)
	}
}

// NodeSnapshot is every link, address and route of the node: what a re-run
// on a migrated node must leave alone.
func (tp *Topology) NodeSnapshot(t testing.TB) string {
	t.Helper()
	n := tp.Node
	parts := []string{
		n.Output(t, "ip", "-o", "link", "show"),
		n.Output(t, "ip", "-o", "addr", "show"),
		n.Output(t, "ip", "-o", "-4", "route", "show", "table", "all"),
		n.Output(t, "ip", "-o", "-6", "route", "show", "table", "all"),
	}
	return normalize(strings.Join(parts, "\n"))
}
