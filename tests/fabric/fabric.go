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
}

// Fabric is a running simulator. Its methods are safe for concurrent use.
type Fabric struct {
	NS     *harness.NetNS // holds br-fabric: the hypervisor side
	OVS    *harness.OVS
	Router *harness.NetNS // routes between the node network and every pod subnet

	nodeNet netip.Prefix
	db      *ovsdb.Client
	t       testing.TB

	mu       sync.Mutex
	networks map[string]*network // by Kubernetes namespace
	hyperbus map[string]*Channel // by node: nodes whose pods' configs go over HyperBus
}

// network is the pod network of one Kubernetes namespace.
type network struct {
	vlan    int
	subnet  netip.Prefix
	gateway netip.Addr
	wired   bool // gateway port and router interface exist
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
	router.Run(t, "sysctl", "-qw", "net.ipv4.ip_forward=1",
		"net.ipv4.conf.all.send_redirects=0", "net.ipv4.conf.default.send_redirects=0")
	sw := harness.StartOVS(t, harness.OVSOptions{NetNS: fabNS, Bridges: []string{Bridge}})
	db, err := ovsdb.Dial(sw.DBSock, ovsdb.Options{Timeout: opTimeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	f := &Fabric{NS: fabNS, OVS: sw, Router: router, nodeNet: o.NodeNet, db: db, t: t, networks: map[string]*network{}}

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
