// Package nftables programs the node's nftables (over netlink, no nft
// process) for the one Service path no dataplane sees: a connection the
// node opens to a NodePort on one of its own addresses, which the kernel
// delivers over loopback. An output-hook DNAT sends it to the Service's
// cluster IP instead, which the dataplane serves like any connection from
// the node (kube-proxy does the same in its nat output chain).
package nftables

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"slices"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
)

// TableName is our table, in the ip and ip6 families.
const TableName = "nsx-ujo"

// Redirect is one NodePort on a node address and the cluster IP and port
// its connections from the node go to.
type Redirect struct {
	Node     netip.AddrPort
	Protocol dataplane.Protocol
	Target   netip.AddrPort
}

// Options configure NodePorts.
type Options struct {
	// NetNS is the network namespace path whose nftables to program
	// (default: this process's).
	NetNS string
}

// NodePorts keeps the node's redirect table equal to a list of Redirects.
// Sync and Cleanup may be called from any goroutine; they serialize.
type NodePorts struct {
	o  Options
	mu sync.Mutex
	// applied is what the last successful Sync installed (nil: unknown,
	// rewrite at the next Sync).
	applied map[redirectKey]netip.AddrPort
}

type redirectKey struct {
	node  netip.AddrPort
	proto dataplane.Protocol
}

// New returns a NodePorts; it touches nothing before the first Sync.
func New(o Options) *NodePorts { return &NodePorts{o: o} }

// dial opens a netlink connection to the nftables of the network namespace
// at path ("": this process's).
func dial(path string) (*nftables.Conn, func(), error) {
	if path == "" {
		c, err := nftables.New()
		return c, func() {}, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("nftables: netns %s: %w", path, err)
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())))
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return c, func() { f.Close() }, nil
}

var families = []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyIPv6}

// eachFamily runs fn for the ip and ip6 families on one connection to the
// nftables of the namespace at path.
func eachFamily(path string, fn func(*nftables.Conn, nftables.TableFamily) error) error {
	c, done, err := dial(path)
	if err != nil {
		return err
	}
	defer done()
	for _, fam := range families {
		if err := fn(c, fam); err != nil {
			return err
		}
	}
	return nil
}

// removeTables deletes name in the ip and ip6 families, present or not.
func removeTables(path, name string) error {
	return eachFamily(path, func(c *nftables.Conn, fam nftables.TableFamily) error {
		t := &nftables.Table{Name: name, Family: fam}
		c.AddTable(t) // so that the delete never fails on a missing table
		c.DelTable(t)
		if err := c.Flush(); err != nil {
			return fmt.Errorf("nftables: remove table %s: %w", name, err)
		}
		return nil
	})
}

// Sync makes the tables hold exactly rs. It is idempotent (nothing is
// written when rs equals what the last Sync installed) and atomic: each
// family's table is replaced in one netlink transaction, so a connection
// never sees half of it. Redirects whose node and target families differ
// are ignored.
func (n *NodePorts) Sync(rs []Redirect) error {
	want := map[redirectKey]netip.AddrPort{}
	for _, r := range rs {
		if r.Node.Addr().Is4() == r.Target.Addr().Is4() {
			want[redirectKey{r.Node, r.Protocol}] = r.Target
		}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.applied != nil && maps.Equal(n.applied, want) {
		return nil
	}
	n.applied = nil // unknown until both families are written
	if err := eachFamily(n.o.NetNS, func(c *nftables.Conn, fam nftables.TableFamily) error {
		return replaceTable(c, fam, want)
	}); err != nil {
		return err
	}
	n.applied = want
	return nil
}

// Cleanup removes both tables. Idempotent.
func (n *NodePorts) Cleanup() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.applied = nil
	return removeTables(n.o.NetNS, TableName)
}

var protos = []struct {
	p   dataplane.Protocol
	num byte
}{{dataplane.TCP, unix.IPPROTO_TCP}, {dataplane.UDP, unix.IPPROTO_UDP}, {dataplane.SCTP, unix.IPPROTO_SCTP}}

// replaceTable rebuilds one family's table in one transaction:
//
//	table ip nsx-ujo {
//	  set node-addrs { type ipv4_addr }
//	  map tcp-addr { type inet_service : ipv4_addr }   (and tcp-port, udp-*, sctp-*)
//	  chain nodeport-output { type nat hook output priority dstnat
//	    meta l4proto tcp ip daddr @node-addrs dnat to tcp dport map @tcp-addr : tcp dport map @tcp-port
//	    ... }
//	}
func replaceTable(c *nftables.Conn, fam nftables.TableFamily, want map[redirectKey]netip.AddrPort) error {
	v6 := fam == nftables.TableFamilyIPv6
	addrType, daddrOff, daddrLen, natFam := nftables.TypeIPAddr, uint32(16), uint32(4), uint32(unix.NFPROTO_IPV4)
	if v6 {
		addrType, daddrOff, daddrLen, natFam = nftables.TypeIP6Addr, 24, 16, unix.NFPROTO_IPV6
	}
	t := &nftables.Table{Name: TableName, Family: fam}
	c.AddTable(t)
	c.DelTable(t) // recreated empty in the same transaction
	c.AddTable(t)

	var nodes []netip.Addr
	for k := range want {
		if k.node.Addr().Is6() == v6 && !slices.Contains(nodes, k.node.Addr()) {
			nodes = append(nodes, k.node.Addr())
		}
	}
	slices.SortFunc(nodes, func(a, b netip.Addr) int { return a.Compare(b) })
	addrs := &nftables.Set{Table: t, Name: "node-addrs", KeyType: addrType}
	var elems []nftables.SetElement
	for _, a := range nodes {
		elems = append(elems, nftables.SetElement{Key: a.AsSlice()})
	}
	if err := c.AddSet(addrs, elems); err != nil {
		return fmt.Errorf("nftables: set node-addrs: %w", err)
	}
	ch := c.AddChain(&nftables.Chain{Name: "nodeport-output", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest})
	for _, pr := range protos {
		addrMap := &nftables.Set{Table: t, Name: string(bytes.ToLower([]byte(pr.p))) + "-addr", IsMap: true,
			KeyType: nftables.TypeInetService, DataType: addrType}
		portMap := &nftables.Set{Table: t, Name: string(bytes.ToLower([]byte(pr.p))) + "-port", IsMap: true,
			KeyType: nftables.TypeInetService, DataType: nftables.TypeInetService}
		var ae, pe []nftables.SetElement
		for k, target := range want {
			if k.proto != pr.p || k.node.Addr().Is6() != v6 {
				continue
			}
			key := be16(k.node.Port())
			ae = append(ae, nftables.SetElement{Key: key, Val: target.Addr().AsSlice()})
			pe = append(pe, nftables.SetElement{Key: key, Val: be16(target.Port())})
		}
		if err := c.AddSet(addrMap, ae); err != nil {
			return fmt.Errorf("nftables: map %s: %w", addrMap.Name, err)
		}
		if err := c.AddSet(portMap, pe); err != nil {
			return fmt.Errorf("nftables: map %s: %w", portMap.Name, err)
		}
		dport := &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{pr.num}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: daddrOff, Len: daddrLen},
			&expr.Lookup{SourceRegister: 1, SetName: addrs.Name, SetID: addrs.ID},
			dport,
			&expr.Lookup{SourceRegister: 1, DestRegister: 2, IsDestRegSet: true, SetName: addrMap.Name, SetID: addrMap.ID},
			dport,
			&expr.Lookup{SourceRegister: 1, DestRegister: 3, IsDestRegSet: true, SetName: portMap.Name, SetID: portMap.ID},
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: natFam, RegAddrMin: 2, RegProtoMin: 3, Specified: true},
		}})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: replace table %s (%s): %w", TableName, famName(v6), err)
	}
	return nil
}

func famName(v6 bool) string {
	if v6 {
		return "ip6"
	}
	return "ip"
}

func be16(p uint16) []byte { return binary.BigEndian.AppendUint16(nil, p) }

// FromModel lists the redirects of a model: each NodePort frontend to the
// cluster IP frontend of the same Service port, protocol and family.
func FromModel(m *dataplane.Model) []Redirect {
	type svcPort struct {
		name  dataplane.ServicePortName
		proto dataplane.Protocol
		v6    bool
	}
	cluster := map[svcPort]netip.AddrPort{}
	for k, f := range m.Frontends {
		if f.Kind == dataplane.ClusterIP {
			cluster[svcPort{f.Name, k.Protocol, k.IP.Is6()}] = netip.AddrPortFrom(k.IP, k.Port)
		}
	}
	var out []Redirect
	for k, f := range m.Frontends {
		if f.Kind != dataplane.NodePort {
			continue
		}
		if target, ok := cluster[svcPort{f.Name, k.Protocol, k.IP.Is6()}]; ok {
			out = append(out, Redirect{Node: netip.AddrPortFrom(k.IP, k.Port), Protocol: k.Protocol, Target: target})
		}
	}
	return out
}
