package podnet_test

import (
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nsx-ujo/nsx-ujo/pkg/agent/podnet"
	"github.com/nsx-ujo/nsx-ujo/tests/harness"
)

func cidr(t *testing.T, s string) *net.IPNet {
	t.Helper()
	ip, n, err := net.ParseCIDR(s)
	if err != nil {
		t.Fatal(err)
	}
	if ip4 := ip.To4(); ip4 != nil {
		ip = ip4
	}
	return &net.IPNet{IP: ip, Mask: n.Mask}
}

// Addresses of the node namespace's bridge: the pods' gateways, and one
// address per family outside the pods' subnets, reachable only through
// their default routes.
const (
	gw4, gw6         = "10.0.1.1", "fd00:10:0:1::1"
	remote4, remote6 = "192.0.2.1", "2001:db8::1"
)

// bridgedNode is a node namespace with a Linux bridge holding the gateways;
// pods' host ends join it.
func bridgedNode(t *testing.T) (*harness.NetNS, *podnet.Manager) {
	t.Helper()
	node := harness.NewNetNS(t)
	node.Run(t, "ip", "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
	node.Run(t, "ip", "addr", "add", gw4+"/24", "dev", "br0")
	node.Run(t, "ip", "addr", "add", remote4+"/32", "dev", "br0")
	node.Run(t, "ip", "addr", "add", gw6+"/64", "dev", "br0", "nodad")
	node.Run(t, "ip", "addr", "add", remote6+"/128", "dev", "br0", "nodad")
	node.Run(t, "ip", "link", "set", "br0", "up")
	return node, podnet.New(podnet.Options{HostNetNS: node.Path})
}

func dualStackPod(t *testing.T, name string, host byte) podnet.Pod {
	t.Helper()
	pns := harness.NewNetNS(t)
	return podnet.Pod{
		ContainerID: "cid-" + name, Netns: pns.Path, IfName: "eth0",
		IP: cidr(t, fmt.Sprintf("10.0.1.%d/24", host)), Gateway: net.ParseIP(gw4).To4(),
		IP6: cidr(t, fmt.Sprintf("fd00:10:0:1::%x/64", host)), Gateway6: net.ParseIP(gw6),
		MAC: net.HardwareAddr{0x02, 0x50, 0x56, 0, 0, host}, MTU: 1500,
	}
}

func setupOnBridge(t *testing.T, node *harness.NetNS, m *podnet.Manager, p podnet.Pod) {
	t.Helper()
	link, err := m.Setup(p)
	if err != nil {
		t.Fatalf("Setup %s: %v", p.ContainerID, err)
	}
	t.Cleanup(func() { _ = m.DeleteHostLink(link.HostIfName) })
	node.Run(t, "ip", "link", "set", link.HostIfName, "master", "br0")
}

// inPod runs fn in the pod's namespace with its interface.
func inPod(t *testing.T, p podnet.Pod, fn func(l netlink.Link) error) {
	t.Helper()
	n := &harness.NetNS{Path: p.Netns}
	if err := n.Do(func() error {
		l, err := netlink.LinkByName(p.IfName)
		if err != nil {
			return err
		}
		return fn(l)
	}); err != nil {
		t.Fatal(err)
	}
}

func isDefault(dst *net.IPNet) bool {
	if dst == nil {
		return true
	}
	ones, _ := dst.Mask.Size()
	return ones == 0
}

// podNS is the harness handle of a pod's namespace, for running commands.
func podNS(p podnet.Pod) *harness.NetNS {
	return &harness.NetNS{Name: p.Netns[strings.LastIndex(p.Netns, "/")+1:], Path: p.Netns}
}

// A dual-stack pod gets both addresses (the IPv6 one usable at once) and a
// default route per family, and reaches the other pod and the world
// beyond its gateways over both families.
func TestSetupDualStack(t *testing.T) {
	harness.RequireRoot(t)
	node, m := bridgedNode(t)
	a, b := dualStackPod(t, "a", 5), dualStackPod(t, "b", 6)
	setupOnBridge(t, node, m, a)
	setupOnBridge(t, node, m, b)

	inPod(t, a, func(l netlink.Link) error {
		addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			return err
		}
		have := map[string]int{}
		for _, ad := range addrs {
			have[ad.IPNet.String()] = ad.Flags
		}
		if _, ok := have[a.IP.String()]; !ok {
			t.Errorf("address %s missing: %v", a.IP, have)
		}
		if f, ok := have[a.IP6.String()]; !ok || f&unix.IFA_F_TENTATIVE != 0 || f&unix.IFA_F_NODAD == 0 {
			t.Errorf("address %s: present %v, flags %#x: want it without DAD and not tentative", a.IP6, ok, f)
		}
		for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
			routes, err := netlink.RouteListFiltered(fam, &netlink.Route{LinkIndex: l.Attrs().Index}, netlink.RT_FILTER_OIF)
			if err != nil {
				return err
			}
			want := map[int]net.IP{netlink.FAMILY_V4: a.Gateway, netlink.FAMILY_V6: a.Gateway6}[fam]
			found := false
			for _, r := range routes {
				if r.Gw.Equal(want) && isDefault(r.Dst) {
					found = true
				}
			}
			if !found {
				t.Errorf("family %d: no default route via %s in %v", fam, want, routes)
			}
		}
		return nil
	})
	if err := m.Check(a); err != nil {
		t.Fatalf("Check of an intact pod: %v", err)
	}

	ns := podNS(a)
	for _, dst := range []string{b.IP.IP.String(), b.IP6.IP.String(), remote4, remote6} {
		ns.Run(t, "ping", "-c", "1", "-W", "2", dst)
	}
	podNS(b).Run(t, "ping", "-c", "1", "-W", "2", a.IP6.IP.String())
}

// Check sees each family's address and default route; after a teardown
// Setup configures the same namespace again (the agent's repeated ADD of
// a broken attachment).
func TestCheckAndSetupAgainDualStack(t *testing.T) {
	harness.RequireRoot(t)
	node, m := bridgedNode(t)
	p := dualStackPod(t, "a", 5)
	setupOnBridge(t, node, m, p)

	other := p
	other.IP6 = cidr(t, "fd00:10:0:1::9/64")
	if err := m.Check(other); err == nil || !strings.Contains(err.Error(), "address fd00:10:0:1::9/64 missing") {
		t.Fatalf("Check with another IPv6 address: %v", err)
	}
	inPod(t, p, func(l netlink.Link) error {
		return netlink.RouteDel(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: p.Gateway6,
			Dst: &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}})
	})
	if err := m.Check(p); err == nil || !strings.Contains(err.Error(), "default route via "+gw6+" missing") {
		t.Fatalf("Check without the IPv6 default route: %v", err)
	}
	// The IPv4 side alone is still intact.
	v4 := p
	v4.IP6, v4.Gateway6 = nil, nil
	if err := m.Check(v4); err != nil {
		t.Fatalf("Check of the IPv4 side: %v", err)
	}

	if err := m.DeleteHostLink(podnet.HostIfName(p.ContainerID, p.IfName)); err != nil {
		t.Fatal(err)
	}
	setupOnBridge(t, node, m, p)
	if err := m.Check(p); err != nil {
		t.Fatalf("Check after setting up again: %v", err)
	}
	podNS(p).Run(t, "ping", "-c", "1", "-W", "2", remote6)
}

// A pod Setup cannot configure fully leaves nothing behind: refused up
// front, or rolled back when the kernel refuses the IPv6 default route.
func TestSetupDualStackRefusedLeavesNothing(t *testing.T) {
	harness.RequireRoot(t)
	_, m := bridgedNode(t)
	p := dualStackPod(t, "a", 5)
	host := podnet.HostIfName(p.ContainerID, p.IfName)

	bad := []struct {
		name string
		edit func(p *podnet.Pod)
		want string
	}{
		{"IP6 is IPv4", func(p *podnet.Pod) { p.IP6 = cidr(t, "10.0.2.5/24") }, "IP6"},
		{"IP is IPv6", func(p *podnet.Pod) { p.IP, p.Gateway = cidr(t, "fd00:1::5/64"), nil }, "IP6"},
		{"Gateway6 without IP6", func(p *podnet.Pod) { p.IP6 = nil }, "Gateway6"},
		{"Gateway6 IPv4", func(p *podnet.Pod) { p.Gateway6 = net.ParseIP("10.0.1.1") }, "Gateway6"},
		// Off-link: the kernel refuses the route after the address is set.
		{"Gateway6 off-link", func(p *podnet.Pod) { p.Gateway6 = net.ParseIP("fd00:99::1") }, "default route via fd00:99::1"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			q := p
			tc.edit(&q)
			if _, err := m.Setup(q); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Setup: %v, want an error naming %s", err, tc.want)
			}
			if ok, err := m.HostLinkExists(host); err != nil || ok {
				t.Fatalf("host end %s left behind (%v, %v)", host, ok, err)
			}
			n := podNS(p)
			if out := n.Output(t, "ip", "-o", "link", "show"); strings.Contains(out, p.IfName) {
				t.Fatalf("pod interface left behind:\n%s", out)
			}
		})
	}
}
