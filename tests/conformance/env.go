// Package conformance is the one list of Service behaviours every
// dataplane.ServiceBackend must show, checked with real traffic between
// network-namespace pods on a real OVS bridge. Each backend's test calls Run
// with a factory; docs/services.md maps the cases to kube-proxy's
// semantics and upstream e2e names.
package conformance

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
	"github.com/nsx-ujo/nsx-ujo/pkg/agent/podnet"
	"github.com/nsx-ujo/nsx-ujo/pkg/agent/ports"
	"github.com/nsx-ujo/nsx-ujo/pkg/ovsdb"
	"github.com/nsx-ujo/nsx-ujo/tests/harness"
)

// NodeName is the name of the test node; endpoints with it are local.
const NodeName = "node1"

// Env is one node with a stand-in for the NSX fabric behind its uplink:
// br-int (pods as VLAN access ports) is patched, as a trunk, to br-fabric,
// where one access port per VLAN leads to a router namespace holding each
// pod subnet's gateway. The router routes between subnets; nothing else
// does, as in NSX mode.
type Env struct {
	T      testing.TB
	Node   *harness.NetNS
	OVS    *harness.OVS
	Router *harness.NetNS
	DB     *ovsdb.Client

	podnet   *podnet.Manager
	ports    *ports.Manager
	n        int
	node     *Pod // NodeClient, once set up
	external *Pod
}

// Subnets of the test VLANs. 103 and 104 hold the two endpoint addresses
// whose flows collided in the hash-identified OVS driver.
// nodeVLAN is the node network: the node's own address lives on br-int's
// internal port, an access port of this VLAN.
var vlanSubnets = map[int]string{101: "10.0.1", 102: "10.0.2", 103: "10.1.23", 104: "10.2.7", nodeVLAN: "10.0.100"}

// subnet6 is the IPv6 subnet (/64) of a VLAN beside its IPv4 one: host h
// is subnet6(vlan)+"h" (h written as in IPv4, read as hex), the gateway
// ::1 on the router.
func subnet6(vlan int) string { return fmt.Sprintf("fd00:10:0:%d::", vlan) }

func host6(vlan, host int) netip.Addr {
	return netip.MustParseAddr(fmt.Sprintf("%s%d", subnet6(vlan), host))
}

const nodeVLAN = 100

// Uplink is br-int's port to the fabric (ncp.ini ovs_uplink_port).
const Uplink = "patch-fabric"

// NodeIP and NodeIP6 are the node's addresses (see NodeClient): its
// NodePorts.
var (
	NodeIP  = netip.MustParseAddr(vlanSubnets[nodeVLAN] + ".2")
	NodeIP6 = host6(nodeVLAN, 2)
)

// NewEnv builds the node and the fabric stand-in.
func NewEnv(t testing.TB) *Env {
	t.Helper()
	node := harness.NewNetNS(t)
	o := harness.StartOVS(t, harness.OVSOptions{NetNS: node, Bridges: []string{"br-int", "br-fabric"}})
	o.Vsctl(t, "add-port", "br-int", Uplink, "--", "set", "Interface", Uplink, "type=patch", "options:peer=patch-int",
		"--", "add-port", "br-fabric", "patch-int", "--", "set", "Interface", "patch-int", "type=patch", "options:peer="+Uplink)
	router := harness.NewNetNS(t)
	// No DAD on the router's interfaces, link-local addresses included: a
	// router sends no neighbour solicitation while its link-local address
	// is tentative, and a packet it forwards in the first second or two of
	// an interface waited for the next probe (a dial timed out).
	router.Run(t, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.send_redirects=0", "net.ipv4.conf.default.send_redirects=0",
		"net.ipv6.conf.all.forwarding=1", "net.ipv6.conf.default.accept_dad=0")
	for vlan, subnet := range vlanSubnets {
		fab, gw := fmt.Sprintf("fab%d", vlan), fmt.Sprintf("gw%d", vlan)
		harness.VethPair(t, node, fab, router, gw)
		node.Run(t, "ethtool", "-K", fab, "tx", "off")
		// The fabric's ports live in the node's namespace (one OVS per
		// namespace): isolate them from the node's stack as nsx-ovs
		// isolates the uplink on the userspace datapath, or the node would
		// answer ARP and take packets arriving there itself.
		node.Run(t, "sysctl", "-qw", "net.ipv4.conf."+fab+".rp_filter=1", "net.ipv4.conf."+fab+".arp_ignore=8",
			"net.ipv6.conf."+fab+".disable_ipv6=1")
		router.Run(t, "ethtool", "-K", gw, "tx", "off")
		router.Run(t, "ip", "addr", "add", subnet+".1/24", "dev", gw)
		router.Run(t, "ip", "addr", "add", subnet6(vlan)+"1/64", "dev", gw, "nodad")
		o.Vsctl(t, "add-port", "br-fabric", fab, fmt.Sprintf("tag=%d", vlan))
	}
	db, err := ovsdb.Dial(o.DBSock, ovsdb.Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return &Env{T: t, Node: node, OVS: o, Router: router, DB: db,
		podnet: podnet.New(podnet.Options{HostNetNS: node.Path}), ports: ports.New(db, "br-int")}
}

// Pod is a network-namespace pod wired like nsx-node-agent wires one:
// dual-stack, IP and IP6 (the external client and the node too).
type Pod struct {
	Name string
	NS   *harness.NetNS
	IP   netip.Addr
	IP6  netip.Addr
	VLAN int
}

// Family is the IP family a case runs in.
type Family int

// The families.
const (
	IPv4 Family = iota
	IPv6
)

func (f Family) String() string { return [...]string{"IPv4", "IPv6"}[f] }

// FamilyOf is a's family.
func FamilyOf(a netip.Addr) Family {
	if a.Is6() {
		return IPv6
	}
	return IPv4
}

// Addr is the pod's address in family f.
func (p *Pod) Addr(f Family) netip.Addr {
	if f == IPv6 {
		return p.IP6
	}
	return p.IP
}

// NodeAddr is the node's address in family f.
func NodeAddr(f Family) netip.Addr {
	if f == IPv6 {
		return NodeIP6
	}
	return NodeIP
}

// HairpinIP is the source a pod sees when it reaches itself through a
// Service of family f (both dataplanes' default).
func HairpinIP(f Family) netip.Addr {
	if f == IPv6 {
		return dataplane.DefaultHairpinIP6
	}
	return dataplane.DefaultHairpinIP
}

// addr6 gives the namespace's dev the IPv6 address a/64 without DAD (a
// tentative address would fail the first connections) and, when gw is
// valid, the default route through it.
func addr6(t testing.TB, ns *harness.NetNS, dev string, a, gw netip.Addr) {
	t.Helper()
	ns.Run(t, "ip", "-6", "addr", "add", a.String()+"/64", "dev", dev, "nodad")
	if gw.IsValid() {
		ns.Run(t, "ip", "-6", "route", "add", "default", "via", gw.String(), "dev", dev)
	}
}

// AddPod creates a pod on vlan with host number host in the VLAN's subnet.
func (e *Env) AddPod(name string, vlan, host int) *Pod {
	t := e.T
	t.Helper()
	e.n++
	p := &Pod{Name: name, NS: harness.NewNetNS(t), IP: netip.MustParseAddr(fmt.Sprintf("%s.%d", vlanSubnets[vlan], host)),
		IP6: host6(vlan, host), VLAN: vlan}
	cid := fmt.Sprintf("%s-%d", name, e.n)
	mac, _ := net.ParseMAC(fmt.Sprintf("02:00:00:%02x:%02x:%02x", vlan&0xff, host, e.n))
	link, err := e.podnet.Setup(podnet.Pod{ContainerID: cid, Netns: p.NS.Path, IfName: "eth0", MAC: mac, MTU: 1500,
		IP:      &net.IPNet{IP: p.IP.AsSlice(), Mask: net.CIDRMask(24, 32)},
		Gateway: net.ParseIP(vlanSubnets[vlan] + ".1"),
		IP6:     &net.IPNet{IP: p.IP6.AsSlice(), Mask: net.CIDRMask(64, 128)}, Gateway6: host6(vlan, 1).AsSlice(),
		TxChecksumOff: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.podnet.DeleteHostLink(link.HostIfName) })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := e.ports.Ensure(ctx, &ports.PodPort{Name: link.HostIfName, VLAN: vlan, ContainerID: cid, PodName: name,
		PodNamespace: "default", PodUID: cid, Netns: p.NS.Path, IfName: "eth0", MAC: mac.String(), IP: p.IP.String() + "/24",
		IP6: p.IP6.String() + "/64"}); err != nil {
		t.Fatal(err)
	}
	return p
}

// NodeClient gives the node itself an address on br-int's internal port
// (the node network, routed by the fabric like a pod subnet) and returns
// it as a client: what it dials leaves the node's own stack, as kubelet's
// or a hostNetwork pod's connections do.
func (e *Env) NodeClient() *Pod {
	t := e.T
	t.Helper()
	if e.node != nil {
		return e.node
	}
	ip := NodeIP
	e.OVS.Vsctl(t, "set", "Port", "br-int", fmt.Sprintf("tag=%d", nodeVLAN))
	e.Node.Run(t, "ip", "addr", "add", ip.String()+"/24", "dev", "br-int")
	e.Node.Run(t, "ip", "link", "set", "br-int", "up")
	e.Node.Run(t, "ip", "route", "add", "default", "via", vlanSubnets[nodeVLAN]+".1")
	addr6(t, e.Node, "br-int", NodeIP6, host6(nodeVLAN, 1))
	e.node = &Pod{Name: "node", NS: e.Node, IP: ip, IP6: NodeIP6, VLAN: nodeVLAN}
	return e.node
}

// ExternalSubnet and ExternalSubnet6 (a /64) are where ExternalClient
// lives: outside the cluster, behind the router.
const (
	ExternalSubnet  = "192.168.50"
	ExternalSubnet6 = "fd00:192:168:50::"
)

// ExternalClient gives the node its address (NodeClient) and returns a
// client outside the cluster: a namespace behind the fabric's router, which
// routes it to the node network and, with RouteToNode, to external IPs.
func (e *Env) ExternalClient() *Pod {
	t := e.T
	t.Helper()
	if e.external != nil {
		return e.external
	}
	e.NodeClient()
	ns := harness.NewNetNS(t)
	harness.VethPair(t, ns, "eth0", e.Router, "gwext")
	e.Router.Run(t, "ip", "addr", "add", ExternalSubnet+".1/24", "dev", "gwext")
	ip := netip.MustParseAddr(ExternalSubnet + ".2")
	ns.Run(t, "ip", "addr", "add", ip.String()+"/24", "dev", "eth0")
	ns.Run(t, "ip", "route", "add", "default", "via", ExternalSubnet+".1")
	ip6 := netip.MustParseAddr(ExternalSubnet6 + "2")
	addr6(t, e.Router, "gwext", netip.MustParseAddr(ExternalSubnet6+"1"), netip.Addr{})
	addr6(t, ns, "eth0", ip6, netip.MustParseAddr(ExternalSubnet6+"1"))
	e.external = &Pod{Name: "external", NS: ns, IP: ip, IP6: ip6}
	return e.external
}

// RouteToNode makes the router send a to the node, as a network
// administrator routes an external or load-balancer IP to a node.
func (e *Env) RouteToNode(a netip.Addr) {
	e.T.Helper()
	e.Router.Run(e.T, "ip", "route", "add", netip.PrefixFrom(a, a.BitLen()).String(), "via", NodeAddr(FamilyOf(a)).String())
}

// Serve runs TCP and UDP servers on port in the pod, on both families. The
// TCP server writes "<pod> <remote ip>\n" on accept, then echoes lines; the
// UDP server answers each datagram with "<pod> <remote ip>".
func (p *Pod) Serve(t testing.TB, port uint16) { p.ServeAs(t, port, p.Name) }

// ServeAs is Serve with the servers answering name instead of the pod's
// name (e.g. "<pod>:<port>", to tell endpoints on one pod apart).
func (p *Pod) ServeAs(t testing.TB, port uint16, name string) {
	t.Helper()
	p.serve(t, port, func(Family) string { return name })
}

// ServeByAddress is Serve with the servers answering the address and port
// they serve ("10.0.1.10:8080", "[fd00:10:0:101::10]:8080"): which
// endpoint, of which family, a client reached.
func (p *Pod) ServeByAddress(t testing.TB, port uint16) {
	t.Helper()
	p.serve(t, port, func(f Family) string { return netip.AddrPortFrom(p.Addr(f), port).String() })
}

// serve runs the servers of each family (one socket per family: an IPv4
// client is never seen as a mapped IPv6 address), answering name(family).
func (p *Pod) serve(t testing.TB, port uint16, name func(Family) string) {
	t.Helper()
	var lns []net.Listener
	var pcs []net.PacketConn
	var wg sync.WaitGroup
	t.Cleanup(func() {
		for _, ln := range lns {
			ln.Close()
		}
		for _, pc := range pcs {
			pc.Close()
		}
		wg.Wait()
	})
	for _, f := range []struct {
		fam            Family
		tcp, udp, addr string
	}{{IPv4, "tcp4", "udp4", fmt.Sprintf("0.0.0.0:%d", port)}, {IPv6, "tcp6", "udp6", fmt.Sprintf("[::]:%d", port)}} {
		var ln net.Listener
		var pc net.PacketConn
		err := p.NS.Do(func() error {
			var err error
			if ln, err = net.Listen(f.tcp, f.addr); err != nil {
				return err
			}
			lns = append(lns, ln)
			pc, err = net.ListenPacket(f.udp, f.addr)
			if err == nil {
				pcs = append(pcs, pc)
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		name := name(f.fam)
		wg.Add(2)
		go func() {
			defer wg.Done()
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer c.Close()
					remote := c.RemoteAddr().(*net.TCPAddr).IP
					fmt.Fprintf(c, "%s %s\n", name, remote)
					sc := bufio.NewScanner(c)
					for sc.Scan() {
						fmt.Fprintf(c, "%s\n", sc.Text())
					}
				}()
			}
		}()
		go func() {
			defer wg.Done()
			buf := make([]byte, 1500)
			for {
				_, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				_, _ = pc.WriteTo([]byte(fmt.Sprintf("%s %s", name, from.(*net.UDPAddr).IP)), from)
			}
		}()
	}
}

// Conn is an open TCP connection from a pod through which lines echo.
type Conn struct {
	c  net.Conn
	rd *bufio.Reader
	// Server and Source are the server pod's name and the client address it
	// saw, from the greeting.
	Server, Source string
}

// Dial opens a TCP connection from the pod, its socket created inside the
// pod's namespace, in the family of addr.
func (p *Pod) Dial(addr string, timeout time.Duration) (*Conn, error) {
	var c net.Conn
	err := p.NS.Do(func() error {
		var err error
		c, err = net.DialTimeout("tcp", addr, timeout)
		return err
	})
	if err != nil {
		return nil, err
	}
	return greet(c, addr, timeout)
}

// greet reads the server's greeting on a new connection.
func greet(c net.Conn, addr string, timeout time.Duration) (*Conn, error) {
	_ = c.SetDeadline(time.Now().Add(timeout))
	rd := bufio.NewReader(c)
	line, err := rd.ReadString('\n')
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("greeting from %s: %w", addr, err)
	}
	_ = c.SetDeadline(time.Time{})
	server, source, _ := strings.Cut(strings.TrimSpace(line), " ")
	return &Conn{c: c, rd: rd, Server: server, Source: source}, nil
}

// Echo sends a line and waits for it back.
func (c *Conn) Echo(msg string, timeout time.Duration) error {
	_ = c.c.SetDeadline(time.Now().Add(timeout))
	defer c.c.SetDeadline(time.Time{})
	if _, err := fmt.Fprintf(c.c, "%s\n", msg); err != nil {
		return err
	}
	got, err := c.rd.ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(got) != msg {
		return fmt.Errorf("echo %q, got %q", msg, got)
	}
	return nil
}

// Close closes the connection.
func (c *Conn) Close() { c.c.Close() }

// Get opens a connection, reads the greeting and closes it: the server's
// name and the client address it saw.
func (p *Pod) Get(addr string, timeout time.Duration) (server, source string, err error) {
	c, err := p.Dial(addr, timeout)
	if err != nil {
		return "", "", err
	}
	defer c.Close()
	return c.Server, c.Source, nil
}

// Ask reaches addr once over TCP (Get) or UDP and returns the server's
// name and the client address it saw.
func (p *Pod) Ask(addr string, udp bool, timeout time.Duration) (server, source string, err error) {
	if !udp {
		return p.Get(addr, timeout)
	}
	reply, err := p.UDP(addr, timeout)
	server, source, _ = strings.Cut(reply, " ")
	return server, source, err
}

// UDPConn is a connected UDP socket of a pod: one 5-tuple for its life.
type UDPConn struct{ c net.Conn }

// UDPConn opens a UDP socket in the pod connected to addr.
func (p *Pod) UDPConn(addr string) (*UDPConn, error) {
	var c net.Conn
	err := p.NS.Do(func() error {
		var err error
		c, err = net.Dial("udp", addr)
		return err
	})
	if err != nil {
		return nil, err
	}
	return &UDPConn{c: c}, nil
}

// Ask sends a datagram and returns the answer.
func (u *UDPConn) Ask(timeout time.Duration) (string, error) {
	_ = u.c.SetDeadline(time.Now().Add(timeout))
	if _, err := u.c.Write([]byte("ping")); err != nil {
		return "", err
	}
	buf := make([]byte, 1500)
	n, err := u.c.Read(buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// Close closes the socket.
func (u *UDPConn) Close() { u.c.Close() }

// UDP sends one datagram from the pod and waits for the answer.
func (p *Pod) UDP(addr string, timeout time.Duration) (string, error) {
	c, err := p.UDPConn(addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	return c.Ask(timeout)
}
