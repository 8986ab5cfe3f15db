// Package fabric is a TEST/DEV TOOL, never part of a deployment: it stands in
// for the NSX side of a cluster so the real node binaries can run on
// network-namespace "nodes".
//
// The hypervisor is one OVS bridge, br-fabric (userspace datapath, action
// NORMAL: MAC learning and VLANs), in a namespace of its own. Each node's
// uplink is a trunk port of it, so pods of one namespace talk at L2 across
// nodes in their VLAN. Each pod subnet and the node network have a gateway in
// a router namespace, reached through an access port (which strips and adds
// the VLAN tag); the router forwards between them, rewriting MACs — what the
// NSX logical router does for the nodes.
//
// The NCP stand-in is a controller on the API server that gives every
// scheduled pod its `ncp/network_config` annotation (one VLAN and /24 per
// Kubernetes namespace) and keeps one EndpointSlice per selector Service, as
// NCP and the endpoint-slice controller do in a real cluster.
//
// A dual-stack fabric (Options.DualStack, EnableDualStack) gives each pod
// network an IPv6 /64 as well, routed by the router like the IPv4 subnets,
// every pod an IPv6 address (the annotation's ipv6_address and
// ipv6_gateway_ip), and a Service one slice per family of its ipFamilies.
// The node network stays IPv4 only.
package fabric

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/nsx-ujo/nsx-ujo/pkg/ovsdb"
	"github.com/nsx-ujo/nsx-ujo/tests/harness"
)

const (
	// Bridge is the hypervisor bridge in Fabric.NS.
	Bridge = "br-fabric"
	// FirstVLAN is the VLAN of the first namespace; the k-th gets FirstVLAN-1+k.
	FirstVLAN = 101
	// firstPodHost is the host number of the first pod address of a subnet.
	firstPodHost = 10
	// firstNodeHost is the host number of node index 0 in the node network.
	firstNodeHost = 10
	// maxNamespaces keeps VLANs and 10.100.<k>.0/24 subnets valid.
	maxNamespaces = 254
	opTimeout     = 30 * time.Second
)

// Options shape a fabric.
type Options struct {
	// Client is the NCP controller's API client; nil runs the fabric
	// without a controller (pods are then addressed by the test).
	Client kubernetes.Interface
	// NodeNet is the node network, default 172.30.0.0/24; the router holds
	// its .1, the nodes' default gateway.
	NodeNet netip.Prefix
	// PodsOnly limits the NCP stand-in to the pods' network config: with
	// a real kube-controller-manager, EndpointSlices are its job, and
	// readiness comes from kubelets.
	PodsOnly bool
	// DualStack gives pods an IPv6 address too (EnableDualStack). Off by
	// default: IPv4 only is what the other tests (and the realnode
	// cluster's single-stack kube-controller-manager) were written for.
	DualStack bool
}

// Fabric is a running simulator. Its methods are safe for concurrent use.
type Fabric struct {
	NS     *harness.NetNS // holds br-fabric: the hypervisor side
	OVS    *harness.OVS
	Router *harness.NetNS // routes between the node network and every pod subnet

	nodeNet netip.Prefix
	db      *ovsdb.Client
	t       testing.TB

	mu        sync.Mutex
	dualStack bool
	networks  map[string]*network // by Kubernetes namespace
	hyperbus  map[string]*Channel // by node: nodes whose pods' configs go over HyperBus
}

// network is the pod network of one Kubernetes namespace.
type network struct {
	vlan    int
	subnet  netip.Prefix
	gateway netip.Addr
	wired   bool // gateway port and router interface exist
	// A dual-stack fabric's IPv6 subnet and gateway (invalid otherwise);
	// wired6: the gateway address is on the router's interface.
	subnet6  netip.Prefix
	gateway6 netip.Addr
	wired6   bool
}

// addr6 is the IPv6 address of the pod whose IPv4 address is ip: the same
// host number in subnet6, so the IPv4 pool allocates both. Invalid when
// the network has no IPv6 subnet.
func (n network) addr6(ip netip.Addr) netip.Addr {
	if !n.subnet6.IsValid() {
		return netip.Addr{}
	}
	host := ip.As4()[3] // the subnets are /24s
	b := n.subnet6.Addr().As16()
	b[15] = host
	return netip.AddrFrom16(b)
}

// Start brings the fabric up: bridge, router, the node network's gateway and,
// with o.Client, the NCP controller (its caches synced before Start returns).
// All of it stops in t's cleanup.
func Start(t testing.TB, o Options) *Fabric {
	t.Helper()
	if !o.NodeNet.IsValid() {
		o.NodeNet = netip.MustParsePrefix("172.30.0.0/24")
	}
	o.NodeNet = o.NodeNet.Masked()
	// Router before OVS, so the cleanups stop OVS before the router's
	// gateway interfaces vanish under it.
	fabNS := harness.NewNetNS(t)
	router := harness.NewNetNS(t)
	// send_redirects=0: an ICMP redirect would teach a pod or node to
	// bypass the router, which the NSX fabric never lets happen.
	// IPv6 forwarding and no DAD serve a dual-stack fabric: a router sends
	// no neighbour solicitation while its link-local address is tentative,
	// so the first packets it forwarded on a new gateway would wait.
	router.Run(t, "sysctl", "-qw", "net.ipv4.ip_forward=1",
		"net.ipv4.conf.all.send_redirects=0", "net.ipv4.conf.default.send_redirects=0",
		"net.ipv6.conf.all.forwarding=1", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
	sw := harness.StartOVS(t, harness.OVSOptions{NetNS: fabNS, Bridges: []string{Bridge}})
	db, err := ovsdb.Dial(sw.DBSock, ovsdb.Options{Timeout: opTimeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	f := &Fabric{NS: fabNS, OVS: sw, Router: router, nodeNet: o.NodeNet, db: db, t: t, networks: map[string]*network{}, dualStack: o.DualStack}

	// The node network is untagged on the nodes' trunks: VLAN 0, so its
	// gateway port is an access port without a tag. A plain untagged port
	// would be a trunk and hand the router frames of every pod VLAN.
	gw := netip.PrefixFrom(nthAddr(o.NodeNet, 1), o.NodeNet.Bits())
	if err := f.wireGateway("nodenet", "nodegw", 0, gw); err != nil {
		t.Fatal(err)
	}
	sw.Vsctl(t, "set", "Port", "nodenet", "vlan_mode=access")
	// VLAN 4094 is each node's private HyperBus channel (ServeHyperBus
	// adds its flows above this one): never switched between nodes.
	sw.Ofctl(t, Bridge, "add-flow", fmt.Sprintf("priority=90,dl_vlan=%d,actions=drop", HyperBusVLAN))

	if o.Client != nil {
		startController(t, f, o.Client, o.PodsOnly)
	}
	return f
}

// ConnectNode wires node into the fabric: veth nodeIf in node, its peer a
// trunk port of br-fabric. nodeIf gets NodeNet.<10+index> and a default route
// via NodeNet.1 (what nsx-ovs later moves onto br-int); that address is
// returned. The cleanup removes the port and the veth.
func (f *Fabric) ConnectNode(t testing.TB, node *harness.NetNS, nodeIf string, index int) netip.Prefix {
	t.Helper()
	port := fmt.Sprintf("node%d", index)
	harness.VethPair(t, node, nodeIf, f.NS, port)
	// The userspace datapath does not fill in checksums a veth left to
	// offload: TX checksum offload off on both ends, or TCP breaks.
	node.Run(t, "ethtool", "-K", nodeIf, "tx", "off")
	f.NS.Run(t, "ethtool", "-K", port, "tx", "off")
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if _, err := f.db.EnsureTrunkPort(ctx, Bridge, port, nil); err != nil {
		t.Fatal(err)
	}
	// Runs before VethPair's cleanup: a port whose device is gone would
	// stay broken if a later node reused the name.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		if err := f.db.DeletePort(ctx, Bridge, port); err != nil {
			t.Errorf("fabric: %v", err)
		}
	})
	addr := netip.PrefixFrom(nthAddr(f.nodeNet, firstNodeHost+index), f.nodeNet.Bits())
	node.Run(t, "ip", "addr", "add", addr.String(), "dev", nodeIf)
	node.Run(t, "ip", "route", "add", "default", "via", f.NodeGateway().String())
	return addr
}

// EnableDualStack makes a running fabric dual-stack (Options.DualStack), for
// a fabric another package started (cluster.Start): pod networks get their
// IPv6 subnet on their next use, pods their IPv6 address on their next
// sync. Call it before the pods that should be dual-stack are created: a
// pod the agent already wired would need a repeated ADD for its new
// address.
func (f *Fabric) EnableDualStack() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dualStack = true
}

// Subnet6 is the IPv6 pod network of a Kubernetes namespace on a
// dual-stack fabric (allocated as Subnet does); invalid values otherwise.
func (f *Fabric) Subnet6(namespace string) (subnet netip.Prefix, gateway netip.Addr) {
	n, err := f.network(namespace)
	if err != nil {
		f.t.Errorf("fabric: %v", err)
	}
	return n.subnet6, n.gateway6
}

// Subnet returns the pod network of a Kubernetes namespace, allocating it
// and wiring its gateway on first use. A wiring failure fails the test of
// Start; the next call retries it.
func (f *Fabric) Subnet(namespace string) (vlan int, subnet netip.Prefix, gateway netip.Addr) {
	n, err := f.network(namespace)
	if err != nil {
		f.t.Errorf("fabric: %v", err)
	}
	return n.vlan, n.subnet, n.gateway
}

// network allocates a namespace's pod network in order of first use and
// wires its gateway. The allocation stands even if wiring fails (the error
// is returned and the next call retries), so numbering never shifts.
func (f *Fabric) network(namespace string) (network, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := f.networks[namespace]
	if n == nil {
		k := len(f.networks) + 1
		if k > maxNamespaces {
			return network{}, fmt.Errorf("namespace %s: all %d pod networks are taken", namespace, maxNamespaces)
		}
		subnet := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 100, byte(k), 0}), 24)
		n = &network{vlan: FirstVLAN - 1 + k, subnet: subnet, gateway: nthAddr(subnet, 1)}
		f.networks[namespace] = n
	}
	if !n.wired {
		gw := netip.PrefixFrom(n.gateway, n.subnet.Bits())
		if err := f.wireGateway(fmt.Sprintf("vlan%d", n.vlan), fmt.Sprintf("gw%d", n.vlan), n.vlan, gw); err != nil {
			return *n, fmt.Errorf("gateway of namespace %s (VLAN %d): %w", namespace, n.vlan, err)
		}
		n.wired = true
	}
	if f.dualStack && !n.subnet6.IsValid() {
		// fd00:10:100:<k>::/64 beside 10.100.<k>.0/24.
		k := n.vlan - FirstVLAN + 1
		n.subnet6 = netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x10, 0x01, 0, byte(k >> 8), byte(k)}), 64)
		n.gateway6 = n.subnet6.Addr().Next()
	}
	if n.subnet6.IsValid() && !n.wired6 {
		// replace: a retry after a half-done wiring finds the address there.
		gw := netip.PrefixFrom(n.gateway6, n.subnet6.Bits()).String()
		if err := run(f.Router, "ip", "-6", "addr", "replace", gw, "dev", fmt.Sprintf("gw%d", n.vlan), "nodad"); err != nil {
			return *n, fmt.Errorf("IPv6 gateway of namespace %s (VLAN %d): %w", namespace, n.vlan, err)
		}
		n.wired6 = true
	}
	return *n, nil
}

// wireGateway links the router to br-fabric: routerIf with addr in the
// router, its veth peer port an access port of VLAN tag (0: none) on the
// bridge. It runs outside any test goroutine (the controller), so it
// returns errors instead of failing a test, and it can be retried: a
// half-made veth is deleted first. The veths go with the namespaces.
func (f *Fabric) wireGateway(port, routerIf string, tag int, addr netip.Prefix) error {
	_ = f.NS.Exec(context.Background(), "ip", "link", "del", port).Run()
	steps := []struct {
		ns   *harness.NetNS
		args []string
	}{
		{f.NS, []string{"ip", "link", "add", port, "type", "veth", "peer", "name", routerIf, "netns", f.Router.Name}},
		{f.NS, []string{"ethtool", "-K", port, "tx", "off"}},
		{f.Router, []string{"ethtool", "-K", routerIf, "tx", "off"}},
		{f.NS, []string{"ip", "link", "set", port, "up"}},
		{f.Router, []string{"ip", "addr", "add", addr.String(), "dev", routerIf}},
		{f.Router, []string{"ip", "link", "set", routerIf, "up"}},
	}
	for _, s := range steps {
		if err := run(s.ns, s.args...); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	_, err := f.db.EnsureAccessPort(ctx, Bridge, ovsdb.PortSpec{Name: port, Tag: tag})
	return err
}

// run runs a command in n; the error carries its output.
func run(n *harness.NetNS, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	out, err := n.Exec(ctx, args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("in netns %s: %s: %w: %s", n.Name, strings.Join(args, " "), err, out)
	}
	return nil
}

// nthAddr is the n-th address of an IPv4 prefix (n=1: the first host).
func nthAddr(p netip.Prefix, n int) netip.Addr {
	b := p.Masked().Addr().As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) + uint32(n)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// NodeGateway is the router's address on the node network (the nodes'
// default gateway).
func (f *Fabric) NodeGateway() netip.Addr { return nthAddr(f.nodeNet, 1) }
